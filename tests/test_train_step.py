"""The jitted train step: it learns, its EMA follows the formula, and its randomness is keyed by step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.core import schedules, train_step
from ddpm_jax.core.models.unet import UNet, UNetConfig

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                  num_groups=4, dropout=0.0)


def setup(ema_decay=0.9, loss='mse', prediction='eps', learning_rate=3e-3):
  model = UNet(TINY)
  schedule = schedules.make_schedule('linear', 100)
  optimizer = train_step.make_optimizer(learning_rate, 0, 1.0)
  params = train_step.init_params(model, 8, seed=0)
  state = train_step.create_train_state(params, optimizer, jax.random.PRNGKey(1))
  step = train_step.make_train_step(model.apply, schedule, optimizer, loss=loss, prediction=prediction,
                                    ema_decay=ema_decay)
  return state, step


@pytest.fixture(scope='module')
def compiled():
  """Returns (a function giving fresh copies of the initial state, the jitted step), compiled once."""
  state, step = setup()
  return (lambda: jax.tree_util.tree_map(jnp.copy, state)), step


def fixed_batch():
  rng = np.random.default_rng(0)
  return {'image': jnp.asarray(np.clip(rng.normal(0, 0.5, (16, 8, 8, 3)), -1, 1), jnp.float32)}


def test_eps_mse_loss_at_initialisation_is_about_one(compiled):
  # The output conv is zero-initialised: the first loss is E[eps^2] = 1.
  fresh, step = compiled
  _, metrics = step(fresh(), fixed_batch())
  assert abs(float(metrics['loss']) - 1.0) < 0.1


def test_train_step_lowers_the_loss_on_a_fixed_batch(compiled):
  fresh, step = compiled
  state = fresh()
  batch = fixed_batch()
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
  assert int(state.step) == 40


def test_ema_follows_its_formula_with_warm_up(compiled):
  fresh, step = compiled  # ema_decay=0.9
  state = fresh()
  before = jax.tree_util.tree_map(np.asarray, state.ema_params)
  new_state, _ = step(state, fixed_batch())
  decay = min(0.9, 1 / 10)  # warm-up at step 0
  expected = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * np.asarray(p), before, new_state.params)
  for got, want in zip(jax.tree_util.tree_leaves(new_state.ema_params), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
  assert float(train_step.ema_decay_at(10_000, 0.9999)) == pytest.approx(10_001 / 10_010)
  assert float(train_step.ema_decay_at(10_000_000, 0.9999)) == pytest.approx(0.9999)


def test_step_randomness_depends_on_the_step_not_on_history(compiled):
  # Two states that differ only in their step counter draw different timesteps and noise;
  # the same state always draws the same ones (resume is exact by construction).
  fresh, step = compiled
  state = fresh()
  batch = fixed_batch()
  copy = jax.tree_util.tree_map(jnp.copy, state)
  later = jax.tree_util.tree_map(jnp.copy, state).replace(step=jnp.asarray(7, jnp.int32))
  _, m1 = step(state, batch)
  _, m2 = step(copy, batch)
  assert float(m1['loss']) == float(m2['loss'])
  _, m3 = step(later, batch)
  assert float(m3['loss']) != float(m1['loss'])


def test_state_is_donated(compiled):
  fresh, step = compiled
  state = fresh()
  params_leaf = jax.tree_util.tree_leaves(state.params)[0]
  step(state, fixed_batch())
  assert params_leaf.is_deleted()


def test_make_train_step_rejects_unknown_names():
  schedule = schedules.make_schedule('linear', 100)
  optimizer = train_step.make_optimizer(1e-3, 0, 1.0)
  with pytest.raises(ValueError, match="unknown loss 'l1'; valid: mse, mae, huber"):
    train_step.make_train_step(UNet(TINY).apply, schedule, optimizer, loss='l1', prediction='eps', ema_decay=0.9)
  with pytest.raises(ValueError, match="unknown prediction 'score'; valid: eps, x0, v"):
    train_step.make_train_step(UNet(TINY).apply, schedule, optimizer, loss='mse', prediction='score', ema_decay=0.9)


def test_a_non_finite_step_is_not_applied_and_counted(compiled):
  fresh, step = compiled
  state = fresh()
  before = jax.tree_util.tree_map(np.asarray, (state.params, state.ema_params, state.opt_state))
  bad = {'image': fixed_batch()['image'].at[0, 0, 0, 0].set(jnp.nan)}
  state, metrics = step(state, bad)
  assert int(metrics['nonfinite_steps']) == 1 and int(state.nonfinite_streak) == 1 and int(state.step) == 1
  after = jax.tree_util.tree_map(np.asarray, (state.params, state.ema_params, state.opt_state))
  for x, y in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
    np.testing.assert_array_equal(x, y)
  state, _ = step(state, bad)
  assert int(state.nonfinite_streak) == 2
  state, metrics = step(state, fixed_batch())
  assert int(metrics['nonfinite_steps']) == 0 and int(state.nonfinite_streak) == 0
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state.params))
