"""Stand-in Inception weights for offline tests, smoke tests and benchmarks (random, but informative).

  python -m eval_bridge.testing /tmp/standin_inception.pth [--seed=N]

The real weights are a download away; machines without internet still need to
exercise the whole path. Random weights give the same speed and shapes, and with
the right initialisation features that still tell images apart. Their scores
compare with nothing published: each evaluation records the weights' SHA-256 and
`standin_inception: true`, and every place that shows a score marks it stand-in.
"""
import os
import sys
from unittest import mock

import torch
from torch_fidelity import feature_extractor_inceptionv3

from eval_bridge import fidelity


def random_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
  """Returns a state dict torch-fidelity's Inception loads, with seeded random weights.

  Convolutions get Kaiming-normal weights (fan-in, ReLU gain); BatchNorm keeps
  its identity running statistics. torch's default conv init (Kaiming-uniform
  with a=sqrt(5)) shrinks activations ~3x per layer: after Inception's ~20 layers
  the features are ~1e-8 and identical for every image (FID ~1e-13 between any
  two sets). With the ReLU gain they stay at std ~0.2 through every block.
  """
  cls = feature_extractor_inceptionv3.FeatureExtractorInceptionV3
  # The constructor insists on loading weights; build it empty instead.
  with mock.patch.object(cls, 'load_state_dict'), mock.patch.object(
      feature_extractor_inceptionv3, 'load_state_dict_from_url'):
    model = cls(fidelity.EXTRACTOR_NAME, [fidelity.FEATURE_LAYER])
  generator = torch.Generator().manual_seed(seed)
  for module in model.modules():
    if isinstance(module, torch.nn.Conv2d):
      torch.nn.init.kaiming_normal_(module.weight, nonlinearity='relu', generator=generator)
    elif isinstance(module, torch.nn.Linear):
      torch.nn.init.normal_(module.weight, std=module.in_features ** -0.5, generator=generator)
      torch.nn.init.zeros_(module.bias)
  return model.state_dict()


def write_random_inception_weights(path: str, seed: int = 0) -> str:
  """Returns `path`, now holding random Inception weights (see `random_inception_state_dict`)."""
  torch.save(random_inception_state_dict(seed), path)
  return path


USAGE = f'usage: {fidelity.STANDIN_COMMAND} PATH [--seed=N]  (writes stand-in Inception weights to PATH)'


def parse_args(argv: list[str]) -> tuple[str, int]:
  """Returns (PATH, seed) of `PATH [--seed=N]`; a one-line ValueError names a bad argument."""
  seeds = [a.removeprefix('--seed=') for a in argv if a.startswith('--seed=')]
  paths = [a for a in argv if not a.startswith('--seed=')]
  if len(paths) != 1 or paths[0].startswith('-') or len(seeds) > 1:
    raise ValueError(f'expected one PATH and at most one --seed=N, got {" ".join(argv) or "nothing"}')
  if seeds and not seeds[0].isdigit():
    raise ValueError(f'--seed={seeds[0]} is not a non-negative integer')
  if os.path.isdir(paths[0]) or not os.path.isdir(os.path.dirname(os.path.abspath(paths[0]))):
    raise ValueError(f'{paths[0]} is not a file path in an existing folder')
  return paths[0], int(seeds[0]) if seeds else 0


def main(argv: list[str]) -> int:
  """Returns the exit status of writing stand-in weights to argv's PATH (2, with one line, for a bad argument)."""
  if any(a in ('-h', '--help') for a in argv):
    print(USAGE)
    return 0
  try:
    path, seed = parse_args(argv)
  except ValueError as e:
    print(f'{fidelity.STANDIN_COMMAND}: error: {e}; {USAGE}', file=sys.stderr)
    return 2
  write_random_inception_weights(path, seed)
  print(f'Wrote stand-in Inception weights (random, seed {seed}) to {path}: for smoke tests only, their scores are '
        f'marked stand-in. Use them with --config.eval.inception_weights={path}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
