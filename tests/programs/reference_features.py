"""Computes the tiny config's FID reference (or finds it in the cache), in an interpreter of its own.

    python tests/programs/reference_features.py '{"section.key": value, ...}'

The JSON holds overrides of tests/configs/tiny.py, as runs.tiny_config takes them. tests/test_evaluation.py runs
it to see a second process find the first one's cached reference features.
"""
import json
import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)


def main(overrides: dict) -> None:
  sys.path[:0] = [ROOT, TESTS]  # configs/ (which tests/configs/tiny.py builds on) and tests/runs.py
  from runs import tiny_config  # pylint: disable=g-import-not-at-top
  from ddpm_jax.evaluation import scores  # pylint: disable=g-import-not-at-top
  from ddpm_jax.run import build  # pylint: disable=g-import-not-at-top
  config = tiny_config({**overrides, 'eval.metrics': ('fid',)})
  scores.Evaluation(config, build.build(config)).reference()


if __name__ == '__main__':
  main(json.loads(sys.argv[1]))
