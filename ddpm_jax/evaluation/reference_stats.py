"""Reference statistics in a file: a split's, written once (`python -m ddpm_jax.stats compute`), or imported.

`eval.reference_stats=PATH` scores against such a file instead of reading data.eval_split. The formats,
told apart by the arrays they hold:

  this project's  mu, sigma (float64), features (float32 [n, 2048]: KID, precision/recall), image_statistics
                  (the artefacts) and `record`, a JSON string: the extractor, its weights' SHA-256, the image
                  size, dataset, split and count, the images' SHA-256. Every metric.
  ADM's           mu, sigma (its TensorFlow Inception's pool features) and arr_0, the images (uint8 NHWC): FID
                  from mu and sigma; KID, precision/recall and the artefacts from arr_0's features here (cached
                  like a dataset's).
  EDM's, clean-fid's  mu and sigma alone: FID only.

A file that lacks what a chosen metric reads is refused at start-up, before sampling, in one line; so is one
whose recorded extractor, weights or image size differ from the run's. Of a file without a record, what is
assumed is logged and written into each evaluation's JSON.
"""
import dataclasses
import datetime
import hashlib
import json
import os
import zipfile

import numpy as np
import torch_fidelity
from absl import logging

from ddpm_jax import data
from ddpm_jax.config import schema
from eval_bridge import fidelity, metrics as metrics_lib, reference

FORMAT = 'ddpm_jax reference statistics'
OURS, ADM, MU_SIGMA = 'ddpm_jax', 'adm', 'mu_sigma'
_PARTS = {OURS: ('statistics', 'features', 'image_statistics'), ADM: ('statistics', 'features', 'image_statistics'),
          MU_SIGMA: ('statistics',)}
_NAMES = {OURS: "python -m ddpm_jax.stats compute's statistics", ADM: "ADM's reference batch (mu, sigma, arr_0)",
          MU_SIGMA: "EDM's or clean-fid's mu and sigma alone"}
_PART_NAMES = {'statistics': 'mu and sigma', 'features': 'per-image Inception features',
               'image_statistics': "the artefacts' per-image statistics"}
_ASSUMED_EXTRACTOR = ("the 2015-12-05 TensorFlow Inception-v3's pool features (torch-fidelity's "
                      f'{fidelity.EXTRACTOR_NAME} with its released weights)')
_COMPUTE = 'python -m ddpm_jax.stats compute --config=... --split=... --out=REF.npz'


def hashed(batches, digest):
  """Yields the batches unchanged, adding each one's shape and bytes to `digest` (hashlib) on the way."""
  for batch in batches:
    contiguous = np.ascontiguousarray(batch)
    digest.update(repr(contiguous.shape).encode())
    digest.update(contiguous.tobytes())
    yield batch


def content_digest(batches) -> str:
  """Returns the SHA-256 of the uint8 images the batches hold (shapes and bytes): what the reference set is."""
  digest = hashlib.sha256()
  for _ in hashed(batches, digest):
    pass
  return digest.hexdigest()


file_digest = fidelity.file_sha256  # the SHA-256 of a file's bytes


def weights_digest(path: str) -> str:
  """Returns the SHA-256 of an Inception weights file; '' (torch-fidelity's download) is named by its pinned URL."""
  return file_digest(path) if path else 'torch-fidelity-' + fidelity.EXTRACTOR_NAME


def loaded_weights_digest(weights_path: str) -> str:
  """Returns the SHA-256 of the weights Inception loads: eval.inception_weights, else torch hub's downloaded file."""
  if not weights_path and os.path.isfile(fidelity.cached_weights_path()):
    weights_path = fidelity.cached_weights_path()
  return weights_digest(weights_path)


@dataclasses.dataclass(frozen=True)
class StatsFile:
  """What a reference-statistics file holds, read from its arrays' headers and small arrays."""
  path: str
  kind: str  # OURS, ADM or MU_SIGMA
  record: dict  # this project's JSON record; {} for imported files
  image_size: int | None  # recorded (ours), arr_0's (ADM), None where the file doesn't say (EDM, clean-fid)
  count: int | None

  @property
  def parts(self) -> tuple[str, ...]:
    """Returns what of a reference it gives: 'statistics' (mu, sigma), 'features', 'image_statistics'."""
    return _PARTS[self.kind]


def _open_npy(archive: zipfile.ZipFile, name: str):
  """Returns (file at the data, shape, dtype, fortran_order) of the array `name` of an open .npz."""
  f = archive.open(name + '.npy')
  version = np.lib.format.read_magic(f)
  read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
  shape, fortran_order, dtype = read_header(f)
  return f, shape, dtype, fortran_order


def open_file(path: str) -> StatsFile:
  """Returns what the .npz at `path` is and holds; a one-line ValueError when it is no reference statistics."""
  where = f'eval.reference_stats={path!r}'
  if not os.path.isfile(path):
    raise ValueError(f"{where} does not exist; give an .npz of reference statistics ({_COMPUTE}) or '' to read "
                     'the dataset')
  try:
    with np.load(path) as arrays:
      names = set(arrays.files)
      shapes = {name: arrays[name].shape for name in ('mu', 'sigma') if name in names}
      record = json.loads(str(arrays['record'])) if 'record' in names else {}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(f'{where} is not a readable .npz ({type(e).__name__}: {e})') from None
  expected = {'mu': (fidelity.FEATURE_DIM,), 'sigma': (fidelity.FEATURE_DIM,) * 2}
  if shapes != expected:
    raise ValueError(f'{where} holds {sorted(names)}, with mu, sigma of shapes {shapes}; reference statistics are '
                     f'mu [2048] and sigma [2048, 2048] of Inception pool features (write them with {_COMPUTE})')
  if record.get('format') == FORMAT:
    return StatsFile(path, OURS, record, record.get('image_size'), record.get('count'))
  if 'arr_0' not in names:
    return StatsFile(path, MU_SIGMA, {}, None, None)
  with zipfile.ZipFile(path) as archive:
    _, shape, dtype, _ = _open_npy(archive, 'arr_0')
  if dtype != np.uint8 or len(shape) != 4 or shape[1] != shape[2] or shape[3] not in (1, 3):
    raise ValueError(f"{where}'s arr_0 is {dtype} {shape}; ADM's reference images are uint8 [n, size, size, 3]")
  return StatsFile(path, ADM, {}, shape[1], shape[0])


def adm_images(path: str, batch_size: int = 256):
  """Yields an ADM file's arr_0 images (uint8 NHWC) batch by batch: a reference batch is gigabytes, never loaded."""
  with zipfile.ZipFile(path) as archive:
    f, shape, _, fortran_order = _open_npy(archive, 'arr_0')
    if fortran_order:
      raise ValueError(f"{path}'s arr_0 is stored in Fortran order; save it C-ordered (np.savez of an array)")
    row = int(np.prod(shape[1:]))
    for start in range(0, shape[0], batch_size):
      size = min(batch_size, shape[0] - start)
      yield np.frombuffer(f.read(size * row), np.uint8).reshape((size, *shape[1:]))


def assumption(stats: StatsFile, image_size: int) -> str:
  """Returns what is assumed of a file without a record ('' for this project's files, which say it all)."""
  if stats.kind == ADM:
    return (f"{stats.path} is ADM's reference batch ({stats.count} images of {stats.image_size} px): FID reads its mu "
            f'and sigma, assumed {_ASSUMED_EXTRACTOR}; KID, precision/recall and the artefacts read this run\'s '
            'Inception on its images')
  if stats.kind == MU_SIGMA:
    return (f"{stats.path} records neither its extractor nor its image size (EDM's or clean-fid's mu and sigma): "
            f"assuming {_ASSUMED_EXTRACTOR} of {image_size} px images, the run's size")
  return ''


def check(config: schema.Config) -> StatsFile:
  """Returns eval.reference_stats's file, checked against the run; a one-line ValueError where it can't serve it.

  Refused: a file without what a chosen metric reads, one recorded at another image size, or (for Inception
  metrics) with another extractor or weights. Logs what is assumed of a file without a record.
  """
  e = config.eval
  stats, where = open_file(e.reference_stats), f'eval.reference_stats={e.reference_stats!r}'
  refused = {name: [part for part in parts if part not in stats.parts]
             for name, parts in metrics_lib.reference_parts(e.metrics).items()}
  refused = {name: parts for name, parts in refused.items() if parts}
  if refused:
    able = [name for name in e.metrics if name not in refused]
    missing = ' and '.join(_PART_NAMES[part] for part in sorted({p for parts in refused.values() for p in parts}))
    raise ValueError(f'{where} holds {_NAMES[stats.kind]}, which can\'t give {", ".join(refused)} (they read '
                     f'{missing}); set eval.metrics to {tuple(able) or "other metrics"} or write a file with '
                     f'features: {_COMPUTE}')
  if stats.image_size is not None and stats.image_size != config.data.image_size:
    raise ValueError(f'{where} holds statistics of {stats.image_size} px images and the run\'s are '
                     f'{config.data.image_size} px (data.image_size); use a reference at {config.data.image_size} px')
  if stats.kind == OURS and metrics_lib.needs_reference_features(e.metrics):
    theirs = tuple(str(stats.record.get(key)) for key in ('extractor', 'feature_layer', 'weights_sha256'))
    ours = (fidelity.EXTRACTOR_NAME, fidelity.FEATURE_LAYER, loaded_weights_digest(e.inception_weights))
    if theirs != ours:
      raise ValueError(f'{where} was computed with {theirs[0]} layer {theirs[1]}, weights sha256 {theirs[2][:16]}, '
                       f'and the run\'s Inception is {ours[0]} layer {ours[1]}, weights sha256 {ours[2][:16]} '
                       '(eval.inception_weights); give the run the file\'s weights or compute the file with the run\'s')
  if assumption(stats, config.data.image_size):
    logging.warning('%s', assumption(stats, config.data.image_size))
  return stats


def settings(stats: StatsFile, image_size: int) -> dict:
  """Returns the file's part of an evaluation's record: its path, format, record or assumption, and the split."""
  split = f"{stats.record['dataset']} {stats.record['split']}" if stats.kind == OURS else os.path.basename(stats.path)
  return {'reference_split': split, 'reference_stats': {
      'path': stats.path, **stats.record, 'format': stats.kind, 'assumed': assumption(stats, image_size) or None}}


def load(config: schema.Config, stats: StatsFile, extractor, cache_dir: str,
         progress: bool = False) -> reference.Reference:
  """Returns the file's `Reference`: its mu and sigma, and the features and image statistics the metrics read."""
  wanted = {part for parts in metrics_lib.reference_parts(config.eval.metrics).values() for part in parts}
  with np.load(stats.path) as arrays:
    statistics = {'mu': arrays['mu'].astype(np.float64), 'sigma': arrays['sigma'].astype(np.float64)}
    if stats.kind == OURS:
      features = arrays['features'].astype(np.float64) if 'features' in wanted else None
      image_statistics = arrays['image_statistics'] if 'image_statistics' in wanted else None
      return reference.make_reference(features, image_statistics=image_statistics, statistics=statistics,
                                      size=stats.count)
  if stats.kind == MU_SIGMA or not wanted - {'statistics'}:
    return reference.make_reference(None, statistics=statistics, size=stats.count)
  # ADM: its images' features and statistics, computed once and cached by the file's and the weights' digests.
  key = f'adm-{file_digest(stats.path)[:16]}-inception{weights_digest(config.eval.inception_weights)[:16]}'
  return reference.reference_set(
      lambda: adm_images(stats.path), cache_dir, dataset=key, split='arr_0', image_size=stats.image_size,
      count=stats.count, extractor=extractor if 'features' in wanted else None,
      image_statistics='image_statistics' in wanted, progress=progress, statistics=statistics)


def compute(config: schema.Config, split: str, out: str, count: int = 0, progress: bool = True) -> dict:
  """Writes `out`, this project's .npz of a split's first `count` images (0 = all); returns its record.

  One pass over the images: Inception features (in full float32, as the paper protocol's) and the
  artefacts' per-image statistics; mu and sigma are the float64 features' fit.
  """
  if not out.endswith('.npz'):
    raise ValueError(f'--out={out!r} must end in .npz')
  available = len(data.make_source(config.data, split))
  count = count or available
  if count > available:
    raise ValueError(f'--count={count} is more than the {available} images of {config.data.dataset} {split}')
  try:
    fidelity.check_inception_weights(config.eval.inception_weights, off='')
  except RuntimeError as e:
    raise ValueError(str(e)) from None
  extractor = fidelity.load_inception(config.eval.inception_weights, fidelity.default_device())
  digest = hashlib.sha256()
  images = hashed(data.make_eval_iterator(config.data, split, batch_size=64, max_examples=count), digest)
  with fidelity.full_float32():
    features, image_statistics = reference.read_reference(images, count, extractor, image_statistics=True,
                                                           progress=progress)
  statistics = fidelity.fid_statistics(features)
  record = {'format': FORMAT, 'extractor': fidelity.EXTRACTOR_NAME, 'feature_layer': fidelity.FEATURE_LAYER,
            'weights_sha256': loaded_weights_digest(config.eval.inception_weights),
            'image_size': config.data.image_size, 'dataset': config.data.dataset, 'split': split,
            'split_seed': config.data.split_seed, 'count': count, 'images_sha256': digest.hexdigest(),
            'torch_fidelity': torch_fidelity.__version__, 'tf32': False,
            'written': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out + '.tmp', 'wb') as f:  # renamed when whole: an interrupted run leaves no half file
    np.savez(f, mu=statistics['mu'], sigma=statistics['sigma'], features=features.astype(np.float32),
             image_statistics=image_statistics, record=np.array(json.dumps(record, sort_keys=True)))
  os.replace(out + '.tmp', out)
  return record
