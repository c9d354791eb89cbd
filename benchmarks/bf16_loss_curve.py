r"""Does bf16 compute train like fp32? The same run (seed, batches, timesteps, noise) in both, loss side by side.

model.dtype=bfloat16 computes the U-Net's convolutions and attention in bf16 while
params, EMA and Adam stay float32. This trains one model twice from the same
initial params on the same `shapes` batches and prints the mean loss per window of
steps for each, their difference, and the final EMA params' relative distance.
fp32 stays the default until this shows the curves agree on the target device
(on CPUs bf16 is emulated: the numerics hold, the speed does not).

Imports only the pure core (and the numpy `shapes` renderer, loaded by path so
grain need not be installed), so it runs on the GPU machine as it is:

  python -m benchmarks.bf16_loss_curve --steps=300 --batch_size=32 --image_size=16
"""
import datetime
import importlib.util
import os
import platform
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import machine_info
from ddpm_jax.core import schedules, train_step
from ddpm_jax.core.models.unet import UNet, UNetConfig

_STEPS = flags.DEFINE_integer('steps', 300, 'Train steps per dtype.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Batch size.')
_SIZE = flags.DEFINE_integer('image_size', 16, 'Image side.')
_CHANNELS = flags.DEFINE_integer('base_channels', 32, 'U-Net base channels (levels (1, 2), attention at size/2).')
_WINDOW = flags.DEFINE_integer('window', 50, 'Steps averaged per row of the table.')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to ("" = none).')


def load_shapes():
  """Returns ddpm_jax/data/shapes.py as a module, without importing ddpm_jax.data (which needs grain)."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'ddpm_jax', 'data', 'shapes.py')
  spec = importlib.util.spec_from_file_location('shapes_standalone', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def train(dtype: str, batches, image_size: int):
  """Returns (per-step losses, final EMA params, seconds) of one run in the given compute dtype."""
  model = UNet(UNetConfig(base_channels=_CHANNELS.value, channel_mults=(1, 2), num_res_blocks=2,
                          attention_resolutions=(image_size // 2,), num_heads=1, dropout=0.0, num_groups=8,
                          dtype=dtype))
  schedule = schedules.make_schedule('cosine', 1000)
  optimizer = train_step.make_optimizer(1e-3, 20, 1.0)
  step = train_step.make_train_step(model.apply, schedule, optimizer, train_step.Objective(ema_decay=0.999))
  state = train_step.create_train_state(train_step.init_params(model, image_size, 0), optimizer,
                                        jax.random.PRNGKey(0))
  losses, begun = [], time.perf_counter()
  for batch in batches:
    state, metrics = step(state, {'image': batch})
    losses.append(metrics['loss'])
  losses = np.asarray(jax.device_get(losses), np.float64)
  return losses, jax.device_get(state.ema_params), time.perf_counter() - begun


def relative_distance(a, b) -> float:
  """Returns ||a - b|| / ||b|| over all leaves."""
  diff = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
  norm = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in jax.tree_util.tree_leaves(b))
  return (diff / norm) ** 0.5


def main(argv):
  del argv
  shapes, size, batch_size = load_shapes(), _SIZE.value, _BATCH.value
  batches = [shapes.render_shapes(0, 'train', np.arange(i * batch_size, (i + 1) * batch_size), size)
             .astype(np.float32) / 127.5 - 1.0 for i in range(_STEPS.value)]
  runs = {dtype: train(dtype, batches, size) for dtype in ('float32', 'bfloat16')}
  (fp32, ema32, t32), (bf16, ema16, t16) = runs['float32'], runs['bfloat16']
  window = _WINDOW.value
  rows = [f'| {start + 1}-{min(start + window, len(fp32))} | {fp32[start:start + window].mean():.4f} | '
          f'{bf16[start:start + window].mean():.4f} | {bf16[start:start + window].mean() - fp32[start:start + window].mean():+.4f} |'
          for start in range(0, len(fp32), window)]
  device = jax.devices()[0]
  section = '\n'.join([
      f'## bf16 vs fp32 loss curve ({datetime.date.today().isoformat()}, {device.platform}: {device.device_kind})',
      '',
      f'Command: `python -m benchmarks.bf16_loss_curve --steps={_STEPS.value} --batch_size={batch_size} '
      f'--image_size={size} --base_channels={_CHANNELS.value}`',
      f'Machine: {platform.platform()}; {machine_info.cpu_model()}; load average {machine_info.load_average()}',
      f'Versions: Python {platform.python_version()}, jax {jax.__version__}',
      f'Setup: `shapes` {size}x{size}, batch {batch_size}, U-Net base {_CHANNELS.value} (1, 2), cosine schedule, MSE '
      'on eps, Adam 1e-3; the same initial params, batches, timesteps and noise in both runs.',
      '',
      '| steps | mean loss fp32 | mean loss bf16 | bf16 - fp32 |',
      '|---|---:|---:|---:|',
      *rows,
      '',
      f'Final EMA params: relative distance bf16 vs fp32 = {relative_distance(ema16, ema32):.4f}. '
      f'Seconds (incl. compile): fp32 {t32:.1f}, bf16 {t16:.1f}.', '', ''])
  print(section)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'a') as f:
      f.write(section)


if __name__ == '__main__':
  app.run(main)
