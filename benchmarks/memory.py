r"""The train step's memory and time per variant: plain, remat, gradient accumulation, float16, bfloat16.

For a config (--config, configs/default.py unless told: the study's 63.3M-parameter
U-Net at 64x64, batch 64; override any key, e.g. --config.training.batch_size=8) and
each variant (--variants: `plain`, or `+`-joined parts `remat`, `accum<k>`,
`float16`, `bfloat16`), builds the run's jitted train step as training does
(`components.build`: Adam, clipping, EMA, NaN guard, loss scaling under float16) and
reports
  - XLA's compiled memory analysis of the step: argument + output + temp - alias bytes
    (compile only: works on a CPU for any size; it is the compiling backend's plan, so a
    CPU's figure approximates a GPU's);
  - on a GPU, the measured peak (`memory_stats()['peak_bytes_in_use']`) over warm-up and
    timed steps, each variant in its own process so the peaks are its own;
  - with --steps > 0, the seconds per step after --warmup_steps, and their ratio to `plain`.
Prints a table and appends it to BENCHMARKS.md with date, machine, versions and the command.

A CPU's plan is not a GPU's: XLA:CPU computes float16/bfloat16 convolutions in float32 (the
converted copies make those variants look larger), and its schedule keeps remat's recomputed
activations alive (remat looks free of effect). Accumulation's saving shows on both.

Run from the repository root. The default config's memory, compile only (~4 min on 2 CPU
cores for 12 variants; LLVM's optimisation level changes the code, not XLA's buffer plan):

  XLA_FLAGS=--xla_backend_optimization_level=0 python -m benchmarks.memory --steps=0

On a GPU, memory and time of the default config (the issue's 11 GB goal):

  python -m benchmarks.memory --steps=5

Times on a CPU need a small model:

  python -m benchmarks.memory --config.model.base_channels=32 --config.data.image_size=32 \
      --config.training.batch_size=8 --steps=3
"""
import datetime
import json
import subprocess
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from benchmarks import machine_info
from ddpm_jax.config import convert
from ddpm_jax.core import sharding
from ddpm_jax.run import build as components_lib

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/default.py', 'The run config (its keys overridable).')
_VARIANTS = flags.DEFINE_list('variants', ['plain', 'remat', 'accum2', 'accum4', 'remat+accum2', 'float16', 'bfloat16'],
                              'Variants: plain, or +-joined remat, accum<k>, float16, bfloat16.')
_STEPS = flags.DEFINE_integer('steps', 0, 'Timed steps per variant (0 = memory analysis only: compile, no run).')
_WARMUP_STEPS = flags.DEFINE_integer('warmup_steps', 1, 'Untimed steps before the timed ones.')
_BUDGET_GIB = flags.DEFINE_float('budget_gib', 10.0, 'The memory goal: variants within it are marked.')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to ("" = none).')
_CHILD = flags.DEFINE_string('child', '', 'Internal: measure this one variant and print its result as JSON.')

GIB = 2.0**30
_RESULT = 'RESULT '


def apply_variant(config, variant: str):
  """Returns a copy of config with the variant's overrides; raises ValueError for an unknown part."""
  values = {}
  for part in [] if variant == 'plain' else variant.split('+'):
    if part == 'remat':
      values['model.remat'] = True
    elif part in ('float16', 'bfloat16'):
      values['model.dtype'] = part
    elif part.startswith('accum') and part[5:].isdigit():
      values['training.grad_accum_steps'] = int(part[5:])
    else:
      raise ValueError(f'--variants: unknown part {part!r} of {variant!r}; use plain, or +-joined remat, '
                       'accum<k>, float16, bfloat16')
  return convert.with_values(convert.from_configdict(config), values)


def analysed_step(config, components):
  """Returns (the compiled train step, its memory analysis in bytes) for the config, from abstract inputs."""
  state = components_lib.abstract_state(config, components)
  size, batch_size = config.data.image_size, config.training.batch_size
  batch = {'image': jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32,
                                         sharding=sharding.batch_sharded(components.mesh))}
  compiled = components.step_fn.lower(state, batch).compile()
  stats = compiled.memory_analysis()
  if stats is None:
    return compiled, {}
  total = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
           - stats.alias_size_in_bytes)
  return compiled, dict(analysis=total, temp=stats.temp_size_in_bytes, arguments=stats.argument_size_in_bytes)


def timed_steps(config, components, compiled, steps: int, warmup_steps: int) -> dict:
  """Returns {'seconds_per_step', 'peak' (GPU only)} of the compiled step on a real state and a random batch."""
  state = components_lib.initial_state(config, components)
  size, batch_size = config.data.image_size, config.training.batch_size
  images = jax.random.uniform(jax.random.key(0), (batch_size, size, size, 3), jnp.float32, -1.0, 1.0)
  batch = {'image': jax.device_put(images, sharding.batch_sharded(components.mesh))}
  for _ in range(warmup_steps):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  result = dict(seconds_per_step=(time.perf_counter() - start) / steps)
  memory = jax.devices()[0].memory_stats()  # None on a CPU
  if memory and 'peak_bytes_in_use' in memory:
    result['peak'] = memory['peak_bytes_in_use']
  return result


def measure_child(variant: str) -> dict:
  """Returns one variant's measurements (this process measures nothing else, so a GPU peak is its own)."""
  config = apply_variant(_CONFIG.value, variant)
  components = components_lib.build(config)
  start = time.perf_counter()
  compiled, result = analysed_step(config, components)
  result['compile_s'] = time.perf_counter() - start
  if _STEPS.value > 0:
    result.update(timed_steps(config, components, compiled, _STEPS.value, _WARMUP_STEPS.value))
  return result


def measure(variant: str) -> dict:
  """Returns a variant's measurements, taken in a fresh process; {'note': why} when it failed."""
  argv = [arg for arg in sys.argv[1:] if not arg.startswith(('--variants', '--child', '--output'))]
  result = subprocess.run([sys.executable, '-m', 'benchmarks.memory', *argv, f'--child={variant}', '--output='],
                          capture_output=True, text=True, check=False)
  lines = [line for line in result.stdout.splitlines() if line.startswith(_RESULT)]
  if result.returncode or not lines:
    last = (result.stderr.strip().splitlines() or ['no output'])[-1][:160]
    return {'note': f'failed (exit {result.returncode}): {last}'}
  return json.loads(lines[-1][len(_RESULT):])


def within_budget(result: dict) -> str:
  """Returns 'yes' or 'no' by the measured peak where there is one, else by the compiler's plan ('-': neither)."""
  judged = result.get('peak', result.get('analysis'))
  return '-' if judged is None else ('yes' if judged <= _BUDGET_GIB.value * GIB else 'no')


def table_row(variant: str, result: dict, plain: dict) -> str:
  """Returns one Markdown row: analysis, measured peak, within the budget, s/step and its ratio to plain."""
  gib = lambda key: f'{result[key] / GIB:.3g}' if key in result else '-'
  seconds = result.get('seconds_per_step')
  ratio = f'{seconds / plain["seconds_per_step"]:.2f}' if seconds and plain.get('seconds_per_step') else '-'
  cells = [variant, gib('analysis'), gib('temp'), gib('peak'), within_budget(result),
           f'{seconds:.3f}' if seconds else '-', ratio,
           f'{result["compile_s"]:.0f}' if 'compile_s' in result else '-', result.get('note', '')]
  return '| ' + ' | '.join(cells) + ' |'


def header(config) -> list[str]:
  """Returns the section's title and the bullets that say what was measured, where and how."""
  device = jax.devices()[0]
  model = config.model
  return [
      f'## Train-step memory per variant, {datetime.datetime.now().isoformat(timespec="seconds")} — '
      f'{device.platform} ({device.device_kind})', '',
      *machine_info.environment_lines('benchmarks.memory'),
      f'- Config: {config.data.image_size}x{config.data.image_size}, batch {config.training.batch_size}, '
      f'base_channels={model.base_channels}, channel_mults={tuple(model.channel_mults)}, '
      f'num_res_blocks={model.num_res_blocks}, attention at {tuple(model.attention_resolutions)}; '
      'params, EMA and Adam in float32',
      '- analysis = XLA memory analysis of the compiled step (argument + output + temp - alias), on this '
      'backend; peak = measured peak_bytes_in_use (GPU only, one process per variant); within = at most '
      f'{_BUDGET_GIB.value:g} GiB (the peak where measured); s/step after {_WARMUP_STEPS.value} warm-up step(s) '
      f'over {_STEPS.value} timed', '',
      '| variant | analysis GiB | temp GiB | peak GiB | within | s/step | time vs plain | compile s | note |',
      '|---|---:|---:|---:|---|---:|---:|---:|---|']


def main(argv):
  del argv
  if _CHILD.value:
    print(_RESULT + json.dumps(measure_child(_CHILD.value)), flush=True)
    return
  for variant in _VARIANTS.value:
    apply_variant(_CONFIG.value, variant)  # a bad name fails now, not after the others' compiles
  results = {}
  for variant in _VARIANTS.value:
    results[variant] = measure(variant)
    print(variant, results[variant], flush=True)
  fitting = [variant for variant in _VARIANTS.value if within_budget(results[variant]) == 'yes']
  lines = header(_CONFIG.value) + [table_row(v, results[v], results.get('plain', {})) for v in _VARIANTS.value]
  lines += ['', f'Within {_BUDGET_GIB.value:g} GiB: {", ".join(fitting) or "none"}.', '', '']
  section = '\n'.join(lines)
  print(section)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'a') as f:
      f.write(section)


if __name__ == '__main__':
  app.run(main)
