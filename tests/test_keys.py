"""Every random stream of a run (ddpm_jax/core/keys.py) is its own: no two give the same key."""
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.core import keys

STEPS, BATCHES, MICROBATCHES = 10_000, 100, 4


def key_rows(fn, *indices) -> np.ndarray:
  """Returns the raw uint32 words of fn(rng, *index) over the grid of indices, one row per key."""
  rng = keys.base_key(0)
  grids = [g.ravel() for g in np.meshgrid(*[np.asarray(i, np.int32) for i in indices], indexing='ij')]
  made = jax.jit(jax.vmap(lambda *i: jax.random.key_data(fn(rng, *i))))(*map(jnp.asarray, grids))
  return np.asarray(made).reshape(len(grids[0]), -1)


def streams() -> dict:
  """Returns {stream: its keys} over the first 10,000 steps (or epochs), 4 microbatches and 100 sample batches."""
  steps, batches = np.arange(STEPS), np.arange(BATCHES)
  return {
      'timesteps': key_rows(keys.timesteps_key, steps),
      'noise': key_rows(keys.noise_key, steps),
      'dropout': key_rows(keys.dropout_key, steps),
      'offset noise': key_rows(keys.offset_noise_key, steps),
      'label dropout': key_rows(keys.label_dropout_key, steps),
      'microbatch dropout': key_rows(keys.microbatch_dropout_key, steps, np.arange(MICROBATCHES)),
      'device data order': key_rows(keys.device_order_key, steps),
      'device data flips': key_rows(keys.device_flip_key, steps),
      'grid samples': key_rows(keys.grid_key, batches),
      'evaluation samples': key_rows(keys.eval_key, batches),
      # --mode=sample at checkpoints 0..9 and at a late one.
      'sample mode': key_rows(keys.sample_key, np.r_[0:10, 300_000], batches),
  }


def test_no_two_streams_give_the_same_key():
  named = streams()
  everything = np.concatenate(list(named.values()))
  owners = np.concatenate([[name] * len(rows) for name, rows in named.items()])
  # The keys, and the first subkeys their consumers split off (split(key)[i] == fold_in(key, i)).
  _, first, counts = np.unique(everything, axis=0, return_index=True, return_counts=True)
  repeated = first[counts > 1]
  assert not len(repeated), f'{len(repeated)} keys repeat, e.g. one of {owners[repeated[0]]}'
  assert len(everything) == (7 + MICROBATCHES) * STEPS + 2 * BATCHES + 11 * BATCHES


def test_splits_of_a_stream_do_not_land_on_another_stream():
  # fold_in(key, i) is split(key)[i]: a stream whose keys folded a small number into another stream's key
  # would equal the subkeys that stream's consumer splits off (as the on-device data key once did).
  named = streams()
  children = np.concatenate([np.asarray(jax.vmap(lambda k: jax.random.key_data(jax.random.split(
      jax.random.wrap_key_data(k), 2)))(jnp.asarray(rows[:1000]))).reshape(-1, 2) for rows in named.values()])
  parents = np.concatenate([rows[:1000] for rows in named.values()])
  both = np.concatenate([parents, children])
  assert len(np.unique(both, axis=0)) == len(both)


def test_training_keys_are_those_of_earlier_versions():
  # Existing runs resume bit-exactly: timesteps, noise and dropout are fold_in(fold_in(rng, step), 0 / 1 / 2).
  rng = keys.base_key(7)
  for purpose, fn in enumerate((keys.timesteps_key, keys.noise_key, keys.dropout_key)):
    old = jax.random.fold_in(jax.random.fold_in(rng, 123), purpose)
    np.testing.assert_array_equal(jax.random.key_data(fn(rng, 123)), jax.random.key_data(old))


def test_host_streams_are_those_of_earlier_versions_and_differ_from_each_other():
  def old_seed(seed, purpose):
    return int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0])

  np.testing.assert_array_equal(keys.host_order_rng(5, 2).permutation(50),
                                np.random.default_rng([old_seed(5, 0), 2]).permutation(50))
  np.testing.assert_array_equal(keys.host_flip_rng(5, 9).random(8),
                                np.random.default_rng([old_seed(5, 1), 9]).random(8))
  np.testing.assert_array_equal(keys.holdout_rng(5).random(8), np.random.default_rng([5, 2]).random(8))
  draws = [keys.host_order_rng(5, 0).random(8), keys.host_flip_rng(5, 0).random(8), keys.holdout_rng(5).random(8)]
  assert len({d.tobytes() for d in draws}) == 3


def test_streams_depend_on_the_seed():
  assert not np.array_equal(jax.random.key_data(keys.grid_key(keys.base_key(0), 0)),
                            jax.random.key_data(keys.grid_key(keys.base_key(1), 0)))
