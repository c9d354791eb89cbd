r"""Seconds to score N generated images: conversion, Inception features and metrics.

Times, for --num_images images at --image_size:
  1. sampling: --sample_fn if given, else random uniform images (no model, not timed);
  2. conversion: JAX [-1, 1] NHWC → torch uint8 NCHW (`eval_bridge.convert`);
  3. Inception features (`fidelity.FeatureAccumulator`), in batches of --batch_size;
  4. metrics: FID, KID and MS-SSIM (what the fid, kid and ms_ssim plug-ins of `eval_bridge.metrics` compute) against a
     reference of --num_reference synthetic features (time depends only on shapes);
plus the once-per-run costs: loading Inception and fitting the reference Gaussian.
Conversion and features are timed after one warm-up batch (jit compilation,
oneDNN/cuDNN set-up), which a training run pays once. Prints a table and appends
it to BENCHMARKS.md with date, machine, versions and the command.

Hook for sampling: --sample_fn=package.module:function, where
`function(num_images: int, image_size: int, seed: int)` returns a JAX array of
images in [-1, 1], NHWC; its time becomes the sampling row.

Run from the repository root:

  python -m benchmarks.eval --num_images=64 --image_size=32 --random_weights
  python -m benchmarks.eval --inception_weights=/path/to/weights-inception-2015-12-05-6726825d.pth
"""
import datetime
import importlib
import os
import platform
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np
import torch
import torch_fidelity

from eval_bridge import convert
from eval_bridge import fidelity
from eval_bridge import ms_ssim
from eval_bridge import reference
from eval_bridge import testing
from benchmarks import machine_info

_NUM_IMAGES = flags.DEFINE_integer('num_images', 64, 'Generated images to score.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32, 'Side of the generated images.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Images per conversion and Inception batch.')
_NUM_REFERENCE = flags.DEFINE_integer('num_reference', 10_000, 'Reference features (synthetic).')
_MS_SSIM_PAIRS = flags.DEFINE_integer('ms_ssim_pairs', 500, 'Random pairs for MS-SSIM.')
_KID_SUBSETS = flags.DEFINE_integer('kid_subsets', 100, 'KID subsets.')
_INCEPTION_WEIGHTS = flags.DEFINE_string('inception_weights', '', 'Inception weights file ("" = download).')
_RANDOM_WEIGHTS = flags.DEFINE_bool('random_weights', False, 'Random Inception weights: same speed, offline.')
_SAMPLE_FN = flags.DEFINE_string('sample_fn', '', 'module:function(num_images, image_size, seed) → [-1,1] NHWC.')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to.')


def timed(fn, *args):
  """Returns (fn(*args), seconds it took)."""
  start = time.perf_counter()
  result = fn(*args)
  return result, time.perf_counter() - start


def sample(num_images: int, image_size: int) -> tuple[jax.Array, float | None]:
  """Returns images in [-1, 1] NHWC and the seconds --sample_fn took (None without one)."""
  if not _SAMPLE_FN.value:
    images = jax.random.uniform(jax.random.key(0), (num_images, image_size, image_size, 3),
                                minval=-1, maxval=1)
    return images.block_until_ready(), None
  module_name, function_name = _SAMPLE_FN.value.split(':')
  sample_fn = getattr(importlib.import_module(module_name), function_name)
  images, seconds = timed(lambda: jax.block_until_ready(sample_fn(num_images, image_size, 0)))
  return images, seconds


def convert_all(images: jax.Array) -> list[torch.Tensor]:
  """Returns the images as torch uint8 NCHW batches (synchronised, so the time is real)."""
  batches = [convert.to_torch_uint8_nchw(images[i:i + _BATCH_SIZE.value])
             for i in range(0, len(images), _BATCH_SIZE.value)]
  if batches[0].is_cuda:
    torch.cuda.synchronize()
  return batches


def extract(extractor, batches: list[torch.Tensor]) -> np.ndarray:
  """Returns the Inception features of the batches."""
  accumulator = fidelity.FeatureAccumulator(extractor, batch_size=_BATCH_SIZE.value, progress=False)
  for batch in batches:
    accumulator.update(batch)
  return accumulator.features()


def time_metrics(features: np.ndarray, ref: reference.Reference, images: torch.Tensor,
                 device) -> list[tuple[str, float]]:
  """Returns (metric, seconds) rows for the three metric plug-ins' computations, and prints them."""
  fid, fid_seconds = timed(lambda: fidelity.fid_from_statistics(fidelity.fid_statistics(features),
                                                                ref.statistics))
  kid, kid_seconds = timed(lambda: fidelity.kid(features, ref.features, subsets=_KID_SUBSETS.value))
  ms_ssim_value, ms_ssim_seconds = timed(
      ms_ssim.pairwise_ms_ssim, images, _MS_SSIM_PAIRS.value, 0, device)
  print({'fid': fid, **kid, 'ms_ssim': ms_ssim_value})
  return [('metric: FID (2048x2048 eigenvalues)', fid_seconds),
          (f'metric: KID ({_KID_SUBSETS.value} subsets of {kid["kid_subset_size"]})', kid_seconds),
          (f'metric: MS-SSIM ({_MS_SSIM_PAIRS.value} pairs)', ms_ssim_seconds)]


def weights_path() -> str:
  """Returns the weights file to use: --inception_weights, random ones, or '' to download."""
  if _RANDOM_WEIGHTS.value:
    return testing.write_random_inception_weights(os.path.join(tempfile.mkdtemp(), 'inception.pth'))
  fidelity.check_inception_weights(_INCEPTION_WEIGHTS.value)
  return _INCEPTION_WEIGHTS.value


def measure() -> list[tuple[str, float | None]]:
  """Returns (stage, seconds) rows; seconds None where the stage was not timed."""
  device = fidelity.default_device()
  extractor, load_seconds = timed(fidelity.load_inception, weights_path(), device)
  rng = np.random.default_rng(0)
  reference_features = rng.normal(0.4, 0.3, (_NUM_REFERENCE.value, fidelity.FEATURE_DIM))
  ref, fit_seconds = timed(reference.make_reference, reference_features)

  images, sample_seconds = sample(_NUM_IMAGES.value, _IMAGE_SIZE.value)
  extract(extractor, convert_all(images[:2]))  # warm-up: compilation and library set-up
  batches, convert_seconds = timed(convert_all, images)
  features, feature_seconds = timed(extract, extractor, batches)
  metric_rows = time_metrics(features, ref, torch.cat(batches), device)
  per_eval = [s for s in (sample_seconds, convert_seconds, feature_seconds) if s]
  per_eval += [seconds for _, seconds in metric_rows]
  return [('once per run: load Inception', load_seconds),
          (f'once per run: fit {_NUM_REFERENCE.value} reference features', fit_seconds),
          ('sampling (--sample_fn)', sample_seconds),
          ('conversion JAX → torch uint8', convert_seconds),
          ('Inception features', feature_seconds),
          *metric_rows,
          ('per evaluation, total', sum(per_eval))]


def machine() -> str:
  """Returns the platform, CPU model and count, accelerator and load average."""
  model = machine_info.cpu_model()
  gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU for torch'
  load = machine_info.load_average()
  return (f'{platform.platform()}; {model}; {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} '
          f'usable); {gpu}; JAX on {jax.devices()[0].platform}; load average {load}')


def versions() -> str:
  """Returns the versions of the libraries the evaluation runs on."""
  import torchmetrics  # pylint: disable=g-import-not-at-top
  return (f'Python {platform.python_version()}, torch {torch.__version__}, torch-fidelity '
          f'{torch_fidelity.__version__}, torchmetrics {torchmetrics.__version__}, '
          f'jax {jax.__version__}, numpy {np.__version__}')


def report(rows: list[tuple[str, float | None]]) -> str:
  """Returns the Markdown section for BENCHMARKS.md."""
  num, size = _NUM_IMAGES.value, _IMAGE_SIZE.value
  weights = 'random (same speed)' if _RANDOM_WEIGHTS.value else (_INCEPTION_WEIGHTS.value or 'downloaded')
  lines = [
      f'## Evaluation (FID/KID/MS-SSIM), {datetime.datetime.now().isoformat(timespec="seconds")}', '',
      f'- Machine: {machine()}', f'- Versions: {versions()}',
      f'- Command: `python -m benchmarks.eval {" ".join(sys.argv[1:])}`',
      f'- Scored {num} images of {size}x{size} in batches of {_BATCH_SIZE.value}; Inception weights: '
      f'{weights}; {_MS_SSIM_PAIRS.value} MS-SSIM pairs, {_KID_SUBSETS.value} KID subsets; '
      'conversion and features timed after a warm-up batch', '',
      '| stage | seconds | images/s |', '|---|---:|---:|']
  for stage, seconds in rows:
    rate = f'{num / seconds:,.1f}' if seconds and not stage.startswith(('once', 'metric')) else ''
    lines.append(f'| {stage} | {"-" if seconds is None else f"{seconds:.3f}"} | {rate} |')
  return '\n'.join(lines) + '\n\n'


def main(argv):
  del argv
  section = report(measure())
  print(section)
  with open(_OUTPUT.value, 'a') as f:
    f.write(section)


if __name__ == '__main__':
  app.run(main)
