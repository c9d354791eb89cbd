"""The DDPM U-Net of Ho et al. (2020) in Flax Linen.

Layer for layer the network of the official `diffusion_tf/models/unet.py`, so
parameter counts match (35,746,307 for the CIFAR-10 model). Pure: imports only
jax, flax, numpy and the standard library.

Call: `UNet(config).apply(variables, x, t, labels, train=..., rngs={'dropout': key})`
with x float [B, H, W, C] (NHWC), t int32 [B] and, for a class-conditional model
(config.num_classes = K > 0), labels int32 [B] in [0, K], K being the null class
(labels=None: all null, the unconditional model); returns float32 [B, H, W, C].
"""
import dataclasses
import math
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.core.options import check_options, option

# float16 needs dynamic loss scaling in the train step (its range is too narrow for raw gradients).
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
_ATTENTION_IMPLS = (None, 'xla', 'cudnn')

# diffusion_tf's `default_init`: variance scaling, fan_avg, uniform.
_default_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """The model's section of the config (`config.model`); the defaults are the study's 63M-parameter network."""
  base_channels: int = option(128, 'channels at the first resolution', low=4)
  channel_mults: Tuple[int, ...] = option((1, 2, 3, 3), 'channels = base * mult per resolution; one downsample '
                                          'between levels', low=1)
  num_res_blocks: int = option(2, 'residual blocks per resolution on the way down', low=1)
  attention_resolutions: Tuple[int, ...] = option((16,), 'feature-map sizes that get self-attention', low=1)
  num_heads: int = option(4, 'attention heads', low=1)
  dropout: float = option(0.1, 'dropout inside residual blocks during training', low=0.0, high=1.0, high_open=True)
  num_groups: int = option(32, 'GroupNorm groups', low=1)
  norm_eps: float = option(1e-6, "GroupNorm epsilon (diffusion_tf's 1e-6; diffusers models often use 1e-5)",
                           low=0.0, high=1.0, low_open=True, high_open=True)
  dtype: str = option('float32', 'compute dtype of convs and attention; params, EMA and Adam stay float32 '
                      '(float16 scales the loss dynamically)', choices=tuple(_DTYPES))
  attention_impl: Optional[str] = option(None, "jax.nn.dot_product_attention's implementation: None picks cuDNN's "
                                         "fused kernel where it applies, else XLA", choices=_ATTENTION_IMPLS)
  num_classes: int = option(0, 'class-conditional: K classes, a learned class embedding added to the timestep '
                            'embedding, plus a null class (id K) for guidance; 0 = unconditional', low=0)
  remat: bool = option(False, "recompute each res/attention block's activations in the backward pass: less "
                       'memory, more time')

  def __post_init__(self):
    # ConfigDict slices hand over lists; a frozen, hashable config needs tuples.
    resolutions = self.attention_resolutions
    if isinstance(resolutions, int):
      resolutions = (resolutions,)
    object.__setattr__(self, 'channel_mults', tuple(int(m) for m in self.channel_mults))
    object.__setattr__(self, 'attention_resolutions', tuple(int(r) for r in resolutions))

  @property
  def compute_dtype(self) -> Any:
    """Returns the jnp dtype that convolutions and dense layers compute in."""
    return _DTYPES[self.dtype]

  @property
  def res_block(self) -> type:
    """Returns the ResBlock class to build: rematerialised when self.remat."""
    return _RematResBlock if self.remat else ResBlock

  @property
  def attention_block(self) -> type:
    """Returns the AttentionBlock class to build: rematerialised when self.remat."""
    return _RematAttentionBlock if self.remat else AttentionBlock

  def level_channels(self) -> Tuple[int, ...]:
    """Returns the channel count at each resolution level, top first."""
    return tuple(self.base_channels * m for m in self.channel_mults)

  def resolutions(self, image_size: int) -> Tuple[int, ...]:
    """Returns the feature-map side at each resolution level, top first."""
    return tuple(image_size // 2**i for i in range(len(self.channel_mults)))

  def validate(self, image_size: int) -> None:
    """Returns None; raises a one-line ValueError naming the first bad value."""
    _validate_choices(self)
    _validate_image_size(self, image_size)
    _validate_channels(self, image_size)


def _validate_choices(config: UNetConfig) -> None:
  """Returns None; raises ValueError for a value its option refuses (the config's own check) or no levels."""
  # base_channels >= 4: the sinusoidal embedding divides by (base_channels // 2 - 1).
  check_options(config, 'model.')
  if not config.channel_mults:
    raise ValueError(f'model.channel_mults={config.channel_mults} must name at least one level')


def _validate_image_size(config: UNetConfig, image_size: int) -> None:
  """Returns None; raises ValueError when the levels cannot halve image_size."""
  factor = 2**(len(config.channel_mults) - 1)
  if image_size < factor or image_size % factor:
    raise ValueError(f'image_size={image_size} does not fit {len(config.channel_mults)} levels '
                     f'(model.channel_mults={config.channel_mults}); it must be a multiple of '
                     f'{factor} and >= {factor}')
  reached = config.resolutions(image_size)
  unreachable = [r for r in config.attention_resolutions if r not in reached]
  if unreachable:
    raise ValueError(f'model.attention_resolutions={config.attention_resolutions}: {unreachable} '
                     f'never reached at image_size={image_size}; valid resolutions are '
                     f'{list(reached)}')


def _validate_channels(config: UNetConfig, image_size: int) -> None:
  """Returns None; raises ValueError when GroupNorm groups or heads don't divide channels."""
  for channels in config.level_channels():
    if channels % config.num_groups:
      raise ValueError(f'model.num_groups={config.num_groups} does not divide {channels} channels '
                       f'(model.base_channels={config.base_channels} x model.channel_mults='
                       f'{config.channel_mults}); pick a divisor of every level\'s channels')
  attended = dict(zip(config.resolutions(image_size), config.level_channels()))
  # The middle block always attends, at the last level's channels.
  needs_heads = {attended[r] for r in config.attention_resolutions} | {config.level_channels()[-1]}
  for channels in sorted(needs_heads):
    if channels % config.num_heads:
      raise ValueError(f'model.num_heads={config.num_heads} does not divide {channels} channels '
                       f'of an attention block; pick a divisor of {sorted(needs_heads)}')


def count_params(params: Any) -> int:
  """Returns the number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def timestep_embedding(timesteps: jax.Array, dim: int) -> jax.Array:
  """Returns float32 [B, dim] sinusoidal embeddings, as diffusion_tf's get_timestep_embedding."""
  half_dim = dim // 2
  log_step = math.log(10000) / (half_dim - 1)
  freqs = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -log_step)
  args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
  embedding = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
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


class ResBlock(nn.Module):
  """Residual block with the timestep embedding added between its two convs."""
  out_channels: int
  config: UNetConfig

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
    """Returns [B, H, W, out_channels]."""
    cfg = self.config
    h = _conv(self.out_channels, cfg, 'conv1')(nn.silu(_group_norm(cfg, 'norm1')(x)))
    h = h + _dense(self.out_channels, cfg, 'temb_proj')(nn.silu(temb))[:, None, None, :]
    h = nn.silu(_group_norm(cfg, 'norm2')(h))
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
    head_shape = (batch, height * width, cfg.num_heads, channels // cfg.num_heads)
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


class TimestepMLP(nn.Module):
  """Sinusoidal timestep embedding followed by Dense-SiLU-Dense."""
  config: UNetConfig

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    """Returns [B, 4 * base_channels]."""
    cfg = self.config
    h = timestep_embedding(t, cfg.base_channels)
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
        h = cfg.res_block(channels, cfg, name=f'level{level}_res{block}')(skips[-1], temb, train)
        if h.shape[1] in cfg.attention_resolutions:
          h = cfg.attention_block(cfg, name=f'level{level}_attn{block}')(h)
        skips.append(h)
      if level != last_level:
        skips.append(_conv(channels, cfg, f'level{level}_downsample', stride=2)(skips[-1]))
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
        h = cfg.res_block(channels, cfg, name=f'level{level}_res{block}')(h, temb, train)
        if h.shape[1] in cfg.attention_resolutions:
          h = cfg.attention_block(cfg, name=f'level{level}_attn{block}')(h)
      if level != 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
        h = _conv(channels, cfg, f'level{level}_upsample')(h)
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
    h = cfg.res_block(skips[-1].shape[-1], cfg, name='mid_res1')(skips[-1], temb, train)
    h = cfg.attention_block(cfg, name='mid_attn')(h)
    h = cfg.res_block(h.shape[-1], cfg, name='mid_res2')(h, temb, train)
    h = Decoder(cfg, name='up')(h, skips, temb, train)
    h = nn.silu(_group_norm(cfg, 'norm_out')(h))
    h = _conv(x.shape[-1], cfg, 'conv_out', zero_init=True)(h)
    return h.astype(jnp.float32)
