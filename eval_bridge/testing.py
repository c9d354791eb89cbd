"""Stand-in Inception weights for offline tests and benchmarks (random, but informative).

The real weights are a download away; machines without internet still need to
exercise the whole path. Random weights give the same speed and shapes, and with
the right initialisation features that still tell images apart.
"""
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
