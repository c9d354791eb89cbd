"""Every random stream of a run, each a named function of (seed or base key, purpose, step or index).

Randomness needs no saved state: a resumed run draws exactly what the uninterrupted run
would have, on any number of processes or devices, because every key derives from the
run's seed and a step or an index alone.

Two namespaces of `fold_in(rng, first)` keep the streams apart:
- training, per step: `fold_in(fold_in(rng, step), purpose)`, `step` in [0, 2**31) (the
  train state's step is int32). Unchanged since the first release, so old runs resume
  bit-exactly.
- everything else: `fold_in(fold_in(rng, 2**31 + purpose), index)`. The first fold-in's
  data is >= 2**31, which no step reaches, so no key here can equal a training key.
A batch index therefore never lands where a step goes (that is how the sample grid's
noise once equalled step 3's timestep draw). Note that `fold_in(key, i)` equals
`split(key)[i]`: a stream must not fold a small number into a key another stream
consumes, since the consumer's own splits are those very keys.

The host data loader draws with numpy (it runs in grain's threads and workers, far from
JAX): its order and flips are numpy generators seeded from (seed, purpose, epoch or
step), as is the TFDS hold-out. Pure: imports only jax and numpy.
"""
import functools

import jax
import numpy as np

# Training purposes, folded in after the step.
_TIMESTEPS, _NOISE, _DROPOUT, _OFFSET_NOISE, _MICROBATCH_DROPOUT, _LABEL_DROPOUT = 0, 1, 2, 3, 4, 5
# Other purposes, folded in first (offset by _RESERVED), then the index.
_RESERVED = 2**31
_GRID, _EVAL, _SAMPLE, _DEVICE_ORDER, _DEVICE_FLIP = 3, 4, 5, 6, 7
# Host (numpy) purposes: SeedSequence([seed, purpose]).
_HOST_ORDER, _HOST_FLIP, _HOLDOUT = 0, 1, 2


def base_key(seed: int) -> jax.Array:
  """Returns the run's base key (the train state's `rng`): every per-step and per-batch key derives from it."""
  return jax.random.PRNGKey(seed)


def params_init_key(seed: int) -> jax.Array:
  """Returns the key of the initial params.

  The RBG generator compiles the U-Net's init ~5x faster on CPU than threefry; only the
  initial params come from it, and they are checkpointed, so resume is unaffected. Its
  keys are of another generator than every other stream's.
  """
  return jax.random.key(seed, impl='rbg')


def _training_key(rng, step, purpose: int):
  return jax.random.fold_in(jax.random.fold_in(rng, step), purpose)


def timesteps_key(rng, step):
  """Returns the key of training step `step`'s diffusion timesteps."""
  return _training_key(rng, step, _TIMESTEPS)


def noise_key(rng, step):
  """Returns the key of training step `step`'s Gaussian noise."""
  return _training_key(rng, step, _NOISE)


def dropout_key(rng, step):
  """Returns the key of training step `step`'s dropout masks."""
  return _training_key(rng, step, _DROPOUT)


def offset_noise_key(rng, step):
  """Returns the key of training step `step`'s per-image, per-channel noise offsets (diffusion.offset_noise)."""
  return _training_key(rng, step, _OFFSET_NOISE)


def microbatch_dropout_key(rng, step, microbatch):
  """Returns the key of the dropout masks of microbatch `microbatch` of step `step` (training.grad_accum_steps > 1).

  Its own purpose, not a fold-in of `dropout_key`: that key's splits are Flax's to take.
  """
  return jax.random.fold_in(_training_key(rng, step, _MICROBATCH_DROPOUT), microbatch)


def label_dropout_key(rng, step):
  """Returns the key of training step `step`'s choice of the examples trained with the null class (label dropout)."""
  return _training_key(rng, step, _LABEL_DROPOUT)


def _reserved_key(rng, purpose: int, index):
  return jax.random.fold_in(jax.random.fold_in(rng, _RESERVED + purpose), index)


def device_order_key(rng, epoch):
  """Returns the key of epoch `epoch`'s permutation of the on-device training split (data.on_device)."""
  return _reserved_key(rng, _DEVICE_ORDER, epoch)


def device_flip_key(rng, step):
  """Returns the key of training step `step`'s horizontal flips of the on-device batch."""
  return _reserved_key(rng, _DEVICE_FLIP, step)


def grid_key(rng, batch: int):
  """Returns the key of batch `batch` of the periodic sample grids: the same noise at every step, to compare."""
  return _reserved_key(rng, _GRID, batch)


def eval_key(rng, batch: int):
  """Returns the key of batch `batch` of every evaluation: the same noise at every step, so curves are smoother."""
  return _reserved_key(rng, _EVAL, batch)


def sample_key(rng, checkpoint_step: int, batch: int):
  """Returns the key of batch `batch` of --mode=sample from checkpoint `checkpoint_step`."""
  return jax.random.fold_in(_reserved_key(rng, _SAMPLE, checkpoint_step), batch)


@functools.lru_cache(maxsize=None)  # the loader asks for it every batch; it depends on the run alone
def _host_seed(seed: int, purpose: int) -> int:
  """Returns a 32-bit seed for one host purpose, independent of the other purposes' seeds."""
  return int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0])


def host_order_rng(seed: int, epoch: int) -> np.random.Generator:
  """Returns the generator of epoch `epoch`'s order of the host loader's training split."""
  return np.random.default_rng([_host_seed(seed, _HOST_ORDER), epoch])


def host_flip_rng(seed: int, step: int) -> np.random.Generator:
  """Returns the generator of training step `step`'s flips in the host loader (drawn for the global batch)."""
  return np.random.default_rng([_host_seed(seed, _HOST_FLIP), step])


def holdout_rng(seed: int) -> np.random.Generator:
  """Returns the generator that picks a TFDS dataset's held-out 'test' images."""
  return np.random.default_rng([seed, _HOLDOUT])
