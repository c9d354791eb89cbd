"""Image statistics that expose sampling artefacts: brightness, colour cast, dark images, grain.

Numpy only. Each image reduces to a few numbers (`per_image`), kept for the samples
as they stream and cached for the reference set beside its Inception features;
`gaps` compares the two sets. Our own code, because no metric library has these:
they are plain means, a threshold and the variance of a 3x3 Laplacian (the
"variance of the Laplacian" focus measure), each a line of numpy.
"""
import numpy as np

BT601 = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights of R, G, B
DARK_LUMINANCE = 40.0  # an image whose mean luminance (0-255) is below this counts as dark
FIELDS = ('luminance', 'red', 'green', 'blue', 'laplacian_variance')  # the columns of `per_image`
KEYS = ('brightness_gap', 'color_shift', 'dark_fraction_gap', 'noise_residual')
HISTOGRAM = 'luminance_histogram'  # the result's key of `histograms`: not a scalar, so in no TensorBoard tag
HISTOGRAM_BINS = 32  # 8 luminance levels a bin: the dark bins (< DARK_LUMINANCE) stay apart from the rest
SETTINGS = {'luminance': 'ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B, 0-255', 'dark_luminance': DARK_LUMINANCE,
            'laplacian': '3x3 [[0, 1, 0], [1, -4, 1], [0, 1, 0]] of the luminance, inside the border',
            'histogram': f'{HISTOGRAM_BINS} equal bins of the per-image mean luminance over [0, 255]'}


def luminance(images: np.ndarray) -> np.ndarray:
  """Returns the float64 BT.601 luminance [N, H, W] of uint8 N×C×H×W images (grey: the channel itself)."""
  images = np.asarray(images, np.float64)
  if images.shape[1] == 1:
    return images[:, 0]
  return np.tensordot(np.asarray(BT601), images, axes=([0], [1]))


def laplacian_variance(luma: np.ndarray) -> np.ndarray:
  """Returns the variance of each image's 3x3 Laplacian [N], over the pixels whose neighbours all exist."""
  # Only the interior: padding the border would add edges that are not in the image.
  laplacian = (luma[:, :-2, 1:-1] + luma[:, 2:, 1:-1] + luma[:, 1:-1, :-2] + luma[:, 1:-1, 2:]
               - 4.0 * luma[:, 1:-1, 1:-1])
  return laplacian.reshape(len(luma), -1).var(axis=1)


def per_image(images: np.ndarray) -> np.ndarray:
  """Returns float64 [N, len(FIELDS)]: each uint8 N×C×H×W image's mean luminance, mean R, G, B, Laplacian variance."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
    raise ValueError(f'expected uint8 N×C×H×W images with C in (1, 3), got {images.dtype} {images.shape}')
  if min(images.shape[2:]) < 3:
    raise ValueError(f'the 3x3 Laplacian needs images of at least 3x3 px, got {images.shape[2:]}')
  luma = luminance(images)
  rgb = np.broadcast_to(images.mean(axis=(2, 3), dtype=np.float64), (len(images), 3))
  return np.column_stack([luma.mean(axis=(1, 2)), rgb, laplacian_variance(luma)])


def gaps(samples: np.ndarray, reference: np.ndarray) -> dict[str, float]:
  """Returns the artefact metrics (KEYS) of the samples' `per_image` rows against the reference's.

  brightness_gap: mean luminance, samples minus reference (0-255); color_shift: the
  Euclidean distance of the mean RGB; dark_fraction_gap: the share of dark images,
  samples minus reference; noise_residual: mean Laplacian variance, samples over
  reference (> 1: grainier than the real images).
  """
  for name, rows in (('sample', samples), ('reference', reference)):
    if rows.ndim != 2 or rows.shape[1] != len(FIELDS) or not len(rows):
      raise ValueError(f'{name} image statistics have shape {rows.shape}; expected [n >= 1, {len(FIELDS)}]')
  mean, reference_mean = samples.mean(axis=0), reference.mean(axis=0)
  dark = lambda rows: float(np.mean(rows[:, 0] < DARK_LUMINANCE))
  return {'brightness_gap': float(mean[0] - reference_mean[0]),
          'color_shift': float(np.linalg.norm(mean[1:4] - reference_mean[1:4])),
          'dark_fraction_gap': dark(samples) - dark(reference),
          'noise_residual': float(mean[4] / reference_mean[4])}


def histograms(samples: np.ndarray, reference: np.ndarray) -> dict:
  """Returns the per-image mean luminance histograms of the samples' and the reference's `per_image` rows.

  {'range': [0, 255], 'samples': counts, 'reference': counts}, HISTOGRAM_BINS integer
  counts each (JSON-ready lists), so a report can draw a run's spread of brightness
  against the real images' where brightness_gap gives only the difference of means.
  """
  count = lambda rows: np.histogram(rows[:, 0], bins=HISTOGRAM_BINS, range=(0.0, 255.0))[0].tolist()
  return {'range': [0, 255], 'samples': count(samples), 'reference': count(reference)}
