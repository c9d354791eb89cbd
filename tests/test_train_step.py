"""The jitted train step: it learns, its EMA follows the formula, and its randomness is keyed by step."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import runs
from ddpm_jax.config import checks
from ddpm_jax.core import device_data, diffusion, keys, loss_scale, schedules, sharding, train_step
from ddpm_jax.core.models.unet import UNet, UNetConfig

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                  num_groups=4, dropout=0.0)


def setup(ema_decay=0.9, loss='mse', prediction='eps', learning_rate=3e-3, batch_sharding=None, **options):
  model = UNet(TINY)
  schedule = schedules.make_schedule('linear', 100)
  optimizer = train_step.make_optimizer(learning_rate, 0, 1.0)
  params = train_step.init_params(model, 8, seed=0)
  state = train_step.create_train_state(params, optimizer, jax.random.PRNGKey(1))
  objective = train_step.Objective(loss=loss, prediction=prediction, ema_decay=ema_decay, **options)
  step = train_step.make_train_step(model.apply, schedule, optimizer, objective, batch_sharding=batch_sharding)
  return state, step


@pytest.fixture(scope='module')
def compiled():
  """Returns (a function giving fresh copies of the initial state, the jitted step), compiled once.

  The copies are placed on the mesh as the step returns its state, so the step compiles once, not twice.
  """
  state, step = setup()
  mesh = sharding.make_mesh()
  return (lambda: sharding.replicate(jax.tree_util.tree_map(jnp.copy, state), mesh)), step


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
  later = jax.tree_util.tree_map(jnp.copy, state).replace(step=state.step + 7)  # placed as state.step
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


def test_min_snr_weighting_reaches_the_train_step(compiled):
  fresh, plain_step = compiled
  _, weighted_step = setup(loss_weighting='min_snr', min_snr_gamma=5.0)
  state, batch = fresh(), fixed_batch()
  schedule = schedules.make_schedule('linear', 100)
  t = jax.random.randint(keys.timesteps_key(state.rng, state.step), (16,), 0, 100)
  noise = jax.random.normal(keys.noise_key(state.rng, state.step), batch['image'].shape)
  model_fn = lambda x_t, tt: UNet(TINY).apply({'params': state.params}, x_t, tt)
  expected = jax.jit(lambda: diffusion.loss_fn(model_fn, schedule, batch['image'], t, noise, loss='mse',
                                               prediction='eps', loss_weighting='min_snr', min_snr_gamma=5.0))()
  _, weighted = weighted_step(fresh(), batch)
  _, plain = plain_step(fresh(), batch)
  # The step's program and loss_fn's alone may sum the 16 x 8 x 8 x 3 terms in other orders: eps32 * sqrt(3072)
  # ~ 7e-6 apart at most; the weighting moves the loss by > 1e-3.
  np.testing.assert_allclose(float(weighted['loss']), float(expected), rtol=3e-5)
  assert abs(float(weighted['loss']) - float(plain['loss'])) > 1e-3


def test_make_train_step_rejects_unknown_names():
  schedule = schedules.make_schedule('linear', 100)
  optimizer = train_step.make_optimizer(1e-3, 0, 1.0)
  with pytest.raises(ValueError, match="unknown loss 'l1'; valid: mse, mae, huber"):
    train_step.make_train_step(UNet(TINY).apply, schedule, optimizer, train_step.Objective(loss='l1'))
  with pytest.raises(ValueError, match="unknown prediction 'score'; valid: eps, x0, v"):
    train_step.make_train_step(UNet(TINY).apply, schedule, optimizer, train_step.Objective(prediction='score'))


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


# --- training.grad_accum_steps, training.ema_warmup, diffusion.offset_noise, float16 with loss scaling ---

def tree_max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def run_steps(step, state, batch, count):
  """Returns (state, losses) after `count` steps on batch."""
  losses = []
  for _ in range(count):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  return state, losses


@pytest.fixture(scope='module')
def accumulating():
  """Returns (images on device, the jitted data.on_device step of 4 microbatches without EMA warm-up), compiled once."""
  mesh = sharding.make_mesh()
  images = device_data.to_device(np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), np.uint8), mesh)
  step = train_step.make_device_data_train_step(
      UNet(TINY).apply, schedules.make_schedule('linear', 100), train_step.make_optimizer(3e-3, 0, 1.0),
      train_step.Objective(ema_decay=0.9, grad_accum_steps=4, ema_warmup=False), batch_size=16, flip=True,
      batch_sharding=sharding.batch_sharded(mesh))
  return images, step


def test_four_microbatches_of_on_device_data_equal_one_step_on_the_whole_batch(compiled, accumulating, adam_atol):
  fresh, whole_step = compiled
  images, step = accumulating
  draw = jax.jit(device_data.device_batch, static_argnames=('batch_size', 'flip'))
  accumulated, whole = fresh(), fresh()
  for _ in range(3):  # 2 batches an epoch: the third step starts a new permutation
    # On the host, as the other tests' batches are: the whole-batch step then needs no second compile.
    batch = jax.device_get(draw(images, whole.step, whole.rng, batch_size=16, flip=True))
    whole, whole_metrics = whole_step(whole, batch)
    accumulated, metrics = step(accumulated, images)
    # Both ~1, means of 16 x 8 x 8 x 3 float32 terms summed in another order: ~eps32 * sqrt(3072) = 7e-6 apart at
    # most (seen: 2e-6), while a wrong microbatch scale moves them by 4x.
    for name in ('loss', 'grad_norm'):  # the norm of the mean gradient: Adam alone would hide a wrong scale
      np.testing.assert_allclose(float(metrics[name]), float(whole_metrics[name]), rtol=3e-5)
  # Adam at 3e-3 amplifies the other order of the gradients' sums (16 images x 64 pixels): ~1e-4 (seen: 2e-5).
  assert tree_max_diff(accumulated.params, whole.params) < adam_atol(3e-3, 16 * 64)  # (not the EMA: no warm-up)
  assert tree_max_diff(accumulated.params, fresh().params) > 1e-3  # the steps did move the params


def test_ema_without_warm_up_decays_at_ema_decay_from_the_first_step(compiled, accumulating):
  assert float(train_step.ema_decay_at(0, 0.9, warmup=False)) == pytest.approx(0.9)
  assert float(train_step.ema_decay_at(0, 0.9)) == pytest.approx(0.1)
  state = compiled[0]()
  before = jax.tree_util.tree_map(np.asarray, state.ema_params)
  new_state, _ = accumulating[1](state, accumulating[0])
  expected = jax.tree_util.tree_map(lambda e, p: 0.9 * e + 0.1 * np.asarray(p), before, new_state.params)
  assert tree_max_diff(new_state.ema_params, expected) < 1e-7


def test_offset_noise_adds_a_constant_per_image_and_channel_and_zero_draws_nothing():
  rng, x0 = jax.random.PRNGKey(1), jnp.zeros((64, 8, 8, 3))
  plain = jax.random.normal(keys.noise_key(rng, 5), x0.shape)
  np.testing.assert_array_equal(train_step.draw_noise(rng, 5, x0, 0.0), plain)
  offset = np.asarray(train_step.draw_noise(rng, 5, x0, 0.5) - plain)
  np.testing.assert_allclose(offset, np.broadcast_to(offset[:, :1, :1, :], offset.shape), atol=1e-6)
  per_image_channel = offset[:, 0, 0, :]
  assert 0.35 < per_image_channel.std() < 0.65 and len(np.unique(per_image_channel)) == per_image_channel.size


def float16_setup(initial_scale=loss_scale.INITIAL_SCALE):
  model = UNet(dataclasses.replace(TINY, dtype='float16'))
  optimizer = train_step.make_optimizer(3e-3, 0, 1.0)
  params = train_step.init_params(model, 8, seed=0)
  state = train_step.create_train_state(params, optimizer, jax.random.PRNGKey(1), loss_scale.init(initial_scale))
  step = train_step.make_train_step(model.apply, schedules.make_schedule('linear', 100), optimizer,
                                    train_step.Objective(ema_decay=0.9))
  return sharding.replicate(state, sharding.make_mesh()), step  # placed as the step returns it: one compile


@pytest.fixture(scope='module')
def float16_step():
  """Returns the jitted step of the tiny U-Net computing in float16 (its state carries a loss scale)."""
  return float16_setup()[1]


def test_float16_trains_the_tiny_model_like_float32(compiled, float16_step):
  fresh, float32_step = compiled
  _, float32_losses = run_steps(float32_step, fresh(), fixed_batch(), 5)
  state, float16_losses = float16_setup()[0], []
  for _ in range(5):
    state, metrics = float16_step(state, fixed_batch())
    float16_losses.append(float(metrics['loss']))
    assert int(metrics['overflow_steps']) == 0 and int(metrics['nonfinite_steps']) == 0
  np.testing.assert_allclose(float16_losses, float32_losses, rtol=2e-2)
  assert float(metrics['loss_scale']) == loss_scale.INITIAL_SCALE
  assert state.params['conv_out']['kernel'].dtype == jnp.float32 and int(state.loss_scale.good_steps) == 5


def test_a_float16_overflow_is_skipped_and_counted_apart_from_nan_steps(float16_step):
  # A scale of 2**100 overflows float16 in the backward pass: skipped, the scale halved, no NaN step counted.
  state = float16_setup(initial_scale=2.0**100)[0]
  state = state.replace(nonfinite_streak=state.nonfinite_streak + 1)  # placed as the step's input: no recompile
  before = jax.tree_util.tree_map(np.asarray, (state.params, state.ema_params, state.opt_state))
  after, metrics = float16_step(state, fixed_batch())
  assert np.isfinite(float(metrics['loss'])) and float(metrics['loss_scale']) == 2.0**100
  assert int(metrics['overflow_steps']) == 1 and int(metrics['nonfinite_steps']) == 0
  assert int(after.nonfinite_streak) == 1 and int(after.step) == 1
  assert float(after.loss_scale.scale) == 2.0**99 and int(after.loss_scale.good_steps) == 0
  assert tree_max_diff((after.params, after.ema_params, after.opt_state), before) == 0.0
  # A NaN loss is a NaN step, not an overflow: it counts toward training.max_nonfinite_steps.
  bad = {'image': fixed_batch()['image'].at[0, 0, 0, 0].set(jnp.nan)}
  after, metrics = float16_step(after, bad)
  assert int(metrics['overflow_steps']) == 0 and int(metrics['nonfinite_steps']) == 1
  assert int(after.nonfinite_streak) == 2 and float(after.loss_scale.scale) == 2.0**99


def test_the_loss_scale_doubles_after_a_run_of_finite_steps_and_stays_after_a_nan_loss():
  scale = loss_scale.init(8.0).replace(good_steps=jnp.asarray(loss_scale.GROWTH_INTERVAL - 1, jnp.int32))
  grown = loss_scale.update(scale, jnp.asarray(True), jnp.asarray(False))
  assert float(grown.scale) == 16.0 and int(grown.good_steps) == 0
  kept = loss_scale.update(scale, jnp.asarray(False), jnp.asarray(False))
  assert float(kept.scale) == 8.0 and int(kept.good_steps) == loss_scale.GROWTH_INTERVAL - 1
  floor = loss_scale.init(loss_scale.MIN_SCALE)
  assert not bool(loss_scale.is_overflow(floor, jnp.asarray(True), jnp.asarray(False)))  # a NaN step at scale 1


@pytest.mark.parametrize('overrides, devices, message', [
    ({'training.grad_accum_steps': 0}, 1, 'training.grad_accum_steps=0 must be >= 1'),
    ({'training.grad_accum_steps': 3}, 1, 'training.batch_size=8 is not divisible by training.grad_accum_steps=3'),
    ({'training.grad_accum_steps': 4}, 4, 'training.batch_size=8 / training.grad_accum_steps=4 = 2 rows per '
     'microbatch is not divisible by the 4 devices'),
    ({'diffusion.offset_noise': -0.1}, 1, 'diffusion.offset_noise=-0.1 must be >= 0'),
    ({'diffusion.offset_noise': float('nan')}, 1, 'diffusion.offset_noise=nan must be a finite number'),
])
def test_bad_step_options_are_one_line_errors(overrides, devices, message):
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    checks.check_batch(runs.tiny_config(overrides), device_count=devices)  # batch 8
  assert '\n' not in str(error.value)
  checks.check_batch(runs.tiny_config({'training.grad_accum_steps': 2}), device_count=4)


# --- class-conditional batches: label dropout (training.label_dropout) ---

# One level, no attention: compiles in half TINY's time. 3 classes, the null class 3.
CONDITIONAL = UNetConfig(base_channels=8, channel_mults=(1,), num_res_blocks=1, attention_resolutions=(),
                         num_groups=4, dropout=0.0, num_classes=3)


def labelled_batch(labels=None):
  labels = np.arange(16) % 3 if labels is None else labels
  return dict(fixed_batch(), label=jnp.asarray(labels, jnp.int32))


def test_label_dropout_nulls_its_fraction_from_its_own_key_and_the_same_at_every_call():
  rng, labels = jax.random.PRNGKey(1), jnp.asarray(np.arange(4096) % 3, jnp.int32)
  objective = train_step.Objective(label_dropout=0.25, null_label=3)
  dropped = np.asarray(train_step.drop_labels(rng, 5, labels, objective))
  null = dropped == 3
  assert abs(null.mean() - 0.25) < 0.03  # 4096 draws: a standard deviation of 0.007
  np.testing.assert_array_equal(dropped[~null], np.asarray(labels)[~null])
  np.testing.assert_array_equal(null, jax.random.bernoulli(keys.label_dropout_key(rng, 5), 0.25, (4096,)))
  np.testing.assert_array_equal(train_step.drop_labels(rng, 5, labels, objective), dropped)  # as a resumed run
  assert not np.array_equal(train_step.drop_labels(rng, 6, labels, objective), dropped)
  np.testing.assert_array_equal(train_step.drop_labels(rng, 5, labels, train_step.Objective(null_label=3)), labels)
  assert train_step.drop_labels(rng, 5, None, objective) is None
  with pytest.raises(ValueError, match=r'^training.label_dropout=1.0 must lie in \[0, 1\)$'):
    train_step.Objective(label_dropout=1.0).check()


def test_a_batch_without_labels_trains_the_program_of_before_whatever_the_label_dropout():
  scale = lambda variables, x_t, t, train, rngs: variables['params'] * x_t  # a stand-in model: the step is checked
  optimizer = train_step.make_optimizer(3e-3, 0, 1.0)
  state, batch = train_step.create_train_state(jnp.ones(()), optimizer, jax.random.PRNGKey(1)), fixed_batch()
  program = lambda objective: str(jax.make_jaxpr(lambda s, b: train_step.train_step(
      s, b, apply_fn=scale, schedule=schedules.make_schedule('linear', 100), optimizer=optimizer,
      objective=objective))(state, batch))
  assert program(train_step.Objective(ema_decay=0.9)) == program(
      train_step.Objective(ema_decay=0.9, label_dropout=0.3, null_label=5))


@pytest.fixture(scope='module')
def conditional_steps():
  """Returns (fresh copies of the 3-class tiny U-Net's state after one step, its step, its 4-microbatch step).

  Both steps drop half the labels. The state has taken 3 steps: at initialisation the zero-initialised
  output conv (and each residual block's last conv, until the output conv moved) hide the class embedding.
  """
  model, mesh = UNet(CONDITIONAL), sharding.make_mesh()
  optimizer = train_step.make_optimizer(3e-3, 0, 1.0)
  state = train_step.create_train_state(train_step.init_params(model, 8, seed=0), optimizer, jax.random.PRNGKey(1))
  state = sharding.replicate(state, mesh)
  make = lambda k: train_step.make_train_step(
      model.apply, schedules.make_schedule('linear', 100), optimizer,
      train_step.Objective(ema_decay=0.9, ema_warmup=False, grad_accum_steps=k, label_dropout=0.5, null_label=3),
      batch_sharding=sharding.batch_sharded(mesh))
  step, accumulating = make(1), make(4)
  state, _ = run_steps(step, state, labelled_batch(), 3)
  return (lambda: jax.tree_util.tree_map(jnp.copy, state)), step, accumulating


def test_the_step_trains_kept_labels_and_the_null_class_for_the_dropped_ones(conditional_steps):
  fresh, step, _ = conditional_steps
  state = fresh()
  labels = np.arange(16) % 3
  dropped = np.asarray(train_step.drop_labels(state.rng, state.step, labels, train_step.Objective(
      label_dropout=0.5, null_label=3))) == 3
  assert 0 < dropped.sum() < 16
  loss = lambda batch_labels: float(step(fresh(), labelled_batch(batch_labels))[1]['loss'])
  reference = loss(labels)
  assert loss(np.where(dropped, 3, labels)) == reference  # the dropped rows train the null class
  assert loss(np.where(dropped, (labels + 1) % 3, labels)) == reference  # whatever their labels were
  assert loss(np.where(dropped, labels, (labels + 1) % 3)) != reference  # the kept rows train their own class


def test_four_microbatches_with_labels_equal_one_step_on_the_whole_batch(conditional_steps, adam_atol):
  fresh, whole_step, step = conditional_steps
  whole, accumulated = fresh(), fresh()
  for _ in range(2):
    whole, whole_metrics = whole_step(whole, labelled_batch())
    accumulated, metrics = step(accumulated, labelled_batch())
    for name in ('loss', 'grad_norm'):  # as for unlabelled microbatches above
      np.testing.assert_allclose(float(metrics[name]), float(whole_metrics[name]), rtol=3e-5)
  assert tree_max_diff(accumulated.params, whole.params) < adam_atol(3e-3, 16 * 64)
  assert tree_max_diff(accumulated.params['class_embed'], fresh().params['class_embed']) > 1e-3
