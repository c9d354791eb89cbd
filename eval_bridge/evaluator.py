"""The evaluator interface: uint8 samples in (streamed), named scalars out.

One `Evaluator` per evaluation round: `update` it with each batch of generated
images as they are sampled, then read `result()`. Only Inception features (2048
floats per image) and a bounded reservoir of images for MS-SSIM are kept.
"""
import numpy as np
import torch

from eval_bridge import fidelity
from eval_bridge import ms_ssim
from eval_bridge import reference as reference_lib

METRIC_KEYS = ('fid', 'kid_mean', 'kid_std', 'ms_ssim', 'num_samples', 'num_reference',
               'kid_subset_size')


def score(features: np.ndarray, reference: reference_lib.Reference, images: torch.Tensor, *,
          ms_ssim_pairs: int = 500, kid_subsets: int = 100, seed: int = 0,
          device='cpu') -> dict[str, float]:
  """Returns FID, KID and MS-SSIM of generated samples against a reference, keyed by METRIC_KEYS.

  Args:
    features: Inception features of all generated samples, [n, 2048].
    reference: the reference set (`reference.make_reference`).
    images: generated uint8 NCHW images for MS-SSIM (all, or a random subset).
    ms_ssim_pairs: random pairs averaged; with `reference.images`, as many
      generated-vs-reference pairs give the extra key 'ms_ssim_vs_reference'.
    kid_subsets, seed: KID's subsets and the seed of every random draw.
    device: where MS-SSIM runs.
  """
  metrics = {'fid': fidelity.fid_from_statistics(fidelity.fid_statistics(features),
                                                 reference.statistics)}
  metrics.update(fidelity.kid(features, reference.features, subsets=kid_subsets, seed=seed))
  metrics['ms_ssim'] = ms_ssim.pairwise_ms_ssim(images, ms_ssim_pairs, seed, device)
  if reference.images is not None:
    metrics['ms_ssim_vs_reference'] = ms_ssim.cross_ms_ssim(
        images, reference.images, ms_ssim_pairs, seed, device)
  metrics['num_samples'] = len(features)
  metrics['num_reference'] = len(reference.features)
  return metrics


class Evaluator:
  """Scores streamed generated samples: `update(uint8 NCHW batch)`, then `result()`.

  MS-SSIM is computed on a reservoir of the first `ms_ssim_images` samples, which
  keeps memory bounded; samples are i.i.d., so the first ones are a random subset.
  """

  def __init__(self, extractor, reference: reference_lib.Reference, *, ms_ssim_pairs: int = 500,
               ms_ssim_images: int = 1000, kid_subsets: int = 100, seed: int = 0,
               batch_size: int = 64, total: int | None = None, progress: bool = True):
    self._reference = reference
    self._features = fidelity.FeatureAccumulator(extractor, batch_size=batch_size, total=total,
                                                 progress=progress, desc='Sample features')
    self._device = next(extractor.parameters()).device
    self._options = dict(ms_ssim_pairs=ms_ssim_pairs, kid_subsets=kid_subsets, seed=seed)
    self._reservoir: list[torch.Tensor] = []
    self._reservoir_room = ms_ssim_images

  def update(self, images: torch.Tensor) -> None:
    """Returns None; adds a batch of generated images (uint8 N×C×H×W, any device)."""
    self._features.update(images)
    kept = images[:self._reservoir_room].cpu()
    self._reservoir.append(kept)
    self._reservoir_room -= len(kept)

  def result(self) -> dict[str, float]:
    """Returns the metrics of every sample seen so far (keys: METRIC_KEYS, see `score`)."""
    if not self._reservoir:
      raise ValueError('Evaluator.result() before any update(): there are no samples to score')
    return score(self._features.features(), self._reference, torch.cat(self._reservoir),
                 device=self._device, **self._options)
