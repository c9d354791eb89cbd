"""The U-Net's typed config, `config.model`: every option's type, default, range and doc, and the checks across them.

Pure: imports only jax and the standard library.
"""
import dataclasses
from typing import Any, Optional, Tuple

import jax.numpy as jnp

from ddpm_jax.core.options import check_options, option

# float16 needs dynamic loss scaling in the train step (its range is too narrow for raw gradients).
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
_ATTENTION_IMPLS = (None, 'xla', 'cudnn')
_TIME_EMBEDDINGS = ('ddpm', 'adm')


def _check_head_channels(key: str, value: int) -> None:
  """Raises a one-line ValueError for 0, the one value in [-1, inf) that means nothing."""
  if value == 0:
    raise ValueError(f'{key}=0 must be -1 (use model.num_heads) or >= 1 channels per head')



@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """The model's section of the config (`config.model`); the defaults are the study's 63M-parameter network."""
  base_channels: int = option(128, 'channels at the first resolution', low=4)
  channel_mults: Tuple[int, ...] = option((1, 2, 3, 3), 'channels = base * mult per resolution; one downsample '
                                          'between levels', low=1)
  num_res_blocks: int = option(2, 'residual blocks per resolution on the way down', low=1)
  attention_resolutions: Tuple[int, ...] = option((16,), 'feature-map sizes that get self-attention', low=1)
  num_heads: int = option(4, 'attention heads (when model.num_head_channels=-1)', low=1)
  num_head_channels: int = option(-1, "channels per attention head, so heads = width // this at each width (ADM's "
                                  "num_head_channels, diffusers' attention_head_dim); -1 = model.num_heads heads",
                                  low=-1, check=_check_head_channels)
  scale_shift_norm: bool = option(False, "ADM's AdaGN: each residual block projects the timestep (+class) "
                                  'embedding to a scale and a shift, h = norm(h) * (1 + scale) + shift, instead of '
                                  'adding it before the norm')
  resblock_updown: bool = option(False, "ADM's BigGAN-style resampling: a residual block that average-pools (down) "
                                 'or repeats pixels (up) replaces the strided conv and the upsampling conv')
  time_embedding: str = option('ddpm', "timestep sinusoids: 'ddpm' = diffusion_tf's (sin, cos; 10000^(-i/(d/2-1))), "
                               "'adm' = guided-diffusion's (cos, sin; 10000^(-i/(d/2)))", choices=_TIME_EMBEDDINGS)
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

  def heads(self, channels: int) -> int:
    """Returns the number of heads of an attention block of `channels` channels."""
    return self.num_heads if self.num_head_channels == -1 else channels // self.num_head_channels

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
  key, value = ('model.num_heads', config.num_heads) if config.num_head_channels == -1 else \
      ('model.num_head_channels', config.num_head_channels)
  for channels in sorted(needs_heads):
    if channels % value:
      raise ValueError(f'{key}={value} does not divide {channels} channels of an attention block; '
                       f'pick a divisor of {sorted(needs_heads)}')
