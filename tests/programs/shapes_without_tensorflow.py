"""Draws a batch of the shapes dataset in an interpreter of its own; fails if that imported TensorFlow.

    python tests/programs/shapes_without_tensorflow.py

tests/test_data_loader.py runs it: the test process itself has TensorFlow loaded by other tests.
"""
import sys

import ddpm_jax.data as data
from ddpm_jax.config import convert, schema


def main() -> None:
  config = convert.from_mapping({'dataset': 'shapes'}, schema.DataConfig, 'data.')
  next(data.make_train_loader(config, global_batch_size=2, seed=0))
  loaded = sorted(m for m in sys.modules if m.startswith('tensorflow'))
  assert not loaded, f'drawing shapes imported {loaded[:5]}'


if __name__ == '__main__':
  main()
