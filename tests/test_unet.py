"""Tests of the DDPM U-Net: shapes, parameter counts, conditioning, dropout, validation."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.core.models.unet import UNet, UNetConfig, count_params, timestep_embedding

# The official diffusion_tf CIFAR-10 model (Ho et al. 2020) has 35,746,307 parameters.
CIFAR_CONFIG = UNetConfig(base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                          attention_resolutions=(16,), num_heads=1, dropout=0.1, num_groups=32)
CIFAR_PARAMS = 35_746_307

# Tiny configs so every test runs in seconds on a CPU.
TINY_8PX = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                      attention_resolutions=(4,), num_heads=2, dropout=0.5, num_groups=4)
TINY_16PX = UNetConfig(base_channels=16, channel_mults=[1, 2, 2], num_res_blocks=1,
                       attention_resolutions=[8], num_heads=4, dropout=0.1, num_groups=8)


def closed_form_params(config, image_size, in_channels):
  """Returns the DDPM U-Net's parameter count, summed layer by layer from the paper's design."""
  sides = [image_size // 2**i for i in range(len(config.channel_mults))]
  attn_levels = {i for i, side in enumerate(sides) if side in config.attention_resolutions}
  conv = lambda k, cin, cout: k * k * cin * cout + cout
  dense = lambda cin, cout: cin * cout + cout
  norm = lambda c: 2 * c
  temb_dim = 4 * config.base_channels
  res = lambda cin, cout: (norm(cin) + conv(3, cin, cout) + dense(temb_dim, cout) + norm(cout)
                           + conv(3, cout, cout) + (dense(cin, cout) if cin != cout else 0))
  attn = lambda c: norm(c) + 4 * dense(c, c)
  ch = config.base_channels
  total = dense(ch, temb_dim) + dense(temb_dim, temb_dim) + conv(3, in_channels, ch)
  skips, current = [ch], ch
  levels = len(config.channel_mults)
  for level, mult in enumerate(config.channel_mults):
    for _ in range(config.num_res_blocks):
      total += res(current, ch * mult) + (attn(ch * mult) if level in attn_levels else 0)
      current = ch * mult
      skips.append(current)
    if level != levels - 1:
      total += conv(3, current, current)
      skips.append(current)
  total += 2 * res(current, current) + attn(current)
  for level in reversed(range(levels)):
    for _ in range(config.num_res_blocks + 1):
      total += res(current + skips.pop(), ch * config.channel_mults[level])
      current = ch * config.channel_mults[level]
      total += attn(current) if level in attn_levels else 0
    if level != 0:
      total += conv(3, current, current)
  return total + norm(ch) + conv(3, ch, in_channels)


def param_shapes(config, image_size, channels=3):
  """Returns the params pytree of ShapeDtypeStructs, without allocating or computing anything."""
  x = jnp.zeros((1, image_size, image_size, channels))
  t = jnp.zeros((1,), jnp.int32)
  return jax.eval_shape(functools.partial(UNet(config).init, train=False),
                        jax.random.key(0), x, t)['params']


@functools.lru_cache(maxsize=None)
def random_params(config, image_size, channels):
  """Returns params of the model's shapes drawn from N(0, 0.1^2), so no layer is zero.

  Filled on the host: a real init would also leave the zero-initialised layers at
  zero, and compiling it costs ~1 min on a loaded CPU.
  """
  rng = np.random.default_rng(0)
  fill = lambda leaf: jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), jnp.float32)
  return jax.tree_util.tree_map(fill, param_shapes(config, image_size, channels))


@functools.partial(jax.jit, static_argnames=('config', 'train'))
def apply(config, params, x, t, train, key=None):
  """Returns the U-Net output, jitted so tests share compilations; key=None passes no rngs."""
  rngs = {} if key is None else {'dropout': key}
  return UNet(config).apply({'params': params}, x, t, train=train, rngs=rngs)


def random_inputs(image_size, channels, batch=2):
  """Returns a fixed random image batch and timesteps."""
  x = jax.random.normal(jax.random.key(2), (batch, image_size, image_size, channels))
  return x, jnp.arange(batch, dtype=jnp.int32) * 100


def test_cifar_param_count_matches_official_model():
  assert count_params(param_shapes(CIFAR_CONFIG, 32)) == CIFAR_PARAMS
  assert closed_form_params(CIFAR_CONFIG, 32, 3) == CIFAR_PARAMS


@pytest.mark.parametrize('config, image_size, channels', [(TINY_8PX, 8, 1), (TINY_16PX, 16, 4)])
def test_tiny_param_count_matches_closed_form(config, image_size, channels):
  expected = closed_form_params(config, image_size, channels)
  assert count_params(param_shapes(config, image_size, channels)) == expected


@pytest.mark.parametrize('config, image_size, channels', [(TINY_8PX, 8, 3), (TINY_16PX, 16, 4)])
def test_output_has_input_shape_and_float32(config, image_size, channels):
  x, t = random_inputs(image_size, channels)
  out = apply(config, random_params(config, image_size, channels), x, t, False)
  assert out.shape == x.shape
  assert out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()


def test_fresh_init_predicts_zero_like_the_original():
  # The output conv is zero-initialised, as in diffusion_tf.
  x, t = random_inputs(8, 3)
  # An 'rbg' key: compiling the threefry init takes ~4x longer on CPU.
  variables = jax.jit(UNet(TINY_8PX).init)(jax.random.key(0, impl='rbg'), x, t)
  assert np.all(np.asarray(apply(TINY_8PX, variables['params'], x, t, False)) == 0.0)


def test_bfloat16_compute_close_to_float32_with_float32_params():
  config_bf16 = dataclasses.replace(TINY_16PX, dtype='bfloat16')
  params = random_params(TINY_16PX, 16, 4)
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(param_shapes(config_bf16, 16, 4))} == {
      jnp.dtype(jnp.float32)}
  x, t = random_inputs(16, 4)
  out_bf16 = apply(config_bf16, params, x, t, False)
  out_f32 = apply(TINY_16PX, params, x, t, False)
  assert out_bf16.dtype == jnp.float32 and out_bf16.shape == x.shape
  scale = float(jnp.abs(out_f32).mean())
  difference = float(jnp.abs(out_bf16 - out_f32).mean())
  assert 0.0 < difference < 0.05 * scale  # really computed in bf16, and still close


def test_remat_keeps_the_param_names_the_loss_and_the_gradients():
  remat = dataclasses.replace(TINY_8PX, remat=True)
  # Checkpoints of runs without remat restore into a model with it: the same tree of the same shapes.
  assert param_shapes(remat, 8) == param_shapes(TINY_8PX, 8)
  params = random_params(TINY_8PX, 8, 3)
  x, t = random_inputs(8, 3)

  @functools.partial(jax.jit, static_argnames='config')
  def loss_and_grads(config, params):
    loss = lambda p: jnp.mean(jnp.square(apply(config, p, x, t, True, jax.random.key(3)) - x))
    return jax.value_and_grad(loss)(params)

  # Really rematerialised: jax.checkpoint keeps XLA from merging the recomputation into the forward pass.
  barriers = lambda config: loss_and_grads.lower(config, params).as_text().count('optimization_barrier')
  assert barriers(remat) > 0 and barriers(TINY_8PX) == 0
  (loss, grads), (remat_loss, remat_grads) = loss_and_grads(TINY_8PX, params), loss_and_grads(remat, params)
  # Another program may sum the 2 x 8 x 8 x 3 squared errors in another order: eps32 * sqrt(384) ~ 2e-6 apart at
  # most (seen: 2e-7); other dropout masks move the loss by ~10%.
  np.testing.assert_allclose(float(remat_loss), float(loss), rtol=1e-5)  # dropout 0.5: the same masks too
  for got, want in zip(jax.tree_util.tree_leaves(remat_grads), jax.tree_util.tree_leaves(grads)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_float16_compute_keeps_float32_params_and_output():
  config = dataclasses.replace(TINY_8PX, dtype='float16')
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(param_shapes(config, 8))} == {jnp.dtype(jnp.float32)}
  x, t = random_inputs(8, 3)
  out = apply(config, random_params(TINY_8PX, 8, 3), x, t, False)
  reference = apply(TINY_8PX, random_params(TINY_8PX, 8, 3), x, t, False)
  assert out.dtype == jnp.float32
  assert 0.0 < float(jnp.abs(out - reference).mean()) < 0.01 * float(jnp.abs(reference).mean())


def test_timestep_changes_the_output():
  params = random_params(TINY_8PX, 8, 3)
  x, _ = random_inputs(8, 3)
  early = apply(TINY_8PX, params, x, jnp.array([0, 0], jnp.int32), False)
  late = apply(TINY_8PX, params, x, jnp.array([500, 500], jnp.int32), False)
  assert float(jnp.abs(early - late).mean()) > 1e-3 * float(jnp.abs(early).mean())


def test_timestep_embedding_matches_closed_form():
  emb = timestep_embedding(jnp.array([0, 7], jnp.int32), 8)
  # dim 8: frequencies 10000**(-i/3), sin half then cos half.
  freqs = 10000.0**(-np.arange(4) / 3)
  expected = np.concatenate([np.sin(np.outer([0, 7], freqs)), np.cos(np.outer([0, 7], freqs))], 1)
  np.testing.assert_allclose(np.asarray(emb), expected, rtol=1e-5, atol=1e-6)


def test_dropout_only_in_training():
  params = random_params(TINY_8PX, 8, 3)
  x, t = random_inputs(8, 3)
  # Flax raises for a missing 'dropout' rng if dropout were active outside training.
  evaluation = apply(TINY_8PX, params, x, t, False)
  train = lambda seed: apply(TINY_8PX, params, x, t, True, jax.random.key(seed))
  np.testing.assert_array_equal(np.asarray(train(0)), np.asarray(train(0)))
  assert float(jnp.abs(train(0) - train(1)).mean()) > 1e-3
  assert float(jnp.abs(train(0) - evaluation).mean()) > 1e-3


def test_config_normalises_lists_to_tuples():
  config = UNetConfig(channel_mults=[1, 2], attention_resolutions=[8])
  assert config.channel_mults == (1, 2) and config.attention_resolutions == (8,)
  hash(config)  # usable as a static jit argument


@pytest.mark.parametrize('overrides, image_size, fragment', [
    ({}, 30, 'image_size=30 does not fit 4 levels'),
    ({}, 4, 'must be a multiple of 8 and >= 8'),
    ({'attention_resolutions': (12,)}, 32,
     '[12] never reached at image_size=32; valid resolutions are [32, 16, 8, 4]'),
    ({'num_groups': 48}, 32, 'model.num_groups=48'),
    ({'num_heads': 3}, 32, 'model.num_heads=3'),
    ({'dtype': 'float64'}, 32, "model.dtype='float64'"),
    ({'attention_impl': 'flash'}, 32, "model.attention_impl='flash'"),
    ({'num_head_channels': 48}, 32, 'model.num_head_channels=48 does not divide 256 channels'),
    ({'num_head_channels': 0}, 32, 'model.num_head_channels=0 must be -1'),
    ({'time_embedding': 'edm'}, 32, "model.time_embedding='edm'"),
])
def test_validate_names_the_bad_value(overrides, image_size, fragment):
  config = dataclasses.replace(CIFAR_CONFIG, **overrides)
  with pytest.raises(ValueError) as error:
    config.validate(image_size)
  assert fragment in str(error.value)
  assert '\n' not in str(error.value)


def test_validate_accepts_good_configs():
  CIFAR_CONFIG.validate(32)
  TINY_8PX.validate(8)
  TINY_16PX.validate(16)


# ADM's options at once (Dhariwal & Nichol 2021): AdaGN, residual up/downsampling, 4-channel heads, its sinusoids.
TINY_ADM = dataclasses.replace(TINY_16PX, scale_shift_norm=True, resblock_updown=True, num_head_channels=4,
                               time_embedding='adm', attention_resolutions=(16, 8), num_classes=3)


def test_adm_timestep_embedding_matches_closed_form():
  emb = timestep_embedding(jnp.array([0, 7], jnp.int32), 8, 'adm')
  # guided-diffusion's: frequencies 10000**(-i/4), cos half then sin half.
  freqs = 10000.0**(-np.arange(4) / 4)
  expected = np.concatenate([np.cos(np.outer([0, 7], freqs)), np.sin(np.outer([0, 7], freqs))], 1)
  np.testing.assert_allclose(np.asarray(emb), expected, rtol=1e-5, atol=1e-6)


def test_attention_at_several_resolutions_matches_closed_form():
  config = dataclasses.replace(TINY_16PX, attention_resolutions=(16, 8, 4))
  assert count_params(param_shapes(config, 16, 3)) == closed_form_params(config, 16, 3) > \
      count_params(param_shapes(TINY_16PX, 16, 3))


def test_adm_options_shape_the_blocks_and_keep_remat_names():
  shapes = param_shapes(TINY_ADM, 16)
  temb_dim = 4 * TINY_ADM.base_channels
  # AdaGN: the embedding projects to a scale and a shift per channel.
  assert shapes['down']['level0_res0']['temb_proj']['kernel'].shape == (temb_dim, 2 * 16)
  # A residual block downsamples (no strided conv) and upsamples (no upsampling conv).
  assert set(shapes['down']['level0_downsample']) == {'norm1', 'conv1', 'temb_proj', 'norm2', 'conv2'}
  assert set(shapes['up']['level1_upsample']) == {'norm1', 'conv1', 'temb_proj', 'norm2', 'conv2'}
  assert param_shapes(dataclasses.replace(TINY_ADM, remat=True), 16) == shapes
  TINY_ADM.validate(16)
