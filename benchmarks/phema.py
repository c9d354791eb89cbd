r"""Post-hoc EMA: the disk cost of a snapshot and the time of a reconstruction for the study's model, and the error.

1. Size: configs/cosine_mae.py's U-Net (param shapes by jax.eval_shape), the bytes of one profile's snapshot
   in float32 and float16, a real snapshot file's size, and the disk of a 600k-step run at the default period.
2. Time: --snapshots real snapshots of that model (random params, as many as a study run writes per --profiles
   sigma_rel and step) are written, then one sigma_rel is reconstructed from them with
   run/phema_snapshots.reconstruct, streaming (read, verify its SHA-256, add), on this machine's CPU.
3. Error: on a random walk of --walk_steps steps (64 numbers), the EMA of each target sigma_rel reconstructed
   from snapshots of 0.05 and 0.10 (tracked by the train step's own update) against that sigma_rel tracked
   directly: RMS error over the walk's spread (mean absolute deviation of its last 30%), per snapshot period.

Prints a table and appends it to BENCHMARKS.md with date, machine, versions and the command:

  python -m benchmarks.phema

A quick check of the script: python -m benchmarks.phema --snapshots=2 --output=/tmp/BENCHMARKS.md
"""
import datetime
import functools
import os
import platform
import shutil
import sys
import tempfile
import time

from absl import app, flags
import jax
import numpy as np

from benchmarks import machine_info
from ddpm_jax.config import convert
from ddpm_jax.core import phema
from ddpm_jax.core.models.unet import UNet, count_params
from ddpm_jax.core import train_step
from ddpm_jax.run import phema_snapshots

_SNAPSHOTS = flags.DEFINE_integer('snapshots', 8, 'Snapshots of the study model to write and reconstruct from.')
_WALK_STEPS = flags.DEFINE_integer('walk_steps', 10_000, 'Steps of the random walk the error is measured on.')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to.')
_TARGETS = (0.03, 0.07, 0.15, 0.2)
_PERIODS = (4, 10, 20, 50, 100)  # snapshots per run
_STUDY_STEPS, _DEFAULT_PERIOD = 600_000, 15_000


def study_config():
  """Returns configs/cosine_mae.py's typed config (the flagship model; all the study's share its U-Net)."""
  sys.path.insert(0, os.getcwd())
  from configs import cosine_mae  # pylint: disable=g-import-not-at-top
  return convert.from_configdict(cosine_mae.get_config())


def study_param_shapes(config):
  """Returns the study U-Net's params as ShapeDtypeStructs (nothing computed)."""
  model = UNet(config.model)
  return jax.eval_shape(functools.partial(train_step.init_params, model, config.data.image_size, config.seed))


def measure_time(shapes, workdir: str) -> dict:
  """Returns the seconds to write one snapshot, to reconstruct from --snapshots of them, and a file's bytes."""
  rng = np.random.default_rng(0)
  write_seconds = []
  for index in range(_SNAPSHOTS.value):
    params = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape, np.float32), shapes)
    step, sigma_rel = (index // 2 + 1) * _DEFAULT_PERIOD, (0.05, 0.1)[index % 2]
    start = time.perf_counter()
    path = phema_snapshots.write_snapshot(workdir, step, sigma_rel, params)
    write_seconds.append(time.perf_counter() - start)
    del params
  start = time.perf_counter()
  _, record = phema_snapshots.reconstruct(workdir, 0.07)
  seconds = time.perf_counter() - start
  read = sum(1 for s in record['snapshots'] if s['weight'])
  return {'write': float(np.median(write_seconds)), 'reconstruct': seconds, 'read': read,
          'file_bytes': os.path.getsize(path)}


def reconstruction_errors(steps: int) -> dict:
  """Returns {(target sigma_rel, snapshots per run): RMS error over the walk's spread} on a random walk."""
  walk = np.cumsum(np.random.default_rng(0).normal(size=(steps, 64)), axis=0).astype(np.float32)
  sigma_rels = (0.05, 0.1) + _TARGETS
  gammas = tuple(phema.sigma_rel_to_gamma(s) for s in sigma_rels)

  def update(profiles, inputs):
    profiles = phema.update(profiles, inputs[1], inputs[0], gammas)
    return profiles, profiles
  start = tuple(jax.numpy.zeros(64) for _ in sigma_rels)
  history = jax.lax.scan(update, start, (jax.numpy.arange(steps), jax.numpy.asarray(walk)))[1]
  low, high, *direct = [np.asarray(h, np.float64) for h in history]
  spread = np.abs(walk[-steps * 3 // 10:] - walk[-steps * 3 // 10:].mean(axis=0)).mean()
  errors = {}
  for count in _PERIODS:
    times = np.arange(1, count + 1) * (steps // count)
    snapshots = np.concatenate([low[times - 1], high[times - 1]])
    weights = phema.solve_coefficients(list(times) * 2, [0.05] * count + [0.1] * count, steps, _TARGETS)
    for target, column, tracked in zip(_TARGETS, weights.T, direct):
      errors[target, count] = float(np.sqrt(np.mean((column @ snapshots - tracked[-1]) ** 2)) / spread)
  return errors


def versions() -> str:
  """Returns the versions the measurement ran on."""
  import flax  # pylint: disable=g-import-not-at-top
  return f'Python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, numpy {np.__version__}'


def report(count: int, timing: dict, errors: dict) -> str:
  """Returns the Markdown section for BENCHMARKS.md."""
  float32_bytes = count * 4
  snapshot_steps = _STUDY_STEPS // _DEFAULT_PERIOD
  stamp = datetime.datetime.now().isoformat(timespec='seconds')
  lines = [
      f'## Post-hoc EMA: snapshot size, reconstruction time and error, {stamp}', '', f'- Machine: {platform.platform()}; {machine_info.cpu_model()}; {os.cpu_count()} CPUs; JAX on '
      f'{jax.devices()[0].platform}; load average {machine_info.load_average()}', f'- Versions: {versions()}',
      f'- Command: `python -m benchmarks.phema {" ".join(sys.argv[1:])}`', '',
      f'The study\'s U-Net (configs/cosine_mae.py): {count:,} parameters.', '',
      '| snapshot | bytes of params | per snapshot step, 2 profiles | 600k-step run, every 15k steps (40 steps) |',
      '|---|---:|---:|---:|']
  for dtype, size in (('float32', float32_bytes), ('float16', float32_bytes // 2)):
    lines.append(f'| {dtype} | {size / 2**20:,.1f} MiB | {2 * size / 2**20:,.1f} MiB | '
                 f'{2 * size * snapshot_steps / 2**30:,.1f} GiB |')
  lines += ['', f'A float32 snapshot file (.npz with its leaves\' names and digest) is {timing["file_bytes"]:,} bytes; '
            f'writing one took {timing["write"]:.2f} s (median). Reconstructing sigma_rel 0.07 from '
            f'{timing["read"]} snapshots took {timing["reconstruct"]:.1f} s on the CPU '
            f'({timing["reconstruct"] / max(timing["read"], 1):.2f} s per snapshot: read, SHA-256, add).', '',
            f'Reconstruction error on a {_WALK_STEPS.value:,}-step random walk (RMS over the walk\'s spread), from '
            'snapshots of sigma_rel 0.05 and 0.10 at evenly spaced steps, against the target tracked directly:', '',
            '| snapshots per profile | ' + ' | '.join(f'sigma_rel {t:g}' for t in _TARGETS) + ' |',
            '|---:|' + '---:|' * len(_TARGETS)]
  for count in _PERIODS:
    lines.append(f'| {count} | ' + ' | '.join(f'{errors[t, count]:.1e}' for t in _TARGETS) + ' |')
  return '\n'.join(lines) + '\n\n'


def main(argv):
  del argv
  config = study_config()
  count = count_params(study_param_shapes(config))
  scratch = tempfile.mkdtemp(prefix='phema_benchmark_')
  try:
    timing = measure_time(study_param_shapes(config), scratch)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  errors = reconstruction_errors(_WALK_STEPS.value)
  section = report(count, timing, errors)
  print(section)
  with open(_OUTPUT.value, 'a') as f:
    f.write(section)


if __name__ == '__main__':
  app.run(main)
