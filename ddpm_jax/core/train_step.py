"""The train state and the one jitted train step: timestep and noise draw, loss, grads, update, EMA.

Pure: imports only jax, flax, optax and numpy. Each step's keys come from `keys`
(timesteps, noise, dropout of (state.rng, state.step)), so a resumed run draws exactly
what the uninterrupted run would have drawn.

With grad_accum_steps = k > 1 one optimizer step runs k microbatches in a `lax.scan`
(memory of one microbatch), its timesteps and noise drawn for the whole batch as with
k = 1; with float16 compute the state carries a dynamic loss scale (`loss_scale`).

A class-conditional batch ({'image', 'label'}) trains a `label_dropout` fraction of its
examples with the null class (classifier-free guidance needs the unconditional model too),
chosen with `keys.label_dropout_key`; a batch without 'label' draws and computes exactly
what it did before labels existed.
"""
import dataclasses
import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from ddpm_jax.core import device_data, diffusion, keys
from ddpm_jax.core import loss_scale as loss_scale_lib
from ddpm_jax.core import phema
from ddpm_jax.core.schedules import Schedule


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue: step, params, EMA params, optimizer state, base key."""
  step: jnp.ndarray
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jnp.ndarray
  nonfinite_streak: jnp.ndarray  # steps in a row whose loss or gradient was NaN/Inf (and so not applied)
  # float16 compute only: the dynamic loss scale. None (no leaves) otherwise, so the state's tree, its
  # checkpoints and its digest are those of earlier versions.
  loss_scale: Any = None
  # training.phema_sigma_rels only: one power-function EMA of the params per sigma_rel (core/phema.py), a tuple.
  # None (no leaves) otherwise, as loss_scale.
  phema_params: Any = None


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a train step optimises and how: the loss, its weighting, the noise, the EMA and the microbatches.

  One value, passed whole from the config's diffusion and training sections to the jitted step.
  """
  loss: str = 'mse'  # mse | mae | huber
  prediction: str = 'eps'  # what the network predicts: eps | x0 | v
  loss_weighting: str = 'none'  # none | min_snr
  min_snr_gamma: float = 5.0
  huber_delta: float = 1.0  # the huber loss's switch from quadratic to linear
  offset_noise: float = 0.0  # std of a per-image, per-channel constant added to the noise (0 = off)
  ema_decay: float = 0.9999
  ema_warmup: bool = True
  grad_accum_steps: int = 1  # microbatches per optimizer step
  phema_sigma_rels: tuple = ()  # the power-function EMAs the state tracks (post-hoc EMA), one per sigma_rel
  label_dropout: float = 0.0  # labelled batches: the fraction of examples trained with the null class
  null_label: int = 0  # the null class's id (model.num_classes); unused without labels

  def check(self) -> None:
    """Returns None; raises a one-line ValueError for an unknown loss or prediction or a bad microbatch count."""
    diffusion.check_choice('loss', self.loss, diffusion.LOSSES)
    diffusion.check_choice('prediction', self.prediction, diffusion.PREDICTIONS)
    diffusion.check_choice('loss_weighting', self.loss_weighting, diffusion.LOSS_WEIGHTINGS)
    k = self.grad_accum_steps
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
      raise ValueError(f'training.grad_accum_steps={k!r} must be an integer >= 1')
    for sigma_rel in self.phema_sigma_rels:
      phema.check_sigma_rel(sigma_rel, 'training.phema_sigma_rels')
    if not 0.0 <= self.label_dropout < 1.0:  # also refuses NaN
      raise ValueError(f'training.label_dropout={self.label_dropout!r} must lie in [0, 1)')
    if isinstance(self.null_label, bool) or not isinstance(self.null_label, int) or self.null_label < 0:
      raise ValueError(f'null_label={self.null_label!r} must be an integer >= 0 (model.num_classes)')


def learning_rate_schedule(learning_rate: float, warmup_steps: int) -> optax.Schedule:
  """Returns a linear warm-up from 0 to learning_rate over warmup_steps, then constant (Ho et al.)."""
  if warmup_steps <= 0:
    return optax.constant_schedule(learning_rate)
  return optax.linear_schedule(0.0, learning_rate, warmup_steps)


def make_optimizer(learning_rate: float, warmup_steps: int, grad_clip: float) -> optax.GradientTransformation:
  """Returns Adam with warm-up, after global-norm clipping when grad_clip > 0."""
  adam = optax.adam(learning_rate_schedule(learning_rate, warmup_steps))
  return optax.chain(optax.clip_by_global_norm(grad_clip), adam) if grad_clip > 0 else adam


def ema_decay_at(step, ema_decay: float, warmup: bool = True):
  """Returns the EMA decay at a step: min(decay, (1 + step) / (10 + step)), so early EMA tracks the params.

  Without warmup, the constant ema_decay of Ho et al.
  """
  if not warmup:
    return jnp.asarray(ema_decay, jnp.float32)
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))


def init_params(model, image_size: int, seed: int, channels: int = 3):
  """Returns the model's initial params for square images of the given size."""
  dummy = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
  init = jax.jit(model.init, static_argnames='train')
  return init(keys.params_init_key(seed), dummy, jnp.zeros((1,), jnp.int32), train=False)['params']


def create_train_state(params, optimizer: optax.GradientTransformation, rng, loss_scale=None,
                       phema_profiles: int = 0) -> TrainState:
  """Returns the state at step 0; the EMA (and each of phema_profiles power-function EMAs) starts as the params.

  loss_scale: a `loss_scale.LossScale` to train with dynamic loss scaling (float16 compute), else None.
  """
  copy = lambda: jax.tree_util.tree_map(jnp.copy, params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=copy(),
                    opt_state=optimizer.init(params), rng=rng, nonfinite_streak=jnp.zeros((), jnp.int32),
                    loss_scale=loss_scale,
                    phema_params=tuple(copy() for _ in range(phema_profiles)) if phema_profiles else None)


def draw_noise(rng, step, x0, offset_noise: float):
  """Returns step `step`'s Gaussian noise for x0, plus a per-image, per-channel N(0, offset_noise**2) offset."""
  noise = jax.random.normal(keys.noise_key(rng, step), x0.shape, x0.dtype)
  if not offset_noise:  # no draw: runs without offset noise keep their exact noise
    return noise
  offset_shape = (x0.shape[0],) + (1,) * (x0.ndim - 2) + (x0.shape[-1],)
  return noise + offset_noise * jax.random.normal(keys.offset_noise_key(rng, step), offset_shape, x0.dtype)


def drop_labels(rng, step, labels, objective: Objective):
  """Returns the labels with each replaced by objective.null_label with probability label_dropout; None stays None."""
  if labels is None:
    return None
  labels = jnp.asarray(labels, jnp.int32)
  if not objective.label_dropout:  # no draw
    return labels
  dropped = jax.random.bernoulli(keys.label_dropout_key(rng, step), objective.label_dropout, labels.shape)
  return jnp.where(dropped, jnp.int32(objective.null_label), labels)


def loss_and_grads(params, x0, t, noise, dropout_key, labels=None, *, apply_fn: Callable, schedule: Schedule,
                   objective: Objective, scale=None):
  """Returns (the mean loss on x0 of classes labels, its gradient), the gradient multiplied by `scale` if given.

  labels=None calls the model without labels, as before class conditioning existed.
  """
  def compute_loss(params):
    rngs = {'dropout': dropout_key}
    if labels is None:
      model_fn = lambda x_t, tt: apply_fn({'params': params}, x_t, tt, train=True, rngs=rngs)
    else:
      model_fn = lambda x_t, tt: apply_fn({'params': params}, x_t, tt, labels, train=True, rngs=rngs)
    return diffusion.loss_fn(model_fn, schedule, x0, t, noise, loss=objective.loss, prediction=objective.prediction,
                             huber_delta=objective.huber_delta, loss_weighting=objective.loss_weighting,
                             min_snr_gamma=objective.min_snr_gamma)

  if scale is None:
    return jax.value_and_grad(compute_loss)(params)
  scaled = lambda p: (lambda value: (value * scale, value))(compute_loss(p))
  (_, loss_value), grads = jax.value_and_grad(scaled, has_aux=True)(params)
  return loss_value, grads


def split_microbatches(tree, count: int):
  """Returns every [B, ...] array of tree as [count, B / count, ...]: microbatch i holds rows i, i + count, ...

  Strided, not contiguous: a device's rows of the batch split into its rows of each
  microbatch, so the split moves no data between devices.
  """
  def split(array):
    if array.shape[0] % count:
      raise ValueError(f'training.grad_accum_steps={count} must divide the batch of {array.shape[0]}')
    return array.reshape((array.shape[0] // count, count) + array.shape[1:]).swapaxes(0, 1)
  return jax.tree_util.tree_map(split, tree)


def accumulated_loss_and_grads(loss_and_grads_fn: Callable, params, x0, t, noise, dropout_key_of: Callable,
                               count: int, batch_sharding=None, labels=None):
  """Returns (the mean loss, the mean gradient) over `count` microbatches of (x0, t, noise, labels), one at a time.

  A `lax.scan`, so only one microbatch's activations are alive; each microbatch's dropout key is
  `dropout_key_of(index)`. With `batch_sharding`, each microbatch is split across its devices.
  labels (int32 [B] or None) are split with the rest.
  """
  microbatches = split_microbatches((x0, t, noise) + (() if labels is None else (labels,)), count)
  if batch_sharding is not None:
    stacked = NamedSharding(batch_sharding.mesh, PartitionSpec(None, *batch_sharding.spec))
    microbatches = jax.lax.with_sharding_constraint(microbatches, stacked)

  def add_microbatch(total, inputs):
    index, microbatch = inputs
    if batch_sharding is not None:
      microbatch = jax.lax.with_sharding_constraint(microbatch, batch_sharding)
    x0_part, t_part, noise_part, *labels_part = microbatch  # labels_part: [] or [labels of the microbatch]
    value, grads = loss_and_grads_fn(params, x0_part, t_part, noise_part, dropout_key_of(index), *labels_part)
    return jax.tree_util.tree_map(jnp.add, total, (value, grads)), None

  zeros = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, params))
  (total_loss, total_grads), _ = jax.lax.scan(add_microbatch, zeros, (jnp.arange(count), microbatches))
  # The loss is a mean over equal microbatches: the whole batch's loss and gradient are their means.
  return total_loss / count, jax.tree_util.tree_map(lambda g: g / count, total_grads)


def train_step(state: TrainState, batch, *, apply_fn: Callable, schedule: Schedule,
               optimizer: optax.GradientTransformation, objective: Objective, batch_sharding=None):
  """Returns (the state after one optimizer step on batch['image'] of classes batch['label'], its scalar metrics).

  Timesteps, noise and label dropout are drawn for the whole batch, then split into
  grad_accum_steps microbatches; with state.loss_scale (float16 compute) the loss is scaled
  and an overflowing step skipped. A batch without 'label' trains the unconditional model.
  """
  x0 = batch['image']
  t = jax.random.randint(keys.timesteps_key(state.rng, state.step), (x0.shape[0],), 0, schedule.num_timesteps)
  noise = draw_noise(state.rng, state.step, x0, objective.offset_noise)
  labels = drop_labels(state.rng, state.step, batch.get('label'), objective)
  scale = None if state.loss_scale is None else state.loss_scale.scale
  grads_fn = functools.partial(loss_and_grads, apply_fn=apply_fn, schedule=schedule, objective=objective,
                               scale=scale)
  if objective.grad_accum_steps == 1:  # the step of earlier versions, key for key
    loss_value, grads = grads_fn(state.params, x0, t, noise, keys.dropout_key(state.rng, state.step), labels)
  else:
    dropout_key_of = lambda index: keys.microbatch_dropout_key(state.rng, state.step, index)
    loss_value, grads = accumulated_loss_and_grads(grads_fn, state.params, x0, t, noise, dropout_key_of,
                                                   objective.grad_accum_steps, batch_sharding, labels)
  if scale is not None:
    grads = jax.tree_util.tree_map(lambda g: g / scale, grads)
  return apply_gradients(state, loss_value, grads, optimizer=optimizer, ema_decay=objective.ema_decay,
                         ema_warmup=objective.ema_warmup,
                         phema_gammas=tuple(phema.sigma_rel_to_gamma(s) for s in objective.phema_sigma_rels))


def apply_gradients(state: TrainState, loss_value, grads, *, optimizer: optax.GradientTransformation,
                    ema_decay: float, ema_warmup: bool = True, phema_gammas: tuple = ()):
  """Returns (the state after the update by grads, the step's metrics); a NaN/Inf or overflowing step is skipped."""
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_decay_at(state.step, ema_decay, ema_warmup)
  ema_params = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
  # A NaN/Inf loss or gradient leaves params, EMA and optimizer state as they were.
  finite = jnp.isfinite(loss_value) & jnp.isfinite(grad_norm)
  keep_if_finite = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1, params=keep_if_finite(params, state.params),
      ema_params=keep_if_finite(ema_params, state.ema_params), opt_state=keep_if_finite(opt_state, state.opt_state),
      nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
  if state.phema_params is not None:
    profiles = phema.update(state.phema_params, params, state.step, phema_gammas)
    new_state = new_state.replace(phema_params=keep_if_finite(profiles, state.phema_params))
  metrics = {'loss': loss_value, 'grad_norm': grad_norm, 'nonfinite_steps': (~finite).astype(jnp.int32)}
  if state.loss_scale is not None:
    new_state, metrics = _count_overflow(state, new_state, metrics, finite, jnp.isfinite(loss_value))
  return new_state, metrics


def _count_overflow(state: TrainState, new_state: TrainState, metrics: dict, finite, loss_finite):
  """Returns (new_state, metrics) with an overflow counted apart from NaN/Inf steps and the loss scale updated."""
  overflow = loss_scale_lib.is_overflow(state.loss_scale, loss_finite, finite)
  # An overflow is skipped like a NaN/Inf step but is no sign of divergence: the streak stays as it was.
  streak = jnp.where(overflow, state.nonfinite_streak, new_state.nonfinite_streak)
  new_state = new_state.replace(nonfinite_streak=streak,
                                loss_scale=loss_scale_lib.update(state.loss_scale, finite, overflow))
  metrics = dict(metrics, nonfinite_steps=(~finite & ~overflow).astype(jnp.int32),
                 overflow_steps=overflow.astype(jnp.int32), loss_scale=state.loss_scale.scale)
  return new_state, metrics


def make_train_step(apply_fn: Callable, schedule: Schedule, optimizer: optax.GradientTransformation,
                    objective: Objective, *, batch_sharding=None):
  """Returns the jitted train step `(state, batch) -> (state, metrics)`, with the state donated.

  batch_sharding: the sharding each microbatch keeps when objective.grad_accum_steps > 1.
  """
  objective.check()
  step = functools.partial(train_step, apply_fn=apply_fn, schedule=schedule, optimizer=optimizer,
                           objective=objective, batch_sharding=batch_sharding)
  return jax.jit(step, donate_argnums=0)


def make_device_data_train_step(apply_fn: Callable, schedule: Schedule, optimizer: optax.GradientTransformation,
                                objective: Objective, *, batch_size: int, flip: bool, batch_sharding):
  """Returns the jitted step `(state, data on device) -> (state, metrics)` that draws its own batch.

  The batch (rows, flips, and labels when the data carry them) comes from
  `device_data.device_batch` with the run's base key, split across devices by
  `batch_sharding`; the state is donated, the data are not.
  """
  objective.check()

  def step(state: TrainState, data):
    batch = device_data.device_batch(data, state.step, state.rng, batch_size=batch_size, flip=flip)
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return train_step(state, batch, apply_fn=apply_fn, schedule=schedule, optimizer=optimizer, objective=objective,
                      batch_sharding=batch_sharding)
  return jax.jit(step, donate_argnums=0)
