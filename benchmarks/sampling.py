r"""Sampling throughput (images/s) of our U-Net, DDPM and DDIM, against diffusers' own pipelines.

For each model (--models; default `cifar10`, the 35.7M model at 32x32) and
compute dtype (--dtypes), times `ddpm_jax.core.sampler.make_sample_fn` (the reverse
process as one `lax.scan`, jitted and compiled ahead of time, one warm-up run)
at --batch_size:
  - DDPM, --ddpm_steps (1000) ancestral steps;
  - DDIM (eta = 0), --ddim_steps (100) steps;
and diffusers' DDPMPipeline and DDIMPipeline around UNet2DModel with the same
architecture, bf16 weights (--torch_dtype; torch.compile on CUDA), after ours,
in the same process. Either may time fewer steps
(--ddpm_timed_steps, --ddim_timed_steps) and extrapolate per step: every step
runs the network once at the same batch, and the timed DDPM chain is the same
scan over that many of the schedule's betas. Reports images/s and the time to
--num_samples (50k, as for FID) implied. Rows not started within
--time_budget_s are listed as skipped, a failed row with its error, and a
SIGINT still writes the rows done. Prints a table and appends it to
BENCHMARKS.md with date, machine, versions and the command.

Run from the repository root. On a GPU (the issue's sizes; benchmarks/gpu_run.sh):

  python -m benchmarks.sampling --batch_size=256 --ddpm_timed_steps=200

On a CPU only small rows fit (a reduced U-Net, 10 timed steps; the reference in
float32, as these CPUs only emulate bf16); the table says they are CPU rows,
not the goal figures:

  python -m benchmarks.sampling --base_channels=32 --batch_size=4 --ddpm_timed_steps=10 \
      --ddim_timed_steps=10 --torch_dtype=float32
"""
import datetime
import os
import sys
import time
import traceback

# JAX and torch share the GPU in this process: let JAX's pool grow as needed instead of taking
# 75% of the memory up front, so that the diffusers rows that follow have room.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
# On a CPU shared with other jobs, OpenMP's spin-waiting threads made torch ~30x slower (2.4 s vs
# 0.09 s for one forward pass on 2 loaded cores); passive waiting is set before torch loads.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from benchmarks import torch_reference
from ddpm_jax.core import sampler as sampler_lib
from ddpm_jax.core import schedules
from ddpm_jax.core import train_step
from ddpm_jax.core.models import unet

_MODELS = flags.DEFINE_list('models', ['cifar10'],
                            'Models: cifar10 (32x32, 35.7M params), default (64x64, 63.3M).')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes of our U-Net.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 256, 'Images per sampling batch.')
_DDPM_STEPS = flags.DEFINE_integer('ddpm_steps', 1000, 'DDPM reverse steps reported (T).')
_DDPM_TIMED_STEPS = flags.DEFINE_integer('ddpm_timed_steps', 0, 'DDPM steps actually timed (0 = all).')
_DDIM_STEPS = flags.DEFINE_integer('ddim_steps', 100, 'DDIM reverse steps reported.')
_DDIM_TIMED_STEPS = flags.DEFINE_integer('ddim_timed_steps', 0, 'DDIM steps actually timed (0 = all).')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 50_000, 'Sample count whose time the table implies.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 0, 'Image side for every model (0 = each config\'s).')
_BASE_CHANNELS = flags.DEFINE_integer('base_channels', 0, 'Reduced models for CPUs (0 = each config\'s).')
_TORCH = flags.DEFINE_bool('torch', True, 'Also time diffusers\' pipelines.')
_TORCH_COMPILE = flags.DEFINE_enum('torch_compile', 'auto', torch_reference.COMPILE_CHOICES,
                                   'torch.compile the reference U-Net (auto: on CUDA only; eager if it fails).')
_TORCH_DTYPE = flags.DEFINE_enum('torch_dtype', 'bfloat16', torch_reference.DTYPES,
                                 'The reference\'s weights: bfloat16 (the goal figures) or float32.')
_TIME_BUDGET = flags.DEFINE_float('time_budget_s', 0,
                                  'Skip rows not started within this many seconds (0 = no limit).')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to.')
flags.register_validator('models', lambda names: set(names) <= set(torch_reference.CONFIGS),
                         f'--models: each must be one of {", ".join(torch_reference.CONFIGS)}')
flags.register_validator('dtypes', lambda dtypes: set(dtypes) <= set(torch_reference.DTYPES),
                         f'--dtypes: each must be one of {", ".join(torch_reference.DTYPES)}')

_START = time.monotonic()


def out_of_time() -> bool:
  """Returns whether --time_budget_s has run out (no new rows start then)."""
  return bool(_TIME_BUDGET.value) and time.monotonic() - _START > _TIME_BUDGET.value


def samplers() -> list[tuple[str, int, int]]:
  """Returns (sampler, steps reported, steps timed) for DDPM and DDIM."""
  return [('ddpm', _DDPM_STEPS.value, _DDPM_TIMED_STEPS.value or _DDPM_STEPS.value),
          ('ddim', _DDIM_STEPS.value, _DDIM_TIMED_STEPS.value or _DDIM_STEPS.value)]


def compiled_sampler(config: unet.UNetConfig, name: str, size: int, sampler: str, timed_steps: int, params):
  """Returns (our sampler for timed_steps steps, compiled for (params, rng), compile seconds).

  A DDPM chain of fewer than T steps runs on T = timed_steps subsampled betas: the same scan body.
  """
  full_config = torch_reference.CONFIGS[name].get_config()
  schedule = schedules.make_schedule(full_config.diffusion.schedule, full_config.diffusion.num_timesteps)
  if sampler == 'ddpm' and timed_steps != schedule.num_timesteps:
    schedule = schedules.schedule_from_betas(subsampled_betas(schedule, timed_steps))
  settings = sampler_lib.SamplerSettings(sampler=sampler, num_steps=timed_steps, variance=full_config.sampling.variance,
                                         eta=0.0, clip_denoised=full_config.sampling.clip_denoised)
  sample = sampler_lib.make_sample_fn(unet.UNet(config).apply, schedule, settings,
                                      prediction=full_config.diffusion.prediction)
  shape = (_BATCH_SIZE.value, size, size, 3)
  start = time.perf_counter()
  compiled = jax.jit(lambda p, rng: sample(p, rng, shape)).lower(params, jax.random.key(0)).compile()
  return compiled, time.perf_counter() - start


def subsampled_betas(schedule: schedules.Schedule, count: int) -> np.ndarray:
  """Returns count of the schedule's betas, evenly spaced: a shorter chain whose steps cost the same."""
  indices = np.round(np.linspace(0, schedule.num_timesteps - 1, count)).astype(int)
  return np.asarray(schedule.betas, np.float64)[indices]


def time_ours(config: unet.UNetConfig, name: str, size: int, sampler: str, timed_steps: int, params) -> dict:
  """Returns our row's timings: seconds per step and compile seconds, after one warm-up run."""
  compiled, compile_seconds = compiled_sampler(config, name, size, sampler, timed_steps, params)
  compiled(params, jax.random.key(1)).block_until_ready()
  start = time.perf_counter()
  compiled(params, jax.random.key(2)).block_until_ready()
  seconds = time.perf_counter() - start
  return dict(seconds_per_step=seconds / timed_steps, compile_s=compile_seconds)


def measure_ours(name: str, info: dict, rows: list[dict]) -> None:
  """Returns None; appends our rows for one model to rows: every dtype x sampler."""
  config, size = model_for(name, 'float32')
  params = train_step.init_params(unet.UNet(config), size, seed=0)
  info['ours_params'] = unet.count_params(params)
  for dtype in _DTYPES.value:
    config, _ = model_for(name, dtype)
    for sampler, steps, timed_steps in samplers():
      row = dict(model=name, side='ours (JAX)', compute=dtype, sampler=sampler, steps=steps,
                 timed_steps=timed_steps)
      rows.append(timed_row(row, lambda: time_ours(config, name, size, sampler, timed_steps, params)))


def timed_row(row: dict, measure_fn) -> dict:
  """Returns row with measure_fn()'s timings, or a note saying why there are none."""
  if out_of_time():
    return dict(row, note='skipped: --time_budget_s')
  try:
    row = dict(row, **measure_fn())
    logging.info('%s: %.4f s/step', row, row['seconds_per_step'])
    return row
  except Exception as error:  # pylint: disable=broad-except
    # One failed row (e.g. out of memory) must not lose the rest of a long GPU run.
    traceback.print_exc()
    first_line = str(error).strip().splitlines()[0][:120] if str(error).strip() else ''
    return dict(row, note=f'failed: {type(error).__name__}: {first_line}')


def measure_torch(name: str, info: dict, rows: list[dict]) -> None:
  """Returns None; appends diffusers' rows for one model to rows: DDPMPipeline and DDIMPipeline."""
  config, size = model_for(name, 'float32')
  info['torch_params'] = torch_reference.count_params(
      torch_reference.make_unet(config, size, torch_reference.device()))
  for sampler, steps, timed_steps in samplers() if _TORCH.value else ():
    row = dict(model=name, side='diffusers (PyTorch)', compute=_TORCH_DTYPE.value, sampler=sampler, steps=steps,
               timed_steps=timed_steps)

    def measure_fn(sampler=sampler, timed_steps=timed_steps):
      seconds, how = torch_reference.sample_seconds_per_step(
          config, size, _BATCH_SIZE.value, sampler=sampler, timed_steps=timed_steps,
          compile_choice=_TORCH_COMPILE.value, dtype=_TORCH_DTYPE.value)
      return dict(seconds_per_step=seconds, note=f'{pipeline_name(sampler)}, {how}')
    rows.append(timed_row(row, measure_fn))
  torch_reference.release_memory()


def pipeline_name(sampler: str) -> str:
  """Returns the diffusers pipeline that runs a sampler."""
  return 'DDIMPipeline (eta=0)' if sampler == 'ddim' else 'DDPMPipeline'


def model_for(name: str, dtype: str) -> tuple[unet.UNetConfig, int]:
  """Returns (our U-Net's config, image side) for a model name, with --image_size / --base_channels."""
  return torch_reference.model_config(name, dtype, _IMAGE_SIZE.value, _BASE_CHANNELS.value)


def measure(rows: list[dict], info: dict) -> None:
  """Returns None; fills rows and info, per model ours first (they matter most when time runs out)."""
  for name in _MODELS.value:
    info[name] = {}
    measure_ours(name, info[name], rows)
    measure_torch(name, info[name], rows)


def ratio(row: dict, rows: list[dict]) -> str:
  """Returns ours/diffusers images/s for our rows in the reference's dtype, '' elsewhere."""
  if row['side'] != 'ours (JAX)' or row['compute'] != _TORCH_DTYPE.value or 'seconds_per_step' not in row:
    return ''
  theirs = [r for r in rows if r['side'] != row['side'] and r['model'] == row['model']
            and r['sampler'] == row['sampler'] and 'seconds_per_step' in r]
  return f'{theirs[0]["seconds_per_step"] / row["seconds_per_step"]:.2f}' if theirs else ''


def duration(seconds: float) -> str:
  """Returns seconds as a short human duration."""
  if seconds >= 3600:
    return f'{seconds / 3600:.1f} h'
  return f'{seconds / 60:.1f} min' if seconds >= 60 else f'{seconds:.1f} s'


def table_row(row: dict, rows: list[dict]) -> str:
  """Returns one Markdown table row, with the per-step time extrapolated to all steps."""
  cells = [row['model'], row['side'], row['compute'], row['sampler'].upper(), str(row['steps']),
           str(row['timed_steps'])]
  if 'seconds_per_step' in row:
    per_batch = row['seconds_per_step'] * row['steps']
    images_per_s = _BATCH_SIZE.value / per_batch
    compile_s = f'{row["compile_s"]:.1f}' if 'compile_s' in row else '-'
    cells += [f'{1000 * row["seconds_per_step"]:,.2f}', f'{per_batch:,.2f}', f'{images_per_s:,.2f}',
              duration(_NUM_SAMPLES.value / images_per_s), ratio(row, rows), compile_s]
  else:
    cells += ['-'] * 6
  return '| ' + ' | '.join(cells + [row.get('note', '')]) + ' |'


def report(rows: list[dict], info: dict) -> str:
  """Returns the Markdown section for BENCHMARKS.md."""
  on_cpu = jax.default_backend() == 'cpu'
  cpu_note = ('CPU rows: small sizes for a smoke test, NOT the goal figures (those need a GPU: '
              'benchmarks/gpu_run.sh)' if on_cpu else 'GPU rows')
  models = []
  for name in _MODELS.value:
    config, size = model_for(name, 'float32')
    model_info = info.get(name, {})
    count = lambda key: f'{model_info[key]:,}' if key in model_info else '-'
    models.append(f'- `{name}` at {size}x{size} (base_channels={config.base_channels}): params ours '
                  f'{count("ours_params")}, diffusers {count("torch_params")}')
  lines = [
      f'## Sampling throughput, {datetime.datetime.now().isoformat(timespec="seconds")} — {cpu_note}', '',
      f'- Machine: {torch_reference.machine()}', f'- Versions: {torch_reference.versions()}',
      f'- Command: `python -m benchmarks.sampling {" ".join(sys.argv[1:])}`',
      f'- Batch {_BATCH_SIZE.value}; each row times `timed` steps once after a warm-up run and '
      'extrapolates per step to `steps`; ours = `make_sample_fn` (one `lax.scan`, clipped x0, params '
      f'float32), diffusers = its pipeline with {_TORCH_DTYPE.value} weights; ours/diffusers compares '
      'images/s in the same dtype',
      *models, '',
      f'| model | side | compute | sampler | steps | timed | ms/step | s/batch | images/s | '
      f'time to {_NUM_SAMPLES.value:,} | ours/diffusers | compile s | note |',
      '|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|',
      *[table_row(row, rows) for row in rows]]
  return '\n'.join(lines) + '\n\n'


def main(argv):
  del argv
  rows, info = [], {}
  try:
    measure(rows, info)
  except KeyboardInterrupt:  # benchmarks/gpu_run.sh's timeout sends SIGINT: report what was measured
    traceback.print_exc()
    rows.append(dict(model='-', side='-', compute='-', sampler='-', steps='-', timed_steps='-',
                     note='interrupted (SIGINT): later rows not run'))
  section = report(rows, info)
  print(section)
  with open(_OUTPUT.value, 'a') as f:
    f.write(section)


if __name__ == '__main__':
  app.run(main)
