"""MS-SSIM between random pairs of images (torchmetrics), with settings that fit small images.

Used as a diversity score: the mean MS-SSIM over random pairs of generated images
(lower = more diverse; a collapsed model scores near 1), and optionally over
generated-vs-reference pairs.

Why not torchmetrics' defaults: 5 scales with an 11-px window need images above
160 px. `settings_for(image_size)` derives a setting that works from 8 px up:

* The coarsest scale (after halving num_scales - 1 times, flooring like
  `avg_pool2d`) must be at least 8 px, so a 7-px window still has something to
  slide over and reflection padding (half the window) stays below its size.
  We take the most scales (up to the 5 of Wang et al.) that keep it so.
* The window is 11 px (Wang et al.'s, torchmetrics' default) when the coarsest
  scale holds it, else the largest odd size <= the coarsest scale, i.e. 7 or 9.
* torchmetrics checks `size // max(1, num_scales - 1) ** 2 > kernel_size - 1`
  (and size >= 2 ** num_scales); `settings_for` drops a scale until it passes.
* With a Gaussian window torchmetrics sizes the window from sigma
  (`int(3.5 * sigma + 0.5) * 2 + 1`) and uses `kernel_size` only in that check,
  so sigma scales with the window: 1.5 * kernel_size / 11, which gives exactly
  `kernel_size` for 3..11 px and Wang et al.'s 1.5 at 11 px.
* Scale weights are torchmetrics' five betas, finest first, truncated to the
  scales used and renormalised to sum to 1 (so identical images still score 1).

Results: 16 px: 2 scales, 7 px; 32 px: 3 scales, 7 px; 64 px: 4 scales, 7 px;
128 px: 5 scales, 7 px; 256 px: 5 scales, 11 px (torchmetrics' default).
"""
import dataclasses

import numpy as np
import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

WANG_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # torchmetrics' default, finest scale first
MIN_COARSEST_SIZE = 8
MAX_KERNEL_SIZE = 11
DATA_RANGE = 255.0  # uint8 images; a fixed range, not torchmetrics' per-batch max - min
_PAIRS_PER_CALL = 256  # bounds memory: MS-SSIM keeps ~10 float copies of each pair


@dataclasses.dataclass(frozen=True)
class MsSsimSettings:
  """The arguments of torchmetrics' MS-SSIM that depend on the image size."""
  kernel_size: int
  sigma: float
  betas: tuple[float, ...]

  @property
  def num_scales(self) -> int:
    return len(self.betas)


def _passes_torchmetrics_check(size: int, num_scales: int, kernel_size: int) -> bool:
  return size >= 2 ** num_scales and size // max(1, num_scales - 1) ** 2 > kernel_size - 1


def settings_for(image_size: int) -> MsSsimSettings:
  """Returns the MS-SSIM settings for square images of side `image_size` (module docstring)."""
  if image_size < MIN_COARSEST_SIZE:
    raise ValueError(f'MS-SSIM needs images of at least {MIN_COARSEST_SIZE} px, got {image_size}')
  num_scales = 1
  while num_scales < len(WANG_BETAS) and image_size >> num_scales >= MIN_COARSEST_SIZE:
    num_scales += 1
  while True:
    coarsest = image_size >> (num_scales - 1)
    kernel_size = min(MAX_KERNEL_SIZE, coarsest if coarsest % 2 else coarsest - 1)
    if num_scales == 1 or _passes_torchmetrics_check(image_size, num_scales, kernel_size):
      break
    num_scales -= 1
  betas = np.asarray(WANG_BETAS[:num_scales]) / sum(WANG_BETAS[:num_scales])
  return MsSsimSettings(kernel_size, 1.5 * kernel_size / MAX_KERNEL_SIZE, tuple(map(float, betas)))


def ms_ssim(preds: torch.Tensor, target: torch.Tensor, settings: MsSsimSettings) -> torch.Tensor:
  """Returns torchmetrics' MS-SSIM of each pair (preds[k], target[k]): uint8 N×C×H×W → [N]."""
  return multiscale_structural_similarity_index_measure(
      preds.float(), target.float(), kernel_size=settings.kernel_size, sigma=settings.sigma,
      betas=settings.betas, data_range=DATA_RANGE, reduction='none')


def random_pairs(num_images: int, num_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns index arrays (i, j) of `num_pairs` uniformly random pairs with i != j."""
  if num_images < 2:
    raise ValueError(f'MS-SSIM pairs need at least 2 images, got {num_images}')
  rng = np.random.default_rng(seed)
  first = rng.integers(0, num_images, num_pairs)
  # An offset in [1, n) makes the second index uniform over the n - 1 others.
  second = (first + rng.integers(1, num_images, num_pairs)) % num_images
  return first, second


def mean_ms_ssim(images: torch.Tensor, others: torch.Tensor, first: np.ndarray,
                 second: np.ndarray, device='cpu') -> float:
  """Returns the mean MS-SSIM of the pairs (images[first[k]], others[second[k]]) (uint8 NCHW)."""
  settings = settings_for(min(images.shape[-2:]))
  scores = []
  for start in range(0, len(first), _PAIRS_PER_CALL):
    i = torch.from_numpy(first[start:start + _PAIRS_PER_CALL])
    j = torch.from_numpy(second[start:start + _PAIRS_PER_CALL])
    scores.append(ms_ssim(images[i].to(device), others[j].to(device), settings).cpu())
  return float(torch.cat(scores).double().mean())


def pairwise_ms_ssim(images: torch.Tensor, num_pairs: int, seed: int, device='cpu') -> float:
  """Returns the mean MS-SSIM over random pairs of distinct images (diversity: lower = more diverse)."""
  first, second = random_pairs(len(images), num_pairs, seed)
  return mean_ms_ssim(images, images, first, second, device)


def cross_ms_ssim(images: torch.Tensor, reference: torch.Tensor, num_pairs: int, seed: int,
                  device='cpu') -> float:
  """Returns the mean MS-SSIM over random (generated, reference) pairs."""
  rng = np.random.default_rng(seed)
  first = rng.integers(0, len(images), num_pairs)
  second = rng.integers(0, len(reference), num_pairs)
  return mean_ms_ssim(images, reference, first, second, device)
