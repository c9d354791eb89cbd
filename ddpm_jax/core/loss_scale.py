"""Dynamic loss scaling for float16 compute: the loss is scaled up so small gradients survive float16's range.

Flax's `flax.training.dynamic_scale.DynamicScale` has the same rule (x2 after a run of
finite steps, x0.5 on overflow), but it decides inside its own `value_and_grad`, once per
call; with gradient accumulation the decision belongs to the summed gradient of all of a
step's microbatches, so the scale here is a small pytree that the step updates once.
Pure: imports only jax and flax.
"""
import flax.struct
import jax.numpy as jnp

INITIAL_SCALE = 2.0**16  # PyTorch's GradScaler and Flax's DynamicScale start here too
GROWTH_INTERVAL = 2000  # finite steps in a row before the scale doubles
GROWTH_FACTOR, BACKOFF_FACTOR = 2.0, 0.5
# At scale 1 a float16 gradient that overflows is a real Inf, not a scaling artefact: such steps count as
# NaN/Inf steps again, so a diverged run still stops at training.max_nonfinite_steps.
MIN_SCALE = 1.0


@flax.struct.dataclass
class LossScale:
  """The current loss scale and the finite steps since it last changed."""
  scale: jnp.ndarray  # float32 scalar
  good_steps: jnp.ndarray  # int32 scalar


def init(scale: float = INITIAL_SCALE) -> LossScale:
  """Returns the loss scale of step 0."""
  return LossScale(scale=jnp.asarray(scale, jnp.float32), good_steps=jnp.zeros((), jnp.int32))


def is_overflow(loss_scale: LossScale, loss_finite, grads_finite):
  """Returns whether a step's scaled gradient overflowed: a finite loss, a non-finite gradient, a scale above 1."""
  return loss_finite & ~grads_finite & (loss_scale.scale > MIN_SCALE)


def update(loss_scale: LossScale, finite, overflow) -> LossScale:
  """Returns the scale of the next step: halved after an overflow, doubled after GROWTH_INTERVAL finite steps.

  A step with a NaN/Inf loss leaves it as it was: that is no sign the scale is too large.
  """
  grow = finite & (loss_scale.good_steps + 1 >= GROWTH_INTERVAL)
  max_scale = jnp.finfo(jnp.float32).max
  scale = jnp.where(grow, jnp.minimum(loss_scale.scale * GROWTH_FACTOR, max_scale), loss_scale.scale)
  scale = jnp.where(overflow, jnp.maximum(loss_scale.scale * BACKOFF_FACTOR, MIN_SCALE), scale)
  good_steps = jnp.where(finite & ~grow, loss_scale.good_steps + 1, 0)
  good_steps = jnp.where(finite | overflow, good_steps, loss_scale.good_steps)
  return LossScale(scale=scale, good_steps=good_steps)
