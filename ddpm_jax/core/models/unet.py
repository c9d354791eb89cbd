"""The DDPM U-Net of Ho et al. (2020) in Flax Linen, with ADM's options (Dhariwal & Nichol 2021).

By default layer for layer the network of the official `diffusion_tf/models/unet.py`, so
parameter counts match (35,746,307 for the CIFAR-10 model). ADM's changes are options, each
off by default: scale-shift norm (AdaGN), BigGAN-style resampling residual blocks, heads sized
by channels and guided-diffusion's timestep sinusoids; with all of them (and model.num_classes)
it is guided-diffusion's class-conditional U-Net, as diffusers' UNet2DModel writes it with
resnet_time_scale_shift='scale_shift', downsample_type='resnet', upsample_type='resnet'. Pure:
imports only jax, flax, numpy and the standard library.

Call: `UNet(config).apply(variables, x, t, labels, train=..., rngs={'dropout': key})`
with x float [B, H, W, C] (NHWC), t int32 [B] and, for a class-conditional model
(config.num_classes = K > 0), labels int32 [B] in [0, K], K being the null class
(labels=None: all null, the unconditional model); returns float32 [B, H, W, C].
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.core.models.unet_config import UNetConfig  # noqa: F401 (the model's config, imported from here too)

# diffusion_tf's `default_init`: variance scaling, fan_avg, uniform.
_default_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')


def count_params(params: Any) -> int:
  """Returns the number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def timestep_embedding(timesteps: jax.Array, dim: int, layout: str = 'ddpm') -> jax.Array:
  """Returns float32 [B, dim] sinusoidal embeddings: diffusion_tf's get_timestep_embedding, or guided-diffusion's.

  'ddpm': [sin, cos] at frequencies 10000^(-i/(dim/2-1)) (diffusers flip_sin_to_cos=False, freq_shift=1);
  'adm': [cos, sin] at 10000^(-i/(dim/2)) (flip_sin_to_cos=True, freq_shift=0).
  """
  half_dim = dim // 2
  log_step = math.log(10000) / (half_dim - (1 if layout == 'ddpm' else 0))
  freqs = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -log_step)
  args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
  halves = [jnp.sin(args), jnp.cos(args)]
  embedding = jnp.concatenate(halves if layout == 'ddpm' else halves[::-1], axis=1)
  if dim % 2:
    embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
  return embedding


def _conv(features: int, config: UNetConfig, name: str, kernel: int = 3, stride: int = 1,
          zero_init: bool = False) -> nn.Conv:
  """Returns a SAME-padded conv (TF padding semantics) in the compute dtype."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding='SAME',
                 dtype=config.compute_dtype, param_dtype=jnp.float32, name=name,
                 kernel_init=nn.initializers.zeros if zero_init else _default_init)


def _dense(features: int, config: UNetConfig, name: str, zero_init: bool = False) -> nn.Dense:
  """Returns a dense layer (diffusion_tf's `dense` and 1x1 `nin`) in the compute dtype."""
  return nn.Dense(features, dtype=config.compute_dtype, param_dtype=jnp.float32, name=name,
                  kernel_init=nn.initializers.zeros if zero_init else _default_init)


def _group_norm(config: UNetConfig, name: str) -> nn.GroupNorm:
  """Returns a GroupNorm that computes in float32 whatever the compute dtype, for stability."""
  return nn.GroupNorm(num_groups=config.num_groups, epsilon=config.norm_eps, dtype=jnp.float32,
                      param_dtype=jnp.float32, name=name)


def _resample(x: jax.Array, direction: str) -> jax.Array:
  """Returns x at half the side (2x2 average pooling, 'down') or twice it (nearest neighbour, 'up')."""
  if direction == 'down':
    return nn.avg_pool(x, (2, 2), strides=(2, 2))
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResBlock(nn.Module):
  """Residual block conditioned on the embedding between its two convs; resample='down'/'up' resamples inside it.

  The embedding is added before the second GroupNorm (DDPM) or sets its scale and shift
  (config.scale_shift_norm, ADM's AdaGN); a resampling block pools or repeats both paths right
  after the first norm, as ADM's and diffusers' `ResnetBlock2D(down=True / up=True)` do.
  """
  out_channels: int
  config: UNetConfig
  resample: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
    """Returns [B, H', W', out_channels], H' = H (or H / 2, 2 H when resampling)."""
    cfg = self.config
    h = nn.silu(_group_norm(cfg, 'norm1')(x))
    if self.resample:
      h, x = _resample(h, self.resample), _resample(x, self.resample)
    h = _conv(self.out_channels, cfg, 'conv1')(h)
    embedding = _dense(self.out_channels * (2 if cfg.scale_shift_norm else 1), cfg,
                       'temb_proj')(nn.silu(temb))[:, None, None, :]
    if cfg.scale_shift_norm:
      scale, shift = jnp.split(embedding, 2, axis=-1)
      h = _group_norm(cfg, 'norm2')(h) * (1 + scale) + shift
    else:
      h = _group_norm(cfg, 'norm2')(h + embedding)
    h = nn.silu(h)
    h = nn.Dropout(cfg.dropout, deterministic=not train)(h)
    # Zero-initialised so every block starts as the identity.
    h = _conv(self.out_channels, cfg, 'conv2', zero_init=True)(h)
    if x.shape[-1] != self.out_channels:
      x = _dense(self.out_channels, cfg, 'nin_shortcut')(x)
    return x + h


class AttentionBlock(nn.Module):
  """Multi-head self-attention over all H*W positions, with a residual add."""
  config: UNetConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns an array of x's shape."""
    cfg = self.config
    batch, height, width, channels = x.shape
    h = _group_norm(cfg, 'norm')(x).reshape(batch, height * width, channels)
    heads = cfg.heads(channels)
    head_shape = (batch, height * width, heads, channels // heads)
    q, k, v = (_dense(channels, cfg, name)(h).reshape(head_shape) for name in ('q', 'k', 'v'))
    # XLA:CPU lacks the float16 x float16 -> float32 dot that jax's attention asks for: attend in float32 there.
    upcast = q.dtype == jnp.float16 and jax.default_backend() == 'cpu'
    if upcast:
      q, k, v = (a.astype(jnp.float32) for a in (q, k, v))
    # Default scale is head_dim**-0.5, the original's C**-0.5 when num_heads == 1.
    h = jax.nn.dot_product_attention(q, k, v, implementation=cfg.attention_impl)
    h = h.astype(jnp.float16) if upcast else h
    h = h.reshape(batch, height, width, channels)
    return x + _dense(channels, cfg, 'proj_out', zero_init=True)(h)


# nn.remat keeps the explicit `name=` of each block, so the param tree is the same with or without it;
# `train` (argument 3, counting self) is a Python bool and must stay static.
_RematResBlock = nn.remat(ResBlock, static_argnums=(3,))
_RematAttentionBlock = nn.remat(AttentionBlock)


def _res_block(config: UNetConfig) -> type:
  """Returns the ResBlock class to build: rematerialised when config.remat."""
  return _RematResBlock if config.remat else ResBlock


def _attention_block(config: UNetConfig) -> type:
  """Returns the AttentionBlock class to build: rematerialised when config.remat."""
  return _RematAttentionBlock if config.remat else AttentionBlock


class TimestepMLP(nn.Module):
  """Sinusoidal timestep embedding followed by Dense-SiLU-Dense."""
  config: UNetConfig

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    """Returns [B, 4 * base_channels]."""
    cfg = self.config
    h = timestep_embedding(t, cfg.base_channels, cfg.time_embedding)
    h = _dense(4 * cfg.base_channels, cfg, 'dense0')(h)
    return _dense(4 * cfg.base_channels, cfg, 'dense1')(nn.silu(h))


class ClassEmbedding(nn.Module):
  """A learned embedding of num_classes + 1 rows (the last the null class), as ADM's label_emb."""
  config: UNetConfig

  @nn.compact
  def __call__(self, labels: Optional[jax.Array], batch_size: int) -> jax.Array:
    """Returns float32 [B, 4 * base_channels]: each label's row; labels=None takes the null class for all B."""
    cfg = self.config
    if labels is None:
      labels = jnp.full((batch_size,), cfg.num_classes, jnp.int32)
    table = self.param('embedding', nn.initializers.normal(1.0), (cfg.num_classes + 1, 4 * cfg.base_channels),
                       jnp.float32)
    return table[jnp.asarray(labels, jnp.int32)]


def _resample_block(x: jax.Array, temb: jax.Array, train: bool, config: UNetConfig, direction: str,
                    name: str) -> jax.Array:
  """Returns x resampled ('down'/'up') by a residual block (config.resblock_updown) or a conv, x's channels kept."""
  if config.resblock_updown:
    return _res_block(config)(x.shape[-1], config, resample=direction, name=name)(x, temb, train)
  if direction == 'down':
    return _conv(x.shape[-1], config, name, stride=2)(x)
  return _conv(x.shape[-1], config, name)(_resample(x, 'up'))


class Encoder(nn.Module):
  """The down path: input conv, then res (+attention) blocks and downsamples."""
  config: UNetConfig

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> list:
    """Returns every intermediate feature map, the input of the middle block last."""
    cfg = self.config
    skips = [_conv(cfg.base_channels, cfg, 'conv_in')(x)]
    last_level = len(cfg.channel_mults) - 1
    for level, channels in enumerate(cfg.level_channels()):
      for block in range(cfg.num_res_blocks):
        h = _res_block(cfg)(channels, cfg, name=f'level{level}_res{block}')(skips[-1], temb, train)
        if h.shape[1] in cfg.attention_resolutions:
          h = _attention_block(cfg)(cfg, name=f'level{level}_attn{block}')(h)
        skips.append(h)
      if level != last_level:
        skips.append(_resample_block(skips[-1], temb, train, cfg, 'down', f'level{level}_downsample'))
    return skips


class Decoder(nn.Module):
  """The up path: res (+attention) blocks fed with the skips, then upsamples."""
  config: UNetConfig

  @nn.compact
  def __call__(self, h: jax.Array, skips: list, temb: jax.Array, train: bool) -> jax.Array:
    """Returns [B, H, W, base_channels] after consuming every skip."""
    cfg = self.config
    skips = list(skips)
    for level in reversed(range(len(cfg.channel_mults))):
      channels = cfg.level_channels()[level]
      for block in range(cfg.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = _res_block(cfg)(channels, cfg, name=f'level{level}_res{block}')(h, temb, train)
        if h.shape[1] in cfg.attention_resolutions:
          h = _attention_block(cfg)(cfg, name=f'level{level}_attn{block}')(h)
      if level != 0:
        h = _resample_block(h, temb, train, cfg, 'up', f'level{level}_upsample')
    return h


class UNet(nn.Module):
  """The DDPM noise-prediction network; output channels equal input channels."""
  config: UNetConfig

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, labels: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    """Returns float32 [B, H, W, C], the network's prediction for x [B, H, W, C] at steps t [B] (of classes labels)."""
    cfg = self.config
    temb = TimestepMLP(cfg, name='temb')(t)
    if cfg.num_classes:
      temb = temb + ClassEmbedding(cfg, name='class_embed')(labels, t.shape[0])
    elif labels is not None:
      raise ValueError('labels given to an unconditional model (model.num_classes=0)')
    skips = Encoder(cfg, name='down')(x, temb, train)
    h = _res_block(cfg)(skips[-1].shape[-1], cfg, name='mid_res1')(skips[-1], temb, train)
    h = _attention_block(cfg)(cfg, name='mid_attn')(h)
    h = _res_block(cfg)(h.shape[-1], cfg, name='mid_res2')(h, temb, train)
    h = Decoder(cfg, name='up')(h, skips, temb, train)
    h = nn.silu(_group_norm(cfg, 'norm_out')(h))
    h = _conv(x.shape[-1], cfg, 'conv_out', zero_init=True)(h)
    return h.astype(jnp.float32)
