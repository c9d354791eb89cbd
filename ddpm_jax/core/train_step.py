"""The train state and the one jitted train step: timestep and noise draw, loss, grads, update, EMA.

Pure: imports only jax, flax, optax and numpy. Each step's keys come from `keys`
(timesteps, noise, dropout of (state.rng, state.step)), so a resumed run draws exactly
what the uninterrupted run would have drawn.
"""
import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ddpm_jax.core import device_data, diffusion, keys
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


def learning_rate_schedule(learning_rate: float, warmup_steps: int) -> optax.Schedule:
  """Returns a linear warm-up from 0 to learning_rate over warmup_steps, then constant (Ho et al.)."""
  if warmup_steps <= 0:
    return optax.constant_schedule(learning_rate)
  return optax.linear_schedule(0.0, learning_rate, warmup_steps)


def make_optimizer(learning_rate: float, warmup_steps: int, grad_clip: float) -> optax.GradientTransformation:
  """Returns Adam with warm-up, after global-norm clipping when grad_clip > 0."""
  adam = optax.adam(learning_rate_schedule(learning_rate, warmup_steps))
  return optax.chain(optax.clip_by_global_norm(grad_clip), adam) if grad_clip > 0 else adam


def ema_decay_at(step, ema_decay: float):
  """Returns the EMA decay at a step: min(decay, (1 + step) / (10 + step)), so early EMA tracks the params."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))


def init_params(model, image_size: int, seed: int, channels: int = 3):
  """Returns the model's initial params for square images of the given size."""
  dummy = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
  init = jax.jit(model.init, static_argnames='train')
  return init(keys.params_init_key(seed), dummy, jnp.zeros((1,), jnp.int32), train=False)['params']


def create_train_state(params, optimizer: optax.GradientTransformation, rng) -> TrainState:
  """Returns the state at step 0; the EMA starts as a copy of the params."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree_util.tree_map(jnp.copy, params),
                    opt_state=optimizer.init(params), rng=rng, nonfinite_streak=jnp.zeros((), jnp.int32))


def train_step(state: TrainState, batch, *, apply_fn: Callable, schedule: Schedule,
               optimizer: optax.GradientTransformation, loss: str, prediction: str, ema_decay: float):
  """Returns (the state after one optimizer step on batch['image'], a dict of scalar metrics)."""
  x0 = batch['image']
  t = jax.random.randint(keys.timesteps_key(state.rng, state.step), (x0.shape[0],), 0, schedule.num_timesteps)
  noise = jax.random.normal(keys.noise_key(state.rng, state.step), x0.shape, x0.dtype)
  dropout_key = keys.dropout_key(state.rng, state.step)

  def compute_loss(params):
    model_fn = lambda x_t, tt: apply_fn({'params': params}, x_t, tt, train=True, rngs={'dropout': dropout_key})
    return diffusion.loss_fn(model_fn, schedule, x0, t, noise, loss=loss, prediction=prediction)

  loss_value, grads = jax.value_and_grad(compute_loss)(state.params)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_decay_at(state.step, ema_decay)
  ema_params = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
  # A NaN/Inf loss or gradient leaves params, EMA and optimizer state as they were.
  finite = jnp.isfinite(loss_value) & jnp.isfinite(grad_norm)
  keep_if_finite = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1, params=keep_if_finite(params, state.params),
      ema_params=keep_if_finite(ema_params, state.ema_params), opt_state=keep_if_finite(opt_state, state.opt_state),
      nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
  metrics = {'loss': loss_value, 'grad_norm': grad_norm, 'nonfinite_steps': (~finite).astype(jnp.int32)}
  return new_state, metrics


def make_train_step(apply_fn: Callable, schedule: Schedule, optimizer: optax.GradientTransformation, *,
                    loss: str, prediction: str, ema_decay: float):
  """Returns the jitted train step `(state, batch) -> (state, metrics)`, with the state donated."""
  diffusion.check_choice('loss', loss, diffusion.LOSSES)
  diffusion.check_choice('prediction', prediction, diffusion.PREDICTIONS)
  step = functools.partial(train_step, apply_fn=apply_fn, schedule=schedule, optimizer=optimizer, loss=loss,
                           prediction=prediction, ema_decay=ema_decay)
  return jax.jit(step, donate_argnums=0)


def make_device_data_train_step(apply_fn: Callable, schedule: Schedule, optimizer: optax.GradientTransformation, *,
                                loss: str, prediction: str, ema_decay: float, batch_size: int, flip: bool,
                                batch_sharding):
  """Returns the jitted step `(state, images on device) -> (state, metrics)` that draws its own batch.

  The batch (rows, flips) comes from `device_data.device_batch` with the run's base key,
  split across devices by `batch_sharding`; the state is donated, the images are not.
  """
  diffusion.check_choice('loss', loss, diffusion.LOSSES)
  diffusion.check_choice('prediction', prediction, diffusion.PREDICTIONS)

  def step(state: TrainState, images):
    batch = device_data.device_batch(images, state.step, state.rng, batch_size=batch_size,
                                     flip=flip)
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return train_step(state, batch, apply_fn=apply_fn, schedule=schedule, optimizer=optimizer, loss=loss,
                      prediction=prediction, ema_decay=ema_decay)
  return jax.jit(step, donate_argnums=0)

