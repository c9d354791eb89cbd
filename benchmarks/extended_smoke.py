r"""A smoke figure of the extended study on a CPU: two recipes at the quickstart shapes, their artefacts and FID.

Trains configs/quickstart.py (16x16 shapes, 1.1M parameters) with each --recipes entry's
overrides for --train_steps through the CLI, then scores each run's last checkpoint with
`--mode=eval`: FID against the shapes test split (the stand-in Inception weights of
eval_bridge/testing.py unless --inception_weights names real ones) and the artefact metrics
(brightness_gap, color_shift, dark_fraction_gap, noise_residual). It shows the pipeline end
to end and how the recipes' numbers come out at this size; it proves nothing about Food-101
at 64x64, which needs a GPU (scripts/run_study.sh --extended). Prints a table and appends it
to BENCHMARKS.md with date, machine, versions and the command. Run from the repository root
(~15 minutes on 2 CPU cores):

  python -m benchmarks.extended_smoke --root=/tmp/extended_smoke
"""
import datetime
import json
import os
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags

from benchmarks import machine_info

RECIPES = {
    'linear_mse': {'diffusion.schedule': 'linear', 'diffusion.loss': 'mse', 'diffusion.prediction': 'eps'},
    'cosine_v_min_snr': {'diffusion.schedule': 'cosine', 'diffusion.loss': 'mse', 'diffusion.prediction': 'v',
                         'diffusion.loss_weighting': 'min_snr', 'diffusion.min_snr_gamma': 5.0},
}
ARTEFACTS = ('brightness_gap', 'color_shift', 'dark_fraction_gap', 'noise_residual')

_ROOT = flags.DEFINE_string('root', '/tmp/extended_smoke', 'Where the runs, weights and caches go (reused).')
_RECIPES = flags.DEFINE_list('recipes', list(RECIPES), f'Recipes to run: {", ".join(RECIPES)}.')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 1000, 'Training steps of each recipe.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 500, 'Samples per evaluation.')
_INCEPTION_WEIGHTS = flags.DEFINE_string('inception_weights', '', 'Inception weights ("" = the stand-in).')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to.')


def cli(workdir: str, overrides: dict, *args: str) -> float:
  """Returns the seconds `python -m ddpm_jax.main` took on quickstart with the overrides (it must succeed)."""
  command = [sys.executable, '-m', 'ddpm_jax.main', '--config=configs/quickstart.py', f'--workdir={workdir}',
             *(f'--config.{key}={value}' for key, value in overrides.items()), *args]
  start = time.perf_counter()
  subprocess.run(command, check=True)
  return time.perf_counter() - start


def weights_path(root: str) -> str:
  """Returns the Inception weights to use: --inception_weights, or the stand-in written once under root."""
  if _INCEPTION_WEIGHTS.value:
    return _INCEPTION_WEIGHTS.value
  from eval_bridge import testing  # pylint: disable=g-import-not-at-top  # torch
  path = os.path.join(root, 'stand_in_inception.pth')
  return path if os.path.exists(path) else testing.write_random_inception_weights(path)


def run_recipe(name: str, root: str, weights: str) -> dict:
  """Returns the recipe's row: training seconds, then its last evaluation's FID and artefact metrics."""
  workdir = os.path.join(root, name)
  overrides = {**RECIPES[name], 'training.num_steps': _TRAIN_STEPS.value}
  train_seconds = cli(workdir, overrides)
  evaluation = {'eval.num_samples': _NUM_SAMPLES.value, 'eval.num_reference': _NUM_SAMPLES.value,
                'eval.batch_size': 250, 'eval.sampling.sampler': 'ddim', 'eval.sampling.num_steps': 50,
                'eval.inception_weights': weights, 'eval.reference_cache_dir': os.path.join(root, 'reference')}
  step = _TRAIN_STEPS.value
  eval_seconds = cli(workdir, {**overrides, **evaluation}, '--mode=eval', f'--checkpoint_step={step}',
                     '--config.eval.metrics=("fid", "artefacts")')
  with open(os.path.join(workdir, 'eval', f'step_{step}.json')) as f:
    result = json.load(f)
  return dict(recipe=name, step=step, train_s=train_seconds, eval_s=eval_seconds, fid=result['fid'],
              **{key: result[key] for key in ARTEFACTS})


def header(command: str) -> list[str]:
  """Returns the command, machine and versions lines of the section."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  return [f'- Command: `{command}`',
          f'- Machine: {platform.platform()}; {machine_info.cpu_model()}, {os.cpu_count()} CPUs; '
          f'load average {machine_info.load_average()}',
          f'- Versions: Python {platform.python_version()}, jax {jax.__version__}, torch {torch.__version__}']


def table(rows: list[dict]) -> list[str]:
  """Returns the markdown table of the rows."""
  lines = ['| recipe | steps | train s | eval s | FID (stand-in) | brightness_gap | color_shift | '
           'dark_fraction_gap | noise_residual |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f'| {r["recipe"]} | {r["step"]} | {r["train_s"]:.0f} | {r["eval_s"]:.0f} | {r["fid"]:.2f} | '
                 f'{r["brightness_gap"]:+.2f} | {r["color_shift"]:.2f} | {r["dark_fraction_gap"]:+.3f} | '
                 f'{r["noise_residual"]:.3f} |')
  return lines


def main(argv):
  del argv
  unknown = [name for name in _RECIPES.value if name not in RECIPES]
  if unknown:
    raise app.UsageError(f'--recipes: unknown {unknown}; known: {", ".join(RECIPES)}')
  root = _ROOT.value
  os.makedirs(root, exist_ok=True)
  weights = weights_path(root)
  rows = [run_recipe(name, root, weights) for name in _RECIPES.value]
  stamp = datetime.datetime.now().isoformat(timespec='seconds')
  lines = [f'## Extended study, CPU smoke figure, {stamp} — quickstart shapes at 16x16, NOT Food-101', '',
           *header(' '.join(['python -m benchmarks.extended_smoke', *sys.argv[1:]])), '',
           f'Each recipe: configs/quickstart.py + its overrides, {_TRAIN_STEPS.value} steps; evaluated at the last '
           f'step on {_NUM_SAMPLES.value} DDIM-50 samples against {_NUM_SAMPLES.value} shapes test images. '
           'FID uses ' + ('the given Inception weights.' if _INCEPTION_WEIGHTS.value else
                          'the stand-in Inception weights (random): it ranks sets, it is no published FID.'),
           '', *table(rows), '',
           'This proves nothing about Food-101: synthetic shapes on a flat background, a tiny model, few steps. '
           'The extended study\'s figures need a GPU (scripts/run_study.sh --extended).', '', '']
  section = '\n'.join(lines)
  print(section)
  with open(_OUTPUT.value, 'a') as f:
    f.write(section)


if __name__ == '__main__':
  app.run(main)
