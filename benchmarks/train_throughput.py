r"""Train-step throughput (images/s) and MFU of our U-Net, against diffusers' UNet2DModel in PyTorch.

For each model (--models: `default` = configs/default.py at 64x64, 63.3M params;
`cifar10` = configs/cifar10_ddpm.py at 32x32, the 35.7M model), each compute
dtype (--dtypes; params stay float32) and each batch size (--batch_sizes), times
`ddpm_jax.core.train_step.make_train_step` (timestep and noise draw, loss, grads, Adam
with clipping, EMA, the NaN guard) on a 1-D data mesh:
  - input reused: one device batch fed to every step;
  - input fed: each step converts a host uint8 batch from an in-memory array to
    float32 in [-1, 1] and places it with `sharding.global_batch`, as the
    training loop does (host→device transfer every step).
Steps are timed after --warmup_steps, with one block_until_ready at the end of
the window. FLOPs per image come from XLA's cost analysis of the lowered step
(the HLO before optimisation, where convolutions are still convolutions);
MFU = FLOPs/image × images/s / peak, where the peak is measured on the same
device by a large matmul (bf16 on a GPU; fp32 on a CPU), and, for H100/H200,
also against the datasheet's 989 TFLOP/s dense bf16.

The reference (--torch): diffusers' UNet2DModel with the same channels, levels,
res blocks, attention resolutions, heads, dropout and groups (equal parameter
counts), trained on DDPMScheduler.add_noise + MSE on eps + AdamW (fused on
CUDA), bf16 autocast (--torch_dtype), channels_last, torch.compile (on CUDA;
--torch_compile). Per model our rows run first, then the reference's, in one
process. Rows not started within --time_budget_s are listed as skipped, a row
that fails is listed with its error, and a SIGINT still writes the rows done.
Prints a table and appends it to BENCHMARKS.md with date, machine, versions
and the command.

Run from the repository root. On a GPU (the issue's sizes; see benchmarks/gpu_run.sh):

  python -m benchmarks.train_throughput --models=cifar10,default --batch_sizes=128,256

On a CPU only small rows fit (a reduced U-Net; bf16 is emulated on CPUs
without AVX512-BF16, so the reference runs in float32); the table says they
are CPU rows, not the goal figures:

  python -m benchmarks.train_throughput --models=cifar10 --base_channels=32 --batch_sizes=4 \
      --steps=3 --warmup_steps=1 --torch_dtype=float32
  python -m benchmarks.train_throughput --models=cifar10 --dtypes=float32 --batch_sizes=2 \
      --steps=2 --warmup_steps=1 --notorch
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
import jax.numpy as jnp
import numpy as np

from benchmarks import torch_reference
from ddpm_jax.core import schedules
from ddpm_jax.core import sharding
from ddpm_jax.core import train_step
from ddpm_jax.core.models import unet

_MODELS = flags.DEFINE_list('models', ['cifar10', 'default'],
                            'Models: cifar10 (32x32, 35.7M params), default (64x64, 63.3M).')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes of our U-Net.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['128', '256'], 'Global batch sizes.')
_TORCH_BATCH_SIZES = flags.DEFINE_list('torch_batch_sizes', None,
                                       'Batch sizes for diffusers (default: --batch_sizes).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps per row.')
_WARMUP_STEPS = flags.DEFINE_integer('warmup_steps', 3, 'Untimed steps before each timed window.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 0, 'Image side for every model (0 = each config\'s).')
_BASE_CHANNELS = flags.DEFINE_integer('base_channels', 0, 'Reduced models for CPUs (0 = each config\'s).')
_TORCH = flags.DEFINE_bool('torch', True,
                           'Also time the diffusers reference (its params and FLOPs are always counted).')
_TORCH_COMPILE = flags.DEFINE_enum('torch_compile', 'auto', torch_reference.COMPILE_CHOICES,
                                   'torch.compile the reference (auto: on CUDA only; eager if it fails).')
_TORCH_DTYPE = flags.DEFINE_enum('torch_dtype', 'bfloat16', torch_reference.DTYPES,
                                 'The reference\'s compute: bf16 autocast (the goal figures) or float32.')
_PEAK_SIZE = flags.DEFINE_integer('peak_matmul_size', 0,
                                  'Side of the peak matmul (0 = 8192 on GPU, 2048 on CPU).')
_TIME_BUDGET = flags.DEFINE_float('time_budget_s', 0,
                                  'Skip rows not started within this many seconds (0 = no limit).')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to.')
flags.register_validator('models', lambda names: set(names) <= set(torch_reference.CONFIGS),
                         f'--models: each must be one of {", ".join(torch_reference.CONFIGS)}')
flags.register_validator('dtypes', lambda dtypes: set(dtypes) <= set(torch_reference.DTYPES),
                         f'--dtypes: each must be one of {", ".join(torch_reference.DTYPES)}')

# Dense bf16 TFLOP/s from NVIDIA's datasheets, by a substring of jax's device_kind.
DATASHEET_BF16_TFLOPS = {'H200': 989.0, 'H100 PCIe': 756.0, 'H100 NVL': 835.0, 'H100': 989.0}
_HOST_BATCHES = 8  # distinct host batches the fed input cycles through
_START = time.monotonic()


def out_of_time() -> bool:
  """Returns whether --time_budget_s has run out (no new rows start then)."""
  return bool(_TIME_BUDGET.value) and time.monotonic() - _START > _TIME_BUDGET.value


def on_cpu() -> bool:
  """Returns whether JAX runs on the CPU (rows then are not the goal figures)."""
  return jax.default_backend() == 'cpu'


def measured_peak_flops(size: int, reps: int) -> tuple[float, str]:
  """Returns (FLOP/s of a size x size matmul on JAX's first device, what was measured)."""
  dtype = jnp.float32 if on_cpu() else jnp.bfloat16
  a, b = jax.random.normal(jax.random.key(0), (2, size, size), dtype)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  start = time.perf_counter()
  for _ in range(reps):
    out = matmul(a, b)
  out.block_until_ready()
  return 2 * size**3 * reps / (time.perf_counter() - start), f'{jnp.dtype(dtype).name} {size}x{size} matmul'


def datasheet_peak_flops() -> float | None:
  """Returns the datasheet's dense bf16 FLOP/s of JAX's device, None where not listed."""
  kind = jax.devices()[0].device_kind
  for name, tflops in DATASHEET_BF16_TFLOPS.items():
    if name in kind:
      return tflops * 1e12
  return None


def to_model_input(images: np.ndarray) -> dict[str, np.ndarray]:
  """Returns {'image': float32 in [-1, 1]}, as ddpm_jax/data/loader.py (not imported: it needs grain)."""
  scaled = images.astype(np.float32)
  scaled /= np.float32(127.5)
  scaled -= np.float32(1.0)
  return {'image': scaled}


def host_images(batch_size: int, image_size: int) -> np.ndarray:
  """Returns uint8 [_HOST_BATCHES, batch, H, W, 3] random images held in host memory."""
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (_HOST_BATCHES, batch_size, image_size, image_size, 3), np.uint8)


def make_step(config: unet.UNetConfig, name: str):
  """Returns (the jitted train step for our U-Net, the optimizer), with the named config's training keys."""
  full_config = torch_reference.CONFIGS[name].get_config()
  t, d = full_config.training, full_config.diffusion
  schedule = schedules.make_schedule(d.schedule, d.num_timesteps)
  optimizer = train_step.make_optimizer(t.learning_rate, t.warmup_steps, t.grad_clip)
  step = train_step.make_train_step(unet.UNet(config).apply, schedule, optimizer,
                                    train_step.Objective(loss=d.loss, prediction=d.prediction, ema_decay=t.ema_decay))
  return step, optimizer


def forward_flops_per_image(config: unet.UNetConfig, image_size: int, params) -> float:
  """Returns XLA's cost-analysis FLOPs of one eval-mode forward pass per image (batch 8)."""
  x = jnp.zeros((8, image_size, image_size, 3))
  forward = jax.jit(lambda p, x: unet.UNet(config).apply({'params': p}, x, jnp.zeros((8,), jnp.int32)))
  return forward.lower(params, x).cost_analysis()['flops'] / 8


def run_steps(compiled, state, next_batch, steps: int):
  """Returns (state after `steps` steps, seconds), synchronising only at the end."""
  jax.block_until_ready(state)
  start = time.perf_counter()
  for i in range(steps):
    state, _ = compiled(state, next_batch(i))
  jax.block_until_ready(state)
  return state, time.perf_counter() - start


def time_batch_size(step, state, mesh, config: unet.UNetConfig, image_size: int, batch_size: int):
  """Returns (state, rows for reused and fed input) of our step compiled at one batch size."""
  host = host_images(batch_size, image_size)
  fed = lambda i: sharding.global_batch(to_model_input(host[i % _HOST_BATCHES]), mesh)
  device_batch = fed(0)
  start = time.perf_counter()
  lowered = step.lower(state, device_batch)
  # The HLO before optimisation: on a GPU, convolutions become cuDNN custom calls afterwards.
  train_flops = lowered.cost_analysis()['flops'] / batch_size
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - start
  logging.info('%s batch %d compiled in %.1f s; timing', config.dtype, batch_size, compile_seconds)
  rows = []
  for name, next_batch in (('reused', lambda i: device_batch), ('fed', fed)):
    state, _ = run_steps(compiled, state, next_batch, _WARMUP_STEPS.value)
    state, seconds = run_steps(compiled, state, next_batch, _STEPS.value)
    rows.append(dict(input=name, images_per_s=batch_size * _STEPS.value / seconds, compile_s=compile_seconds,
                     train_flops=train_flops))
    logging.info('ours %s batch %d %s: %.1f images/s', config.dtype, batch_size, name, rows[-1]['images_per_s'])
  return state, rows


def failure(error: Exception) -> str:
  """Returns a one-line note for a row that raised."""
  first_line = str(error).strip().splitlines()[0][:120] if str(error).strip() else ''
  return f'failed: {type(error).__name__}: {first_line}'


def model_for(name: str, dtype: str) -> tuple[unet.UNetConfig, int]:
  """Returns (our U-Net's config, image side) for a model name, with --image_size / --base_channels."""
  return torch_reference.model_config(name, dtype, _IMAGE_SIZE.value, _BASE_CHANNELS.value)


def measure_ours(name: str, info: dict, rows: list[dict]) -> None:
  """Returns None; appends our rows for one model to rows: every dtype x batch size x input."""
  config, size = model_for(name, 'float32')
  mesh = sharding.make_mesh()
  params = train_step.init_params(unet.UNet(config), size, seed=0)
  info.update(ours_params=unet.count_params(params), forward_flops=forward_flops_per_image(config, size, params))
  state = None
  for dtype in _DTYPES.value:
    config, _ = model_for(name, dtype)
    step, optimizer = make_step(config, name)
    for batch_size in map(int, _BATCH_SIZES.value):
      row = dict(model=name, side='ours (JAX)', compute=dtype, batch=batch_size)
      if out_of_time():
        rows.append(dict(row, note='skipped: --time_budget_s'))
        continue
      if state is None or is_deleted(state):  # a step that failed after its state was donated
        state = sharding.replicate(train_step.create_train_state(params, optimizer, jax.random.key(0)), mesh)
      try:
        state, new_rows = time_batch_size(step, state, mesh, config, size, batch_size)
        rows += [dict(row, **new_row) for new_row in new_rows]
      except Exception as error:  # pylint: disable=broad-except
        # One failed row (e.g. out of memory) must not lose the rest of a long GPU run.
        traceback.print_exc()
        rows.append(dict(row, note=failure(error)))


def is_deleted(state) -> bool:
  """Returns whether any array of state was donated and so deleted."""
  return any(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(state) if isinstance(leaf, jax.Array))


def measure_torch(name: str, info: dict, rows: list[dict]) -> None:
  """Returns None; appends the diffusers rows for one model to rows, one per torch batch size."""
  config, size = model_for(name, 'float32')
  dev = torch_reference.device()
  info['torch_params'] = torch_reference.count_params(torch_reference.make_unet(config, size, dev))
  info['torch_flops'] = torch_reference.training_flops_per_image(config, size, dev)
  for batch_size in map(int, _TORCH_BATCH_SIZES.value or _BATCH_SIZES.value) if _TORCH.value else ():
    row = dict(model=name, side='diffusers (PyTorch)', compute=_TORCH_DTYPE.value, batch=batch_size,
               input='reused')
    if out_of_time():
      rows.append(dict(row, note='skipped: --time_budget_s'))
      continue
    try:
      images_per_s, how = torch_reference.train_images_per_second(
          config, size, batch_size, steps=_STEPS.value, warmup_steps=_WARMUP_STEPS.value,
          compile_choice=_TORCH_COMPILE.value, dtype=_TORCH_DTYPE.value)
      rows.append(dict(row, images_per_s=images_per_s, note=how))
      logging.info('diffusers %s batch %d: %.1f images/s (%s)', name, batch_size, images_per_s, how)
    except Exception as error:  # pylint: disable=broad-except
      traceback.print_exc()
      rows.append(dict(row, note=failure(error)))
  torch_reference.release_memory()


def measure(rows: list[dict], info: dict) -> None:
  """Returns None; fills rows and info: the peak first, then per model ours and then diffusers.

  Ours go first: they are the figures that matter when --time_budget_s runs out.
  """
  size = _PEAK_SIZE.value or (2048 if on_cpu() else 8192)
  info['peak'], info['peak_what'] = measured_peak_flops(size, reps=5 if on_cpu() else 50)
  info['datasheet_peak'] = datasheet_peak_flops()
  for name in _MODELS.value:
    info[name] = {}
    measure_ours(name, info[name], rows)
    measure_torch(name, info[name], rows)


def ratio(row: dict, rows: list[dict]) -> str:
  """Returns ours/diffusers images/s for our reused-input rows in the reference's dtype, '' elsewhere."""
  if row['side'] != 'ours (JAX)' or row['compute'] != _TORCH_DTYPE.value or row.get('input') != 'reused':
    return ''
  theirs = [r for r in rows if r['side'] != row['side'] and r['model'] == row['model']
            and r['batch'] == row['batch'] and r.get('images_per_s')]
  return f'{row["images_per_s"] / theirs[0]["images_per_s"]:.2f}' if theirs else ''


def table_row(row: dict, rows: list[dict], info: dict) -> str:
  """Returns one Markdown table row; MFU uses our XLA FLOP count for both sides (the same network)."""
  rate = row.get('images_per_s')
  flops = info.get(row['model'], {}).get('train_flops_xla')
  cells = [row['model'], row['side'], row['compute'], str(row['batch']), row.get('input', '-')]
  if rate:
    mfu = lambda peak: f'{100 * flops * rate / peak:.1f}%' if flops and peak else '-'
    compile_s = f'{row["compile_s"]:.1f}' if 'compile_s' in row else '-'
    cells += [f'{rate:,.1f}', f'{1000 * row["batch"] / rate:,.1f}', mfu(info.get('peak')),
              mfu(info.get('datasheet_peak')), ratio(row, rows), compile_s]
  else:
    cells += ['-'] * 6
  return '| ' + ' | '.join(cells + [row.get('note', '')]) + ' |'


def model_line(name: str, model_info: dict) -> str:
  """Returns the bullet that says how comparable the two networks of one model are."""
  config, size = model_for(name, 'float32')
  g = lambda key: f'{model_info[key] / 1e9:.2f}' if key in model_info else '-'
  params = lambda key: f'{model_info[key]:,}' if key in model_info else '-'
  return (f'- `{name}` at {size}x{size} (base_channels={config.base_channels}, channel_mults='
          f'{config.channel_mults}): params ours {params("ours_params")}, diffusers {params("torch_params")}; '
          f'GFLOP/image: forward {g("forward_flops")} and train step {g("train_flops_xla")} (XLA cost '
          f'analysis), diffusers forward+backward {g("torch_flops")} (torch FlopCounterMode: convs and '
          'matmuls only)')


def header_lines(info: dict) -> list[str]:
  """Returns the section's title and the bullets that say what was measured, where and how."""
  cpu_note = ('CPU rows: small sizes for a smoke test, NOT the goal figures (those need a GPU: '
              'benchmarks/gpu_run.sh)' if on_cpu() else 'GPU rows')
  datasheet = (f'{info["datasheet_peak"] / 1e12:.0f} TFLOP/s dense bf16 (datasheet)'
               if info.get('datasheet_peak') else 'no datasheet peak listed for this device')
  peak = f'{info["peak"] / 1e12:.3f} TFLOP/s ({info["peak_what"]})' if 'peak' in info else '-'
  torch_compute = 'bf16 autocast' if _TORCH_DTYPE.value == 'bfloat16' else 'float32'
  torch_line = ('- diffusers: UNet2DModel as ours, DDPMScheduler.add_noise, MSE on eps, AdamW (fused on CUDA), '
                f'{torch_compute}, channels_last; no clipping or EMA; ours/diffusers compares images/s at '
                'the same batch and dtype' if _TORCH.value else '- diffusers: not timed (--notorch)')
  return [
      f'## Train-step throughput, {datetime.datetime.now().isoformat(timespec="seconds")} — {cpu_note}', '',
      f'- Machine: {torch_reference.machine()}', f'- Versions: {torch_reference.versions()}',
      f'- Command: `python -m benchmarks.train_throughput {" ".join(sys.argv[1:])}`',
      f'- {_STEPS.value} timed steps per row after {_WARMUP_STEPS.value} warm-up step(s), one block at the '
      'end; "reused" = one device batch every step, "fed" = host uint8 → float32 → '
      '`sharding.global_batch` every step; ours = `make_train_step` (Adam, clipping, EMA, NaN guard), '
      'params float32',
      f'- Peak: measured {peak}; {datasheet}. MFU = XLA train FLOPs/image x images/s / peak, both sides',
      *[model_line(name, info.get(name, {})) for name in _MODELS.value], torch_line]


def report(rows: list[dict], info: dict) -> str:
  """Returns the Markdown section for BENCHMARKS.md."""
  for name in _MODELS.value:
    counted = [r['train_flops'] for r in rows if r['model'] == name and r.get('train_flops')]
    if counted:
      info[name]['train_flops_xla'] = counted[0]
  lines = header_lines(info) + [
      '', '| model | side | compute | batch | input | images/s | ms/step | MFU (measured peak) | '
      'MFU (datasheet) | ours/diffusers | compile s | note |',
      '|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|',
      *[table_row(row, rows, info) for row in rows]]
  return '\n'.join(lines) + '\n\n'


def main(argv):
  del argv
  rows, info = [], {}
  try:
    measure(rows, info)
  except KeyboardInterrupt:  # benchmarks/gpu_run.sh's timeout sends SIGINT: report what was measured
    traceback.print_exc()
    rows.append(dict(model='-', side='-', compute='-', batch='-', note='interrupted (SIGINT): later rows not run'))
  section = report(rows, info)
  print(section)
  with open(_OUTPUT.value, 'a') as f:
    f.write(section)


if __name__ == '__main__':
  app.run(main)
