r"""How long the README's quickstart takes, end to end, and where its sample grids are to look at.

Runs the quickstart exactly as the README does (`python -m ddpm_jax.main --config=configs/quickstart.py`,
a subprocess, in a fresh workdir) and measures the wall time from the command's start to its exit: start-up,
compilation, training, the sample grids and the checkpoints. From the run's event files it reads the steps/s
of each logging period (the median over the periods after the first, which holds compilation) and the loss of
the last periods. Prints a table and appends it to BENCHMARKS.md with the date, machine, load average before
and after (the machine may be shared: a load above the core count inflates the wall time), versions and
the command. Look at the grids it names (samples/step_<N>.png): they are the point of the quickstart.

Run from the repository root (about 3 minutes on 2 idle cores):

  python -m benchmarks.quickstart --workdir=/tmp/quickstart

--override passes config overrides to the run, e.g. --override=training.num_steps=500.
"""
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import machine_info
from ddpm_jax import paths
from ddpm_jax.reporting import runs as events

_WORKDIR = flags.DEFINE_string('workdir', '', 'Workdir of the run; must not exist ("" = a temporary one, removed).')
_OVERRIDES = flags.DEFINE_multi_string('override', [], 'Config overrides, KEY=VALUE (as --config.KEY=VALUE).')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to ("" = none).')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(workdir: str) -> float:
  """Runs the quickstart into workdir as the README does; returns its wall time in seconds."""
  command = [sys.executable, '-m', 'ddpm_jax.main', '--config=configs/quickstart.py', f'--workdir={workdir}',
             *[f'--config.{override}' for override in _OVERRIDES.value]]
  start = time.perf_counter()
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if result.returncode != 0:
    raise SystemExit(f'the quickstart failed (exit {result.returncode}):\n{result.stderr[-3000:]}')
  return seconds


def measure(workdir: str) -> dict:
  """Returns what the run logged: steps, median steps/s after the first period, the last periods' loss, grids."""
  logged = events.scalars(workdir)
  speeds = [value for _, value in sorted(logged['steps_per_sec'].items())][1:]  # the first period compiles
  losses = [value for _, value in sorted(logged['loss'].items())]
  grids = events.files_by_step(paths.Workdir(workdir).samples, paths.GRID_FILE)
  return {'steps': max(logged['loss']), 'steps_per_sec': float(np.median(speeds)) if speeds else float('nan'),
          'loss': float(np.mean(losses[-4:])), 'grids': [grids[step] for step in sorted(grids)]}


def recipe(config: dict) -> str:
  """Returns the run's recipe as the table names it, from its config.json."""
  data, model, d, t, s = (config[k] for k in ('data', 'model', 'diffusion', 'training', 'sampling'))
  weighting = f' + min-SNR-{d["min_snr_gamma"]:g}' if d['loss_weighting'] == 'min_snr' else ''
  return (f'{data["image_size"]} px, width {model["base_channels"]}, {d["schedule"]}, {d["prediction"]}{weighting}, '
          f'lr {t["learning_rate"]:g}, EMA {t["ema_decay"]:g}, batch {t["batch_size"]}, {s["sampler"]} '
          f'{s["num_steps"]} eta {s["eta"]:g}')


def main(argv):
  del argv
  workdir = _WORKDIR.value or os.path.join(tempfile.mkdtemp(prefix='quickstart_'), 'run')
  if os.path.exists(workdir):
    raise SystemExit(f'--workdir={workdir} exists; the quickstart must start fresh')
  load_before = machine_info.load_average()
  seconds = train(workdir)
  result = measure(workdir)
  grids = ', '.join(os.path.basename(g) for g in result['grids'])
  config = events.read_json(paths.Workdir(workdir).config_file)
  table = ['| recipe | steps | wall (start to exit) | steps/s (median) | loss (last 4 periods) | grids |',
           '|---|---:|---:|---:|---:|---|',
           f'| {recipe(config)} | {result["steps"]:,} | {seconds / 60:.1f} min ({seconds:.0f} s) | '
           f'{result["steps_per_sec"]:.1f} | {result["loss"]:.4f} | {grids} |']
  stamp = datetime.datetime.now().isoformat(timespec='seconds')
  lines = [f'## Quickstart, end to end, {stamp}', '',
           f'- Command: `{" ".join(["python -m benchmarks.quickstart", *sys.argv[1:]])}`',
           f'- Machine: {platform.platform()}; {machine_info.cpu_model()}, {os.cpu_count()} CPUs; JAX on '
           f'{jax.default_backend()}; load average before {load_before}, after {machine_info.load_average()}',
           f'- Versions: Python {platform.python_version()}, jax {jax.__version__}, numpy {np.__version__}',
           '- Wall: `python -m ddpm_jax.main --config=configs/quickstart.py` from start to exit (start-up, '
           'compilation, training, grids, checkpoints); steps/s: the median logging period after the first', '',
           *table, '', '']
  section = '\n'.join(lines)
  print(section)
  print('Grids: ' + ' '.join(result['grids']))
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'a') as f:
      f.write(section)
  if not _WORKDIR.value:
    shutil.rmtree(os.path.dirname(workdir), ignore_errors=True)


if __name__ == '__main__':
  app.run(main)
