r"""Seconds per 1,000 evaluation samples and the FID of each sampler at its usual step count.

On a trained quickstart model (configs/quickstart.py: 16x16 shapes, a 1.1M-parameter
U-Net), times and scores --samplers (default: DPM-Solver++(2M) at 20 steps, DDIM at 100,
DDPM at all 1000), each sampling --num_samples images in batches of --batch_size as an
evaluation does (each batch's noise from `keys.eval_key`; DDIM with --ddim_eta and
--timestep_spacing). Sampling is compiled ahead of time (compile seconds reported apart)
and timed alone; the samples' Inception features then give each sampler's FID against
--num_reference images of the shapes test split, and its FID to the first sampler's
samples (how far apart the samplers' outputs are). Inception is the stand-in from
eval_bridge/testing.py unless --inception_weights names real weights: offline, with
FIDs that rank sets like the real ones but are not comparable to published numbers.

--workdir is reused when it holds a checkpoint; otherwise (or with none given: a temp
dir) --train_steps of configs/quickstart.py train there first, through the CLI.
Prints a table and appends it to BENCHMARKS.md with date, machine, versions and the
command. Run from the repository root; on 2 CPU cores the full run takes tens of minutes
(DDPM's 1,000 steps dominate):

  python -m benchmarks.sampler_speed --workdir=/tmp/sampler_speed_quickstart

A quick check of the script (minutes):

  python -m benchmarks.sampler_speed --train_steps=20 --num_samples=16 --batch_size=8 --num_reference=64 \
      --samplers=dpmpp_2m:5,ddim:10 --output=/tmp/BENCHMARKS.md
"""
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time

# torch shares the CPU with JAX here: passive OpenMP waiting keeps it from spinning (see benchmarks/sampling.py).
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

from absl import app
from absl import flags
import jax
import numpy as np
import torch  # before TensorFlow (which the data pipeline loads): ddpm_jax.main.preload_torch_stack's reason

from benchmarks import machine_info
from ddpm_jax.config import convert
from ddpm_jax.core import diffusion, keys
from ddpm_jax.evaluation import scores as evaluation_lib
from ddpm_jax.run import build as components_lib
from ddpm_jax.run import modes
from ddpm_jax.run import workdir as workdir_lib
from eval_bridge import convert, fidelity, testing

_WORKDIR = flags.DEFINE_string('workdir', '', 'A quickstart workdir to reuse or train into ("" = a temp dir).')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 500, 'Steps of configs/quickstart.py to train when it must.')
_SAMPLERS = flags.DEFINE_list('samplers', ['dpmpp_2m:20', 'ddim:100', 'ddpm:1000'], 'sampler:steps, each.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1000, 'Samples per sampler (time is reported per 1,000).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 250, 'Images per sampling batch.')
_NUM_REFERENCE = flags.DEFINE_integer('num_reference', 1000, 'Reference images of the shapes test split.')
_DDIM_ETA = flags.DEFINE_float('ddim_eta', 0.0, "DDIM's eta (quickstart's own sampling.eta is 1.0, for grids).")
_SPACING = flags.DEFINE_enum('timestep_spacing', 'leading', diffusion.TIMESTEP_SPACINGS, "DDIM's timesteps.")
_INCEPTION_WEIGHTS = flags.DEFINE_string('inception_weights', '', 'Inception weights ("" = the stand-in).')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to.')


def parse_samplers(specs: list[str]) -> list[tuple[str, int]]:
  """Returns [(sampler, steps)] of 'sampler:steps' specs; ValueError naming a bad one."""
  parsed = []
  for spec in specs:
    name, _, steps = spec.partition(':')
    if name not in diffusion.SAMPLERS or not steps.isdigit():
      raise ValueError(f'--samplers: {spec!r} is not sampler:steps; samplers: {", ".join(diffusion.SAMPLERS)}')
    parsed.append((name, int(steps)))
  return parsed


def ensure_trained(workdir: str) -> str:
  """Returns how the workdir's model came to be; trains --train_steps of quickstart there first if it has none."""
  if os.path.isdir(os.path.join(workdir, 'checkpoints')) and os.listdir(os.path.join(workdir, 'checkpoints')):
    return f'reused {workdir}'
  command = [sys.executable, '-m', 'ddpm_jax.main', '--config=configs/quickstart.py', f'--workdir={workdir}',
             f'--config.training.num_steps={_TRAIN_STEPS.value}']
  start = time.perf_counter()
  subprocess.run(command, check=True)
  return f'trained by `{" ".join(command[1:])}` ({time.perf_counter() - start:.0f} s)'


def eval_config(config, sampler: str, steps: int, cache_dir: str, weights: str):
  """Returns a copy of the run's config whose evaluation samples with (sampler, steps) and scores FID offline."""
  return convert.with_values(config, {
      'eval.sampling.sampler': sampler, 'eval.sampling.num_steps': steps,
      'eval.sampling.timestep_spacing': _SPACING.value, 'eval.sampling.eta': _DDIM_ETA.value,
      'eval.num_samples': _NUM_SAMPLES.value, 'eval.batch_size': _BATCH_SIZE.value,
      'eval.num_reference': _NUM_REFERENCE.value, 'eval.metrics': ('fid',), 'eval.inception_weights': weights,
      'eval.reference_cache_dir': cache_dir})


def sample_timed(sampler, params, rng) -> tuple[list, float, float]:
  """Returns (the batches of --num_samples images, sampling seconds, compile seconds); compiled ahead of time."""
  shape = (_BATCH_SIZE.value, sampler.image_size, sampler.image_size, 3)
  start = time.perf_counter()
  compiled = sampler.sample_fn.lower(params, keys.eval_key(rng, 0), shape).compile()
  compile_seconds = time.perf_counter() - start
  batches, seconds = [], 0.0
  for index, first in enumerate(range(0, _NUM_SAMPLES.value, _BATCH_SIZE.value)):
    start = time.perf_counter()
    batch = jax.block_until_ready(compiled(params, keys.eval_key(rng, index)))
    seconds += time.perf_counter() - start
    batches.append(batch[:_NUM_SAMPLES.value - first])
  return batches, seconds, compile_seconds


def features_of(extractor, batches) -> np.ndarray:
  """Returns the Inception features of the batches of images in [-1, 1]."""
  accumulator = fidelity.FeatureAccumulator(extractor, batch_size=64, progress=False)
  for batch in batches:
    accumulator.update(convert.to_torch_uint8_nchw(batch))
  return accumulator.features()


def measure(workdir: str, weights: str, cache_dir: str) -> list[dict]:
  """Returns one row per sampler: seconds per 1,000 samples, compile seconds, FID, FID to the first's samples."""
  config = workdir_lib.load_config(workdir)
  specs = parse_samplers(_SAMPLERS.value)
  run = modes.open_trained_run(eval_config(config, *specs[0], cache_dir, weights), workdir)
  state = run.restore()
  evaluation = evaluation_lib.Evaluation(run.config, run.components)
  reference = evaluation.reference()
  rows, first_statistics = [], None
  for sampler_name, steps in specs:
    cfg = eval_config(config, sampler_name, steps, cache_dir, weights)
    c = run.components
    sampler = components_lib.make_sampler(cfg, c.model, c.schedule, c.mesh, cfg.eval.sampling)
    batches, seconds, compile_seconds = sample_timed(sampler, state.ema_params, state.rng)
    statistics = fidelity.fid_statistics(features_of(evaluation.extractor, batches))
    first_statistics = first_statistics or statistics
    rows.append(dict(sampler=evaluation_lib.sampler_summary(evaluation_lib.settings(cfg)),
                     per_1000=seconds * 1000 / _NUM_SAMPLES.value, compile=compile_seconds,
                     fid=fidelity.fid_from_statistics(statistics, reference.statistics),
                     to_first=fidelity.fid_from_statistics(statistics, first_statistics), step=int(state.step)))
    print(rows[-1])
  return rows


def machine() -> str:
  """Returns the platform, CPU model and count, accelerator and load average."""
  gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU for torch'
  return (f'{platform.platform()}; {machine_info.cpu_model()}; {os.cpu_count()} CPUs '
          f'({len(os.sched_getaffinity(0))} usable); {gpu}; JAX on {jax.devices()[0].platform}; '
          f'load average {machine_info.load_average()}')


def versions() -> str:
  """Returns the versions of the libraries sampling and scoring run on."""
  import flax  # pylint: disable=g-import-not-at-top
  import torch_fidelity  # pylint: disable=g-import-not-at-top
  return (f'Python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, '
          f'torch {torch.__version__}, torch-fidelity {torch_fidelity.__version__}, numpy {np.__version__}')


def report(rows: list[dict], origin: str, weights: str) -> str:
  """Returns the Markdown section for BENCHMARKS.md."""
  first = rows[0]['sampler']
  lines = [
      f'## Sampler speed and FID (quickstart model), {datetime.datetime.now().isoformat(timespec="seconds")}', '',
      f'- Machine: {machine()}', f'- Versions: {versions()}',
      f'- Command: `python -m benchmarks.sampler_speed {" ".join(sys.argv[1:])}`',
      f'- Model: configs/quickstart.py at step {rows[0]["step"]:,}, EMA params, {origin}',
      f'- {_NUM_SAMPLES.value} samples per sampler in batches of {_BATCH_SIZE.value}; FID against '
      f'{_NUM_REFERENCE.value} shapes test images with {weights or "stand-in (random) Inception weights"}', '',
      f'| sampler | s per 1,000 samples | compile s | FID | FID − first | FID to {first}\'s samples |',
      '|---|---:|---:|---:|---:|---:|']
  for row in rows:
    lines.append(f'| {row["sampler"]} | {row["per_1000"]:,.1f} | {row["compile"]:.1f} | {row["fid"]:.3f} | '
                 f'{row["fid"] - rows[0]["fid"]:+.3f} | {row["to_first"]:.3f} |')
  return '\n'.join(lines) + '\n\n'


def main(argv):
  del argv
  scratch = tempfile.mkdtemp(prefix='sampler_speed_')
  workdir = _WORKDIR.value or os.path.join(scratch, 'quickstart')
  parse_samplers(_SAMPLERS.value)  # a bad spec fails before any training
  weights = _INCEPTION_WEIGHTS.value or testing.write_random_inception_weights(os.path.join(scratch, 'inception.pth'))
  origin = ensure_trained(workdir)
  rows = measure(workdir, weights, os.path.join(scratch, 'reference_cache'))
  section = report(rows, origin, _INCEPTION_WEIGHTS.value)
  print(section)
  with open(_OUTPUT.value, 'a') as f:
    f.write(section)


if __name__ == '__main__':
  app.run(main)
