r"""ADM's U-Net options vs the DDPM network: parameters, train-step memory (XLA's plan) and time, per option and all.

For the study's network (configs/default.py: 64x64, base 128, mults (1, 2, 3, 3), batch 64) and each
variant (--variants: `ddpm`, or `+`-joined `scale_shift` (model.scale_shift_norm), `updown`
(model.resblock_updown), `heads64` (model.num_head_channels=64), `adm_time` (model.time_embedding='adm'),
`classes<K>` (model.num_classes=K); `adm` = all four ADM options), builds the run's jitted train step as
training does (`run.build`: Adam, clipping, EMA, NaN guard) and reports
  - the parameter count;
  - XLA's compiled memory analysis of the step at the study's batch: argument + output + temp - alias
    (compile only, so it works on a CPU at any size; the compiling backend's plan, which approximates a GPU's);
  - with --steps > 0, seconds per step at --time_batch (the study's batch is ~1 min a step on 2 CPU
    cores) after one warm-up step, and the ratio to `ddpm`.
Prints a table and appends it to BENCHMARKS.md with date, machine, versions and the command.

Run from the repository root (~15 min on 2 loaded CPU cores; LLVM's optimisation level changes the code,
not XLA's buffer plan, and level 0 compiles ~2.5x faster, at some cost to the CPU times):

  XLA_FLAGS=--xla_backend_optimization_level=0 nice -n 10 python -m benchmarks.adm_options

A quick check of the script:

  python -m benchmarks.adm_options --variants=ddpm,adm --config.model.base_channels=32 \
      --config.data.image_size=32 --config.training.batch_size=4 --steps=1 --output=/tmp/BENCHMARKS.md
"""
import datetime
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from benchmarks import machine_info
from ddpm_jax.config import convert
from ddpm_jax.core import sharding
from ddpm_jax.core.models.unet import count_params
from ddpm_jax.run import build as components_lib

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/default.py', 'The run config (its keys overridable).')
_VARIANTS = flags.DEFINE_list('variants', ['ddpm', 'scale_shift', 'updown', 'heads64', 'adm_time', 'adm',
                                           'adm+classes101'], 'Variants: ddpm, adm, or +-joined options.')
_STEPS = flags.DEFINE_integer('steps', 2, 'Timed steps per variant at --time_batch (0 = memory analysis only).')
_TIME_BATCH = flags.DEFINE_integer('time_batch', 4, 'Batch of the timed steps.')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to ("" = none).')

GIB = 2.0**30
OPTIONS = {'scale_shift': {'model.scale_shift_norm': True}, 'updown': {'model.resblock_updown': True},
           'heads64': {'model.num_head_channels': 64}, 'adm_time': {'model.time_embedding': 'adm'}}
OPTIONS['adm'] = {key: value for values in OPTIONS.values() for key, value in values.items()}


def variant_values(variant: str) -> dict:
  """Returns the config values of a variant; raises ValueError for an unknown part."""
  values = {}
  for part in [] if variant == 'ddpm' else variant.split('+'):
    if part in OPTIONS:
      values.update(OPTIONS[part])
    elif part.startswith('classes') and part[7:].isdigit():
      values['model.num_classes'] = int(part[7:])
    else:
      raise ValueError(f'--variants: unknown part {part!r} of {variant!r}; use ddpm, or +-joined '
                       f'{", ".join(OPTIONS)}, classes<K>')
  return values


def step_inputs(config, components):
  """Returns (abstract state, abstract batch) of the config's train step."""
  size, batch_size = config.data.image_size, config.training.batch_size
  batch = {'image': jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32,
                                         sharding=sharding.batch_sharded(components.mesh))}
  if config.model.num_classes:
    batch['label'] = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding.batch_sharded(components.mesh))
  return components_lib.abstract_state(config, components), batch


def memory(config) -> dict:
  """Returns the parameter count and XLA's memory analysis (bytes) of the config's compiled train step."""
  components = components_lib.build(config)
  state, batch = step_inputs(config, components)
  start = time.perf_counter()
  stats = components.step_fn.lower(state, batch).compile().memory_analysis()
  result = {'params': count_params(state.params), 'compile_s': time.perf_counter() - start}
  if stats is not None:
    result.update(analysis=stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
                  - stats.alias_size_in_bytes, temp=stats.temp_size_in_bytes)
  return result


def seconds_per_step(config, steps: int) -> float:
  """Returns the seconds of one train step of the config on a real state and a random batch, after one warm-up."""
  components = components_lib.build(config)
  state = components_lib.initial_state(config, components)
  size, batch_size = config.data.image_size, config.training.batch_size
  where = sharding.batch_sharded(components.mesh)
  batch = {'image': jax.device_put(jax.random.uniform(jax.random.key(0), (batch_size, size, size, 3), jnp.float32,
                                                      -1.0, 1.0), where)}
  if config.model.num_classes:
    batch['label'] = jax.device_put(jnp.arange(batch_size, dtype=jnp.int32) % config.model.num_classes, where)
  state, _ = components.step_fn(state, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _ = components.step_fn(state, batch)
  jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps


def measure(variant: str) -> dict:
  """Returns a variant's parameter count, memory analysis and (with --steps) seconds per step."""
  config = convert.with_values(convert.from_configdict(_CONFIG.value), variant_values(variant))
  result = memory(config)
  if _STEPS.value > 0:
    timed = convert.with_values(config, {'training.batch_size': _TIME_BATCH.value})
    result['seconds_per_step'] = seconds_per_step(timed, _STEPS.value)
  return result


def table_row(variant: str, result: dict, ddpm: dict) -> str:
  """Returns one Markdown row: params, analysis, temp and their ratio to ddpm, s/step and its ratio."""
  ratio = lambda key: f'{result[key] / ddpm[key]:.2f}' if key in result and ddpm.get(key) else '-'
  gib = lambda key: f'{result[key] / GIB:.2f}' if key in result else '-'
  seconds = result.get('seconds_per_step')
  cells = [variant, f'{result["params"] / 1e6:.2f}M', ratio('params'), gib('analysis'), ratio('analysis'), gib('temp'),
           f'{seconds:.2f}' if seconds else '-', ratio('seconds_per_step'), f'{result["compile_s"]:.0f}']
  return '| ' + ' | '.join(cells) + ' |'


def header(config) -> list[str]:
  """Returns the section's title and the bullets that say what was measured, where and how."""
  device, model = jax.devices()[0], config.model
  return [
      f'## ADM options vs the DDPM U-Net: train-step memory and time, '
      f'{datetime.datetime.now().isoformat(timespec="seconds")} — {device.platform} ({device.device_kind})', '',
      *machine_info.environment_lines('benchmarks.adm_options'),
      f'- Config: {config.data.image_size}x{config.data.image_size}, batch {config.training.batch_size}, '
      f'base_channels={model.base_channels}, channel_mults={tuple(model.channel_mults)}, '
      f'num_res_blocks={model.num_res_blocks}, attention at {tuple(model.attention_resolutions)}, '
      f'{model.num_heads} heads, {model.dtype}',
      '- Variants: scale_shift = model.scale_shift_norm (AdaGN), updown = model.resblock_updown, heads64 = '
      "model.num_head_channels=64, adm_time = model.time_embedding='adm', adm = all four, classes<K> = "
      'model.num_classes=K',
      '- analysis = XLA memory analysis of the compiled step at the batch above (argument + output + temp - alias) '
      f'on this backend; s/step = mean of {_STEPS.value} step(s) at batch {_TIME_BATCH.value} after one warm-up', '',
      '| variant | params | vs ddpm | analysis GiB | vs ddpm | temp GiB | s/step | vs ddpm | compile s |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|']


def main(argv):
  del argv
  for variant in _VARIANTS.value:
    variant_values(variant)  # a bad name fails now, not after the others' compiles
  results = {}
  for variant in _VARIANTS.value:
    results[variant] = measure(variant)
    print(variant, results[variant], flush=True)
  config = convert.from_configdict(_CONFIG.value)
  lines = header(config) + [table_row(v, results[v], results.get('ddpm', {})) for v in _VARIANTS.value]
  section = '\n'.join(lines + ['', ''])
  print(section)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'a') as f:
      f.write(section)


if __name__ == '__main__':
  app.run(main)
