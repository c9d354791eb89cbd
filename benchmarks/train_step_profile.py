r"""Where the train step's time goes on a CPU: variants of our step against diffusers' eager step, the HLO's transposes and copies.

Times, in one process and alternated (round r runs the variants in order when r
is even, reversed when odd), --rounds x --steps steps of each of:
  - `current`: `ddpm_jax.core.train_step.make_train_step` as the trainer runs it;
  - `cond_update`: the same step with the update (Adam, EMA) under `lax.cond(finite, ...)`
    instead of `jnp.where(finite, new, old)` per leaf: a candidate, not the trainer's code;
  - `rbg_dropout`: the dropout masks from an RBG key made from the step's dropout key
    (other draws than the trainer's: a candidate only, it would break resume);
  - `no_dropout`: model.dropout = 0, the most dropout can cost;
  - `diffusers`: UNet2DModel, add_noise, MSE, backward, AdamW, eager PyTorch, float32;
and, for the reverse process, our jitted eval forward against a DDIM `lax.scan` of
--scan_steps steps (per step) and diffusers' eager forward.

From the compiled `current` step: where its HLO text mentions `transpose(` (most are
op_name metadata: JAX names the backward pass `transpose(jvp(...))`), its transpose
instructions by the op they come from, its top-level copies by what they copy, and
with --profile an op-time breakdown from a `jax.profiler` trace. Prints a table and
appends it to BENCHMARKS.md with date, machine, versions and the command.

Run from the repository root (the CIFAR-10 layout at width 32, about 8 minutes on 2 cores):

  python -m benchmarks.train_step_profile --batch_size=8 --rounds=3 --steps=2
"""
import collections
import contextlib
import dataclasses
import datetime
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # as benchmarks/train_throughput.py: before torch loads

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import torch_reference
from ddpm_jax.core import sampler as sampler_lib
from ddpm_jax.core import schedules
from ddpm_jax.core import train_step
from ddpm_jax.core.models import unet

_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Train batch.')
_SAMPLE_BATCH = flags.DEFINE_integer('sample_batch_size', 4, 'Batch of the forward / reverse-step rows.')
_BASE_CHANNELS = flags.DEFINE_integer('base_channels', 32, 'Width of the CIFAR-10 layout (128 = the paper\'s).')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Alternated rounds; each variant\'s figure is the median over rounds.')
_STEPS = flags.DEFINE_integer('steps', 2, 'Steps per variant per round (after one warm-up step).')
_SCAN_STEPS = flags.DEFINE_integer('scan_steps', 5, 'DDIM steps of the timed reverse scan.')
_VARIANTS = flags.DEFINE_list('variants', ['current', 'cond_update', 'rbg_dropout', 'no_dropout', 'diffusers'],
                              'Train-step variants to time.')
_PROFILE = flags.DEFINE_bool('profile', True, 'Also break the current step\'s op time down from a profiler trace.')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to.')

_MODEL = 'cifar10'


def model_config(dropout=None) -> tuple[unet.UNetConfig, int]:
  """Returns (the CIFAR-10 U-Net at --base_channels in float32, image side), with dropout if given."""
  config, size = torch_reference.model_config(_MODEL, 'float32', 0, _BASE_CHANNELS.value)
  if dropout is not None:
    config = dataclasses.replace(config, dropout=dropout)
  return config, size


def apply_gradients_under_cond(state, loss_value, grads, *, optimizer, ema_decay, ema_warmup=True):
  """Returns train_step.apply_gradients' result, its update under one lax.cond (float32 only)."""
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss_value) & jnp.isfinite(grad_norm)

  def update(_):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = train_step.ema_decay_at(state.step, ema_decay, ema_warmup)
    ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    return params, ema, opt_state

  params, ema, opt_state = jax.lax.cond(finite, update, lambda _: (state.params, state.ema_params,
                                                                      state.opt_state), None)
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state,
                            nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
  return new_state, {'loss': loss_value, 'grad_norm': grad_norm, 'nonfinite_steps': (~finite).astype(jnp.int32)}


@contextlib.contextmanager
def swapped_apply_gradients(replacement):
  """Yields with train_step.apply_gradients replaced (while the step is traced), then restores it."""
  original = train_step.apply_gradients
  train_step.apply_gradients = replacement or original
  try:
    yield
  finally:
    train_step.apply_gradients = original


def rbg_dropout(apply_fn):
  """Returns apply_fn with its dropout key turned into an RBG key (other masks than the trainer's)."""
  def apply(variables, x, t, train=False, rngs=None):
    if rngs:
      bits = jax.random.bits(rngs['dropout'], (4,), jnp.uint32)
      rngs = {'dropout': jax.random.wrap_key_data(bits, impl='rbg')}
    return apply_fn(variables, x, t, train=train, rngs=rngs)
  return apply


def compiled_step(variant: str, batch):
  """Returns (the compiled train step of a JAX variant, its initial state)."""
  config, size = model_config(0.0 if variant == 'no_dropout' else None)
  full = torch_reference.CONFIGS[_MODEL].get_config()
  t, d = full.training, full.diffusion
  schedule = schedules.make_schedule(d.schedule, d.num_timesteps)
  optimizer = train_step.make_optimizer(t.learning_rate, t.warmup_steps, t.grad_clip)
  apply_fn = unet.UNet(config).apply
  apply_fn = rbg_dropout(apply_fn) if variant == 'rbg_dropout' else apply_fn
  params = train_step.init_params(unet.UNet(config), size, seed=0)
  state = train_step.create_train_state(params, optimizer, jax.random.PRNGKey(0))
  with swapped_apply_gradients(apply_gradients_under_cond if variant == 'cond_update' else None):
    step = train_step.make_train_step(apply_fn, schedule, optimizer,
                                      train_step.Objective(loss=d.loss, prediction=d.prediction, ema_decay=t.ema_decay))
    compiled = step.lower(state, batch).compile()
  return compiled, state


class JaxRunner:
  """Runs a compiled step on its own (donated) state."""

  def __init__(self, compiled, state, batch):
    self.compiled, self.state, self.batch = compiled, state, batch

  def __call__(self):
    self.state, _ = self.compiled(self.state, self.batch)
    return self.state


def torch_runner(batch_size: int):
  """Returns a callable running diffusers' eager float32 train step once and synchronising."""
  config, size = model_config()
  dev = torch_reference.device()
  model = torch_reference.make_unet(config, size, dev).train()
  step = torch_reference.make_train_step(model, dev, 'float32')
  import torch  # pylint: disable=g-import-not-at-top
  x0 = torch.rand(batch_size, 3, size, size, device=dev).mul(2).sub(1).contiguous(memory_format=torch.channels_last)
  return lambda: step(x0)


def alternated_ms(runners: dict, rounds: int, steps: int) -> dict:
  """Returns {name: [ms per step of each round]}: one warm-up call each, then rounds in alternating order."""
  for run in runners.values():
    jax.block_until_ready(run())
  times = {name: [] for name in runners}
  for r in range(rounds):
    for name in (list(runners) if r % 2 == 0 else list(reversed(runners))):
      start = time.perf_counter()
      for _ in range(steps):
        out = runners[name]()
      jax.block_until_ready(out)
      times[name].append(1000 * (time.perf_counter() - start) / steps)
  return times


def transposes_and_copies(hlo: str) -> dict:
  """Returns counts of `transpose(` mentions, transpose instructions by source op, top-level copies by what they copy."""
  lines = hlo.splitlines()
  counts = collections.Counter(mentions=hlo.count('transpose('),
                               in_metadata=sum(line.count('transpose(jvp(') for line in lines))
  for line in lines:
    if re.search(r'= \S+ transpose\(', line):
      op_name = re.search(r'op_name="([^"]*)"', line)
      source = op_name.group(1).split('/')[-1] if op_name else 'no op_name'
      kind = ('conv' if 'conv_general_dilated' in source else
              'attention' if 'BTNH' in line or 'BNTS' in line or source.startswith('transpose') else source)
      counts[f'transpose instr: {kind}'] += 1
  entry = hlo[hlo.index('\nENTRY'):]
  for shape, source in re.findall(r'= (\S+) copy\(%?([\w.-]+)\)', entry):
    what = ('state: ' + next(k.strip('_') for k in ('__mu__', '__nu__', 'ema_', 'params', 'opt_state', 'step', 'rng', '')
                             if k in source) if source.startswith('state_') else
            'other')
    counts[f'top-level copy: {what}'] += 1
    counts[f'top-level copy bytes: {what}'] += 4 * int(np.prod([int(x) for x in re.findall(r'\d+', shape.split('{')[0][3:])] or [1]))
  counts['fusion thunks'] = len(re.findall(r'= \S+ fusion\(', entry))
  return dict(counts)


def op_time_breakdown(compiled, state, batch, steps: int = 3) -> tuple[dict, object]:
  """Returns ({category: ms per step summed over ops}, state) from a jax.profiler trace of `steps` steps."""
  hlo = compiled.as_text()
  lines = {m.group(1): line for line in hlo.splitlines() if (m := re.match(r'\s+(?:ROOT )?%?([\w.-]+) = ', line))}
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for _ in range(steps):
        state, _ = compiled(state, batch)
      jax.block_until_ready(state)
    events = json.load(gzip.open(glob.glob(f'{folder}/**/*.trace.json.gz', recursive=True)[0]))
  events = events['traceEvents'] if isinstance(events, dict) else events
  totals = collections.Counter()
  for event in events:
    line = lines.get(event.get('name'))
    if event.get('ph') != 'X' or line is None:
      continue
    totals[op_category(event['name'], line)] += event['dur'] / 1000 / steps
  return dict(totals), state


def op_category(name: str, line: str) -> str:
  """Returns the breakdown's category of one HLO instruction of the step."""
  op_name = re.search(r'op_name="([^"]*)"', line)
  op_name = op_name.group(1) if op_name else ''
  phase = 'backward' if 'transpose(jvp' in op_name else 'forward' if 'jvp(' in op_name else 'update/other'
  if name.startswith(('ynn_fusion', 'dot', 'convolution')):
    # Weight-gradient convolutions lose their op_name in XLA:CPU's rewrite: their inputs are transposes.
    kernel_grad = 'convolution(' in line or 'transpose_copy_fusion' in line
    if phase == 'update/other':
      return f'conv/dot: no op_name ({"kernel grads: transposed inputs" if kernel_grad else "XLA-rewritten"})'
    return f'conv/dot: {phase}'
  if 'Dropout' in op_name or '_bernoulli' in op_name:
    return 'dropout masks (threefry)'
  if 'copy' in name or 'transpose' in name:
    return f'copy/transpose: {"state (donation + where)" if "copy(%state_" in line else phase}'
  return f'elementwise/reduce: {phase}'


def forward_and_scan_ms(rounds: int) -> dict:
  """Returns {name: [ms]}: our jitted eval forward, a DDIM scan per step, diffusers' eager forward."""
  config, size = model_config()
  batch = _SAMPLE_BATCH.value
  params = train_step.init_params(unet.UNet(config), size, seed=0)
  x = jnp.zeros((batch, size, size, 3))
  t = jnp.full((batch,), 500, jnp.int32)
  forward = jax.jit(lambda p, x: unet.UNet(config).apply({'params': p}, x, t)).lower(params, x).compile()
  settings = sampler_lib.SamplerSettings(sampler='ddim', num_steps=_SCAN_STEPS.value, variance='beta', eta=0.0,
                                         clip_denoised=True)
  schedule = schedules.make_schedule('linear', 1000)
  sample = sampler_lib.make_sample_fn(unet.UNet(config).apply, schedule, settings, prediction='eps')
  shape = (batch, size, size, 3)
  scan = jax.jit(sample, static_argnums=2).lower(params, jax.random.PRNGKey(0), shape).compile()
  runners = {'forward (ours)': lambda: forward(params, x),
             'scan step (ours)': lambda: scan(params, jax.random.PRNGKey(0))}
  if 'diffusers' in _VARIANTS.value:
    import torch  # pylint: disable=g-import-not-at-top
    model = torch_reference.make_unet(config, size, torch_reference.device()).eval()
    xt, tt = torch.zeros(batch, 3, size, size).contiguous(memory_format=torch.channels_last), torch.full((batch,), 500)
    def torch_forward():
      with torch.no_grad():
        return model(xt, tt).sample
    runners['forward (diffusers)'] = torch_forward
  times = alternated_ms(runners, rounds, 2)
  times['scan step (ours)'] = [ms / _SCAN_STEPS.value for ms in times['scan step (ours)']]
  return times


def measure() -> dict:
  """Returns everything the report shows."""
  config, size = model_config()
  batch = {'image': jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (_BATCH_SIZE.value, size, size, 3)),
                                jnp.float32)}
  info = {'load_before': os.getloadavg()}
  runners, compile_s = {}, {}
  for variant in _VARIANTS.value:
    start = time.perf_counter()
    if variant == 'diffusers':
      runners[variant] = torch_runner(_BATCH_SIZE.value)
    else:
      compiled, state = compiled_step(variant, batch)
      runners[variant] = JaxRunner(compiled, state, batch)
      if variant == 'current':
        info['hlo'] = transposes_and_copies(compiled.as_text())
    compile_s[variant] = time.perf_counter() - start
  info['train_ms'] = alternated_ms(runners, _ROUNDS.value, _STEPS.value)
  info['compile_s'] = compile_s
  if _PROFILE.value and 'current' in runners:
    current = runners['current']
    info['breakdown'], current.state = op_time_breakdown(current.compiled, current.state, batch)
  info['forward_ms'] = forward_and_scan_ms(_ROUNDS.value)
  info['load_after'] = os.getloadavg()
  return info


def report(info: dict) -> str:
  """Returns the Markdown section for BENCHMARKS.md."""
  import torch  # pylint: disable=g-import-not-at-top
  config, size = model_config()
  median = lambda values: float(np.median(values))
  train = info['train_ms']
  theirs = median(train['diffusers']) if 'diffusers' in train else None
  load = lambda values: ', '.join(f'{v:.1f}' for v in values)
  lines = [
      f'## Train-step profile on a CPU, {datetime.datetime.now().isoformat(timespec="seconds")}', '',
      f'- Command: `python -m benchmarks.train_step_profile {" ".join(sys.argv[1:])}`',
      f'- Machine: {torch_reference.machine()}; load average before {load(info["load_before"])}, '
      f'after {load(info["load_after"])}',
      f'- Versions: {torch_reference.versions()}',
      f'- Threads: torch {torch.get_num_threads()} intra-op; XLA:CPU one per usable core '
      f'({len(os.sched_getaffinity(0))})',
      f'- Model: {_MODEL} layout at {size}x{size}, base_channels={config.base_channels}, dropout '
      f'{config.dropout}, float32; train batch {_BATCH_SIZE.value}; {_ROUNDS.value} alternated rounds x '
      f'{_STEPS.value} steps after one warm-up step; median of the rounds', '',
      '| train step | ms/step (median) | rounds | vs current | vs diffusers | compile s |',
      '|---|---:|---|---:|---:|---:|']
  for name, values in train.items():
    vs_current = f'{median(values) / median(train["current"]):.2f}' if 'current' in train else '-'
    vs_theirs = f'{theirs / median(values):.2f}' if theirs else '-'
    lines.append(f'| {name} | {median(values):.1f} | {", ".join(f"{v:.0f}" for v in values)} | {vs_current} | '
                 f'{vs_theirs} | {info["compile_s"][name]:.0f} |')
  lines += ['', f'Forward and reverse step at batch {_SAMPLE_BATCH.value} (scan: DDIM, {_SCAN_STEPS.value} steps, '
            'per step):', '', '| | ms (median) | rounds |', '|---|---:|---|']
  lines += [f'| {name} | {median(v):.1f} | {", ".join(f"{x:.0f}" for x in v)} |' for name, v in info['forward_ms'].items()]
  if 'hlo' in info:
    lines += ['', 'The compiled current step\'s HLO:', '', '| count | what |', '|---:|---|']
    lines += [f'| {v:,} | {k} |' for k, v in sorted(info['hlo'].items())]
  if 'breakdown' in info:
    total = sum(info['breakdown'].values())
    lines += ['', f'Op time of the current step (profiler trace, ms per step summed over ops on '
              f'{len(os.sched_getaffinity(0))} threads; total {total:.0f}):', '', '| category | ms | share |',
              '|---|---:|---:|']
    lines += [f'| {k} | {v:.1f} | {100 * v / total:.0f}% |'
              for k, v in sorted(info['breakdown'].items(), key=lambda kv: -kv[1])]
  return '\n'.join(lines) + '\n\n'


def main(argv):
  del argv
  section = report(measure())
  print(section)
  with open(_OUTPUT.value, 'a') as f:
    f.write(section)


if __name__ == '__main__':
  app.run(main)
