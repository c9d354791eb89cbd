r"""The sampling cost of classifier-free guidance: seconds per reverse step, guided vs unguided, in one run.

For each model size (--sizes: 'small' = configs/quickstart.py's 1.1M-parameter U-Net at 16 px, 'study' = the
study's 63M-parameter U-Net at 64 px, base 128), times `core.sampler`'s jitted sampler of
  - the unconditional model (model.num_classes=0, no labels: the sampler of before issue 21),
  - the class-conditional model (101 classes, Food-101's) at w = 1: one plain conditional pass a step,
  - the same at w = --scale: one pass of the doubled batch a step (the target: <= 2.05x the w = 1 time),
on batches of --batch_size images and --steps DDIM steps, each compiled ahead of time (compile time apart),
then called --repeats times in turn (unconditional, w = 1, guided, unconditional, ...: a machine whose load
drifts slows all three alike), the median reported. Random weights: the time does not depend on their values.

Prints a table and appends it to BENCHMARKS.md with date, machine, versions and the command:

  nice -n 10 python -m benchmarks.guidance_speed

A quick check of the script: python -m benchmarks.guidance_speed --sizes=small --output=/tmp/BENCHMARKS.md
"""
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time

from absl import app, flags
import jax
import numpy as np

from benchmarks import machine_info
from configs import quickstart, study
from ddpm_jax.config import convert
from ddpm_jax.core import sampler as sampler_lib
from ddpm_jax.core import schedules, train_step
from ddpm_jax.core.models.unet import UNet

_SIZES = flags.DEFINE_list('sizes', ['small', 'study'], "Model sizes: 'small' (quickstart, 16 px), 'study' (64 px).")
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 4, 'Images per sampling batch (the guided pass runs twice this).')
_STEPS = flags.DEFINE_integer('steps', 0, 'DDIM steps per sampling call (0 = the size\'s own: small 50, study 3).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per variant (the median is reported).')
_SCALE = flags.DEFINE_float('scale', 3.0, 'The guidance scale w of the guided variant.')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to.')
NUM_CLASSES = 101  # Food-101's
DEFAULT_STEPS = {'small': 50, 'study': 3}  # calls of ~0.1 s and more: a loaded machine's jitter is a small part


def steps_of(size: str) -> int:
  """Returns the DDIM steps per call of a size: --steps, or the size's own."""
  return _STEPS.value or DEFAULT_STEPS[size]


def model_config(size: str):
  """Returns the typed config of a size ('small' or 'study')."""
  configs = {'small': quickstart, 'study': study}
  if size not in configs:
    raise ValueError(f'--sizes: {size!r} is not a size; valid: {", ".join(configs)}')
  return convert.from_configdict(configs[size].get_config())


def compile_variant(model_config_, image_size: int, guidance, labelled: bool, steps: int) -> dict:
  """Returns {'call': () -> images of one batch (compiled), 'compile': seconds} of one model and guidance."""
  model = UNet(model_config_)
  params = train_step.init_params(model, image_size, seed=0)
  settings = sampler_lib.SamplerSettings(sampler='ddim', num_steps=steps)
  built = sampler_lib.make_sampler(model.apply, schedules.make_schedule('linear', 1000), settings, prediction='eps',
                                   image_size=image_size, guidance=guidance, null_label=model_config_.num_classes)
  shape = (_BATCH_SIZE.value, image_size, image_size, 3)
  labels = (sampler_lib.balanced_labels(_BATCH_SIZE.value, NUM_CLASSES),) if labelled else ()
  start = time.perf_counter()
  compiled = built.sample_fn.lower(params, jax.random.PRNGKey(0), shape, *labels).compile()
  return {'call': lambda: jax.block_until_ready(compiled(params, jax.random.PRNGKey(1), *labels)),
          'compile': time.perf_counter() - start}


def measure(size: str) -> dict:
  """Returns the size's description and {variant: timing} for the unconditional, w = 1 and guided samplers."""
  config = model_config(size)
  conditional = dataclasses.replace(config.model, num_classes=NUM_CLASSES)
  image_size, steps = config.data.image_size, steps_of(size)
  rows = {
      'unconditional': compile_variant(config.model, image_size, sampler_lib.Guidance(), False, steps),
      'w = 1': compile_variant(conditional, image_size, sampler_lib.Guidance(), True, steps),
      f'w = {_SCALE.value:g}': compile_variant(conditional, image_size, sampler_lib.Guidance(_SCALE.value), True,
                                                steps),
  }
  seconds = {name: [] for name in rows}
  for row in rows.values():
    row['call']()  # a first call apart: allocations, thread pools
  for _ in range(_REPEATS.value):
    for name, row in rows.items():
      start = time.perf_counter()
      row['call']()
      seconds[name].append(time.perf_counter() - start)
  for name, row in rows.items():
    row['step'] = statistics.median(seconds[name]) / steps
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
      jax.eval_shape(lambda: train_step.init_params(UNet(config.model), image_size, 0))))
  print(size, {name: (row['step'], row['compile']) for name, row in rows.items()})
  return {'size': f'{size}: {image_size} px, base {config.model.base_channels}, {count / 1e6:.1f}M params',
          'steps': steps, 'rows': rows}


def versions() -> str:
  """Returns the versions the measurement ran on."""
  import flax  # pylint: disable=g-import-not-at-top
  return f'Python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, numpy {np.__version__}'


def report(results: list[dict]) -> str:
  """Returns the Markdown section for BENCHMARKS.md."""
  stamp = datetime.datetime.now().isoformat(timespec='seconds')
  guided = f'w = {_SCALE.value:g}'
  steps = ', '.join(f'{result["size"].split(":")[0]} {result["steps"]}' for result in results)
  lines = [
      f'## Sampling cost of classifier-free guidance, {stamp}', '',
      f'- Machine: {platform.platform()}; {machine_info.cpu_model()}; {os.cpu_count()} CPUs '
      f'({len(os.sched_getaffinity(0))} usable); JAX on {jax.devices()[0].platform}; load average '
      f'{machine_info.load_average()}',
      f'- Versions: {versions()}', f'- Command: `python -m benchmarks.guidance_speed {" ".join(sys.argv[1:])}`',
      f'- DDIM ({steps} steps a call), batches of {_BATCH_SIZE.value}, median of {_REPEATS.value} calls in turn, '
      f'compiled ahead of time; class-conditional models have {NUM_CLASSES} classes; random weights', '',
      f'| model | sampler | s per step | x unconditional | x w = 1 | compile s |', '|---|---|---:|---:|---:|---:|']
  for result in results:
    rows = result['rows']
    for name, row in rows.items():
      lines.append(f'| {result["size"]} | {name} | {row["step"]:.4f} | '
                   f'{row["step"] / rows["unconditional"]["step"]:.2f}x | {row["step"] / rows["w = 1"]["step"]:.2f}x | '
                   f'{row["compile"]:.1f} |')
  ratios = ', '.join(f'{r["size"].split(":")[0]} {r["rows"][guided]["step"] / r["rows"]["w = 1"]["step"]:.2f}x'
                     for r in results)
  lines += ['', f'Guided ({guided}, one pass of the doubled batch a step) over w = 1 per step: {ratios} '
            '(target <= 2.05x).']
  return '\n'.join(lines) + '\n\n'


def main(argv):
  del argv
  for size in _SIZES.value:
    model_config(size)  # a bad size fails before any timing
  section = report([measure(size) for size in _SIZES.value])
  print(section)
  with open(_OUTPUT.value, 'a') as f:
    f.write(section)


if __name__ == '__main__':
  app.run(main)
