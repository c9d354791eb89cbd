"""Inception features, streamed, and FID/KID/IS/PR from them with torch-fidelity's own functions.

Samples stream: `FeatureAccumulator` takes uint8 NCHW batches, runs torch-fidelity's
`inception-v3-compat` extractor once and keeps only the 2048-d pool features and the
1008 class logits, never the images. FID, KID, Inception Score and precision/recall
are then computed from those by torch-fidelity's `fid_features_to_statistics` /
`fid_statistics_to_metric` / `kid_features_to_metric` / `isc_features_to_metric` /
`prc_features_to_metric`, so the numbers are torch-fidelity's.
"""
import contextlib
import hashlib
import os

import numpy as np
import torch
from torch_fidelity import feature_extractor_inceptionv3
from torch_fidelity import metric_fid
from torch_fidelity import metric_isc
from torch_fidelity import metric_kid
from torch_fidelity import metric_prc
import tqdm

EXTRACTOR_NAME = 'inception-v3-compat'
FEATURE_LAYER = '2048'
FEATURE_DIM = 2048
LOGITS_LAYER = 'logits_unbiased'  # torch-fidelity's Inception Score layer: the class logits without the fc bias
ISC_SPLITS = 10  # torch-fidelity's default, lowered to fit small sample counts
PRC_NEIGHBORHOOD = 3  # torch-fidelity's k (Kynkäänniemi et al. 2019)
# Rows of the distance matrix held at once (torch-fidelity's save_cpu_ram path): 5,000 x n float32 (1 GB at
# n = 50,000; measured 5.6 GB above the features in all, BENCHMARKS.md), where its default path holds whole
# float64 matrices: 140 GB for 50,000 samples against a 100,000-image reference.
PRC_BATCH_SIZE = 5000
METRIC_SEED = 2020  # torch-fidelity's rng_seed: IS's shuffle, KID's subsets (config eval.metric_seed)
MAX_KID_SUBSET_SIZE = 1000  # torch-fidelity's default, lowered to fit small sample counts
INCEPTION_URL = feature_extractor_inceptionv3.URL_INCEPTION_V3
# torch hub's naming convention: the file name ends in the first digits of the file's SHA-256 (6726825d).
RELEASED_SHA256_PREFIX = torch.hub.HASH_REGEX.search(os.path.basename(INCEPTION_URL)).group(1)
STANDIN_COMMAND = 'python -m eval_bridge.testing'
# The third way out of missing weights, by where the check runs: training can go on without evaluating.
TRAINING_OFF = 'or set eval.every_steps=0 to train without evaluation'
EVAL_MODE_OFF = "or score only what needs no Inception: eval.metrics=\"('ms_ssim', 'artefacts')\""


def default_device() -> torch.device:
  """Returns the first CUDA device if torch sees one, else the CPU."""
  return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def load_inception(weights_path: str = '', device='cpu', progress: bool = False):
  """Returns torch-fidelity's Inception extractor of (2048-d features, logits), in eval mode on `device`.

  Args:
    weights_path: a weights file (config `eval.inception_weights`); '' downloads
      torch-fidelity's weights once into the torch hub cache.
    device: where the extractor runs.
    progress: show the download's progress bar.
  """
  extractor = feature_extractor_inceptionv3.FeatureExtractorInceptionV3(
      EXTRACTOR_NAME, [FEATURE_LAYER, LOGITS_LAYER], feature_extractor_weights_path=weights_path or None,
      verbose=progress)
  return extractor.to(device).eval()


def cached_weights_path() -> str:
  """Returns where torch hub keeps torch-fidelity's downloaded Inception weights."""
  return os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(INCEPTION_URL))


def _one_line(error: BaseException) -> str:
  """Returns the error's type and the first line of its message, for one-line user errors."""
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0] if lines else ""}'


def file_sha256(path: str) -> str:
  """Returns the SHA-256 of a file's bytes, read 16 MB at a time."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 24), b''):
      digest.update(chunk)
  return digest.hexdigest()


def inception_record(weights_path: str = '') -> dict:
  """Returns {'inception_sha256', 'standin_inception'}: which weights Inception loads, and whether they are a stand-in.

  '' is torch hub's downloaded file. Any weights but torch-fidelity's released ones (the stand-in
  weights of `eval_bridge.testing` above all) give scores that compare with no published number.
  """
  path = weights_path or cached_weights_path()
  sha256 = file_sha256(path) if os.path.isfile(path) else ''
  return {'inception_sha256': sha256, 'standin_inception': not sha256.startswith(RELEASED_SHA256_PREFIX)}


def ways_out(off: str = TRAINING_OFF) -> str:
  """Returns how to get past missing Inception weights: the real file, stand-in weights, or (`off`) no Inception."""
  name = os.path.basename(INCEPTION_URL)
  return (f'set eval.inception_weights=/path/to/{name} (download it from {INCEPTION_URL}), or, for a smoke '
          f'test, write stand-in weights with `{STANDIN_COMMAND} /tmp/standin_inception.pth` and set '
          f'eval.inception_weights to that file (their scores are marked stand-in){", " + off if off else ""}')


def check_inception_weights(weights_path: str, off: str = TRAINING_OFF) -> None:
  """Returns None if the Inception weights can be had; raises a one-line error naming the ways out.

  Called at start-up, before training, so a run does not die at its first
  evaluation. A given path must exist and load into the extractor; with no path
  the weights must be in the torch hub cache or download now (into that cache).
  `off` is the way to do without Inception where the check runs ('' for none).
  """
  if weights_path:
    if not os.path.isfile(weights_path):
      raise ValueError(f'eval.inception_weights={weights_path!r} does not exist; {ways_out(off)}')
    try:
      load_inception(weights_path)
    except Exception as error:  # pylint: disable=broad-except  # any failure has the same fix
      raise RuntimeError(f'eval.inception_weights={weights_path!r} is not loadable Inception weights '
                         f'({_one_line(error)}); {ways_out(off)}') from None
  elif not os.path.isfile(cached_weights_path()):
    try:
      torch.hub.load_state_dict_from_url(INCEPTION_URL, progress=False)
    except Exception as error:  # pylint: disable=broad-except  # offline, proxy, disk: same fix
      raise RuntimeError(f'could not download the Inception weights ({_one_line(error)}); on an offline machine '
                         f'{ways_out(off)}') from None


def check_uint8_nchw(images: torch.Tensor) -> None:
  """Returns None if `images` is a uint8 N×C×H×W tensor with 1 or 3 channels; raises otherwise."""
  if not (torch.is_tensor(images) and images.dtype == torch.uint8 and images.ndim == 4
          and images.shape[1] in (1, 3)):
    kind = f'{images.dtype} {tuple(images.shape)}' if torch.is_tensor(images) else type(images)
    raise ValueError(f'expected a uint8 N×C×H×W tensor with C in (1, 3), got {kind}; '
                     'convert generated images with eval_bridge.convert.to_torch_uint8_nchw')


class FeatureAccumulator:
  """Streams uint8 NCHW batches through Inception and keeps only their 2048-d features (and logits, if given)."""

  def __init__(self, extractor, *, batch_size: int = 64, total: int | None = None,
               progress: bool = True, desc: str = 'Inception features'):
    self._extractor = extractor
    self._device = next(extractor.parameters()).device
    self._batch_size = batch_size
    self._chunks: list[np.ndarray] = []
    self._logits: list[np.ndarray] = []
    # disable=None: no bar where stderr is not a terminal (CI, SLURM logs would get every redraw as a line).
    self._bar = tqdm.tqdm(total=total, disable=None if progress else True, unit='img', desc=desc, leave=False)

  def update(self, images: torch.Tensor) -> None:
    """Returns None; adds the features of `images` (uint8 N×C×H×W, any device)."""
    check_uint8_nchw(images)
    # Inception takes RGB; grey images (e.g. MNIST) are scored as RGB with equal channels.
    images = images.expand(-1, 3, -1, -1)
    with torch.inference_mode():
      for chunk in torch.split(images, self._batch_size):
        features, *logits = self._extractor(chunk.to(self._device))
        self._chunks.append(features.cpu().numpy().astype(np.float64))
        if logits:  # float32, as the extractor gives them: 1008 per image
          self._logits.append(logits[0].cpu().numpy())
        self._bar.update(len(chunk))

  @property
  def count(self) -> int:
    """Returns the number of images seen so far."""
    return sum(len(chunk) for chunk in self._chunks)

  def features(self) -> np.ndarray:
    """Returns the float64 features of every image seen, [num_images, 2048]; ends the progress bar."""
    self._bar.close()
    if not self._chunks:
      return np.zeros((0, FEATURE_DIM), np.float64)
    return np.concatenate(self._chunks)

  def logits(self) -> np.ndarray:
    """Returns the float32 logits of every image seen, [num_images, classes]; ValueError if the extractor gave none."""
    if len(self._logits) != len(self._chunks) or not self._logits:
      raise ValueError(f'the Inception extractor gave no logits ({LOGITS_LAYER!r}); the Inception Score needs them: '
                       'load it with fidelity.load_inception')
    return np.concatenate(self._logits)


def _check_features(name: str, features: np.ndarray, minimum: int = 2, metrics: str = 'FID and KID') -> None:
  if features.ndim != 2 or len(features) < minimum:
    raise ValueError(f'{name} features have shape {features.shape}; {metrics} need at least '
                     f'{minimum} rows of features')


def fid_statistics(features: np.ndarray) -> dict[str, np.ndarray]:
  """Returns torch-fidelity's Gaussian fit {'mu', 'sigma'} of float64 features [n, d]."""
  features = np.asarray(features, np.float64)
  _check_features('the', features)
  return metric_fid.fid_features_to_statistics(torch.from_numpy(features))


def fid_from_statistics(generated: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
  """Returns the Fréchet distance between two Gaussian fits (torch-fidelity's formula)."""
  result = metric_fid.fid_statistics_to_metric(generated, reference, verbose=False)
  return float(result[metric_fid.KEY_METRIC_FID])


def fid(generated: np.ndarray, reference: np.ndarray) -> float:
  """Returns FID between two feature sets [n, 2048] (torch-fidelity's numbers)."""
  return fid_from_statistics(fid_statistics(generated), fid_statistics(reference))


def kid_subset_size(num_generated: int, num_reference: int) -> int:
  """Returns KID's subset size: torch-fidelity's 1000, or fewer when there are fewer samples."""
  return min(MAX_KID_SUBSET_SIZE, num_generated, num_reference)


def kid(generated: np.ndarray, reference: np.ndarray, *, subsets: int = 100,
        seed: int = 0) -> dict[str, float]:
  """Returns {'kid_mean', 'kid_std', 'kid_subset_size'}: torch-fidelity's polynomial-kernel KID.

  The MMD is averaged over `subsets` random subsets of `kid_subset_size(n_gen,
  n_ref)` samples from each side, drawn from `seed`.
  """
  generated, reference = np.asarray(generated, np.float64), np.asarray(reference, np.float64)
  _check_features('generated', generated)
  _check_features('reference', reference)
  subset_size = kid_subset_size(len(generated), len(reference))
  result = metric_kid.kid_features_to_metric(
      torch.from_numpy(generated), torch.from_numpy(reference), kid_subsets=subsets,
      kid_subset_size=subset_size, rng_seed=seed, verbose=False)
  return {'kid_mean': float(result[metric_kid.KEY_METRIC_KID_MEAN]),
          'kid_std': float(result[metric_kid.KEY_METRIC_KID_STD]),
          'kid_subset_size': subset_size}


def isc(logits: np.ndarray, *, splits: int = ISC_SPLITS, seed: int = 0) -> dict[str, float]:
  """Returns {'is_mean', 'is_std'}: torch-fidelity's Inception Score of logits [n, classes], over `splits` splits.

  The splits are at most n (an empty split is no score); samples are shuffled from `seed` first.
  """
  logits = torch.from_numpy(np.asarray(logits))
  if logits.ndim != 2 or not len(logits):
    raise ValueError(f'the Inception Score needs logits [n >= 1, classes], got shape {tuple(logits.shape)}')
  result = metric_isc.isc_features_to_metric(logits, splits=min(splits, len(logits)), shuffle=True, rng_seed=seed)
  return {'is_mean': result[metric_isc.KEY_METRIC_ISC_MEAN], 'is_std': result[metric_isc.KEY_METRIC_ISC_STD]}


def subsample(features: np.ndarray, size: int, seed: int = METRIC_SEED) -> np.ndarray:
  """Returns `size` rows of features drawn without replacement from `seed` (in their order); all when size >= n."""
  if size >= len(features):
    return features
  return features[np.sort(np.random.default_rng(seed).choice(len(features), size, replace=False))]


def precision_recall(generated: np.ndarray, reference: np.ndarray, *, neighborhood: int = PRC_NEIGHBORHOOD,
                     batch_size: int = PRC_BATCH_SIZE, seed: int = METRIC_SEED, device='cpu') -> dict[str, float]:
  """Returns {'precision', 'recall', 'prc_reference_size'}: torch-fidelity's k-NN precision and recall.

  As Kynkäänniemi et al.'s and ADM's code: float32 features, and a reference larger than the samples
  subsampled (from `seed`) to their count, since both sides' k-NN radii depend on their sizes. The
  distances are computed `batch_size` rows at a time (torch-fidelity's save_cpu_ram), so memory holds
  batch_size x n of them, not n x n.
  """
  for name, features in (('generated', generated), ('reference', reference)):
    _check_features(name, np.asarray(features), neighborhood + 1, f'precision and recall (k={neighborhood})')
  as_float32 = lambda features: torch.from_numpy(np.asarray(features, np.float32)).to(device)
  # Converted at once, so the float64 subsample is freed before the distances take their memory.
  reference = as_float32(subsample(np.asarray(reference), len(generated), seed))
  result = metric_prc.prc_features_to_metric(
      as_float32(generated), reference, prc_neighborhood=neighborhood, prc_batch_size=batch_size,
      save_cpu_ram=True, verbose=False)
  return {'precision': result[metric_prc.KEY_METRIC_PRECISION], 'recall': result[metric_prc.KEY_METRIC_RECALL],
          'prc_reference_size': len(reference)}


@contextlib.contextmanager
def full_float32():
  """Yields with torch's TF32 off (cuDNN convolutions and CUDA matmuls) and matmul precision 'highest'; restores after.

  Ampere and newer GPUs run float32 convolutions in TF32 by default (10-bit mantissa): FID then
  moves in its second decimal. Papers' numbers come from full float32 Inception.
  """
  saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
  torch.backends.cudnn.allow_tf32 = False
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.set_float32_matmul_precision('highest')
  try:
    yield
  finally:
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[:2]
    torch.set_float32_matmul_precision(saved[2])
