"""diffusers' UNet2DModel in the DDPM or ADM layout and our U-Net: the configs, both ways (the weights:
`diffusers_weights`).

diffusers names a module by its block and position (`down_blocks.1.resnets.0`), we by level and
block (`down/level1_res0`); the up path counts its blocks from the bottom there, from the top here.
Convolutions are OIHW there and HWIO here, linear layers [out, in] there and [in, out] here, and
GroupNorm's `weight` is our `scale`. ADM's options map onto diffusers' keys: model.scale_shift_norm is
resnet_time_scale_shift='scale_shift', model.resblock_updown is downsample_type/upsample_type='resnet'
(with ResnetDownsampleBlock2D/ResnetUpsampleBlock2D as the plain blocks), model.num_head_channels is
attention_head_dim, model.time_embedding='adm' is flip_sin_to_cos=True with freq_shift=0, and
model.num_classes = K is num_class_embeds = K + 1, the last row our null class, which the exported
config records under NULL_CLASS_KEY. A diffusers config this U-Net cannot express is refused with
one line naming the key and its value; nothing here reads files or imports torch.
"""
from ddpm_jax.core.models.unet import UNetConfig

# UNet2DModel's constructor defaults (diffusers 0.30-0.42): a config.json omits the keys left at them.
UNET_DEFAULTS = {
    'sample_size': None, 'in_channels': 3, 'out_channels': 3, 'center_input_sample': False,
    'time_embedding_type': 'positional', 'time_embedding_dim': None, 'freq_shift': 0, 'flip_sin_to_cos': True,
    'down_block_types': ('DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'),
    'mid_block_type': 'UNetMidBlock2D', 'up_block_types': ('AttnUpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D',
                                                            'UpBlock2D'),
    'block_out_channels': (224, 448, 672, 896), 'layers_per_block': 2, 'mid_block_scale_factor': 1,
    'downsample_padding': 1, 'downsample_type': 'conv', 'upsample_type': 'conv', 'dropout': 0.0, 'act_fn': 'silu',
    'attention_head_dim': 8, 'norm_num_groups': 32, 'attn_norm_num_groups': None, 'norm_eps': 1e-5,
    'resnet_time_scale_shift': 'default', 'add_attention': True, 'class_embed_type': None, 'num_class_embeds': None,
    'num_train_timesteps': None,
}
# What every variant of our U-Net is. Any other value of these keys is another network.
FIXED = {
    'in_channels': 3, 'out_channels': 3, 'center_input_sample': False, 'time_embedding_type': 'positional',
    'mid_block_type': 'UNetMidBlock2D', 'mid_block_scale_factor': 1, 'act_fn': 'silu', 'add_attention': True,
    'class_embed_type': None,
}
# model.time_embedding -> diffusers' (flip_sin_to_cos, freq_shift).
TIME_EMBEDDINGS = {'ddpm': (False, 1), 'adm': (True, 0)}
# model.scale_shift_norm -> resnet_time_scale_shift.
SCALE_SHIFT = {False: 'default', True: 'scale_shift'}
# model.resblock_updown -> downsample_type and upsample_type, and the (down, up) blocks that resample so.
SAMPLING = {False: 'conv', True: 'resnet'}
PLAIN_BLOCKS = {'conv': ('DownBlock2D', 'UpBlock2D'), 'resnet': ('ResnetDownsampleBlock2D', 'ResnetUpsampleBlock2D')}
PLAIN, ATTENTION = PLAIN_BLOCKS['conv'], ('AttnDownBlock2D', 'AttnUpBlock2D')
# An exported class-conditional config's record that its last class embedding is the null class (its id).
# diffusers skips config keys that start with '_', so the exported model loads there as any other.
NULL_CLASS_KEY = '_null_class'
CLASS_EMBEDDING = 'class_embedding.weight'


def _refuse(key: str, value, why: str) -> ValueError:
  return ValueError(f'diffusers UNet2DModel config {key}={value!r}: {why}')


def _attended_levels(down_types, up_types, sampling: str) -> list[bool]:
  """Returns, per level, whether it attends; refuses block types our U-Net lacks, that disagree or resample otherwise."""
  if len(up_types) != len(down_types):
    raise _refuse('up_block_types', list(up_types), f'needs {len(down_types)} blocks, one per down block')
  attends, last = [], len(down_types) - 1
  for level, (down, up) in enumerate(zip(down_types, reversed(up_types))):
    for key, kind, index, side in (('down_block_types', down, level, 0), ('up_block_types', up, last - level, 1)):
      # A level that doesn't resample (the bottom one down, the top one up) may take either family's plain block.
      resamples = level != (last if side == 0 else 0)
      valid = (PLAIN_BLOCKS[sampling][side],) if resamples else tuple(p[side] for p in PLAIN_BLOCKS.values())
      if kind not in valid + (ATTENTION[side],):
        raise _refuse(f'{key}[{index}]', kind, f'not supported with downsample_type=upsample_type={sampling!r}; '
                      f'valid: {", ".join(valid + (ATTENTION[side],))}')
    if (down in ATTENTION) != (up in ATTENTION):
      raise _refuse(f'up_block_types[{len(up_types) - 1 - level}]', up, f'must attend as down block {level} '
                    f'({down}) does: both levels share one set of attention resolutions here')
    attends.append(down in ATTENTION)
  return attends


def _heads(head_dim, attended_channels: list[int]) -> dict:
  """Returns model.num_heads (one count for every block) or model.num_head_channels (one head width) of head_dim."""
  if head_dim is None:
    return {'num_heads': 1}  # diffusers then makes the head as wide as the block: one head
  if any(channels % head_dim for channels in attended_channels):
    raise _refuse('attention_head_dim', head_dim, f'does not divide the attention blocks\' '
                  f'{sorted(set(attended_channels))} channels; this U-Net\'s heads split the width exactly')
  heads = {channels // head_dim for channels in attended_channels}
  return {'num_heads': heads.pop()} if len(heads) == 1 else {'num_head_channels': int(head_dim)}


def _choice(config: dict, table: dict, key: str):
  """Returns our value whose diffusers value of key is config[key]; refuses any other."""
  for ours, theirs in table.items():
    if config[key] == theirs:
      return ours
  raise _refuse(key, config[key], f'valid: {", ".join(repr(v) for v in table.values())}')


def _time_embedding(config: dict) -> str:
  """Returns model.time_embedding of flip_sin_to_cos and freq_shift; refuses the pairs neither layout has."""
  pair = (config['flip_sin_to_cos'], config['freq_shift'])
  for name, layout in TIME_EMBEDDINGS.items():
    if pair == layout:
      return name
  raise _refuse('flip_sin_to_cos', config['flip_sin_to_cos'], f'with freq_shift={config["freq_shift"]!r} is neither '
                'DDPM\'s sinusoids (flip_sin_to_cos=False, freq_shift=1) nor ADM\'s (True, 0)')


def _sampling(config: dict) -> str:
  """Returns the resampling kind ('conv' or 'resnet') both paths share; refuses others and a mixed pair."""
  sampling = SAMPLING[_choice(config, SAMPLING, 'downsample_type')]
  if config['upsample_type'] != sampling:
    raise _refuse('upsample_type', config['upsample_type'], f'must equal downsample_type={sampling!r}: '
                  'model.resblock_updown resamples both paths alike')
  if sampling == 'conv' and config['downsample_padding'] != 0:
    raise _refuse('downsample_padding', config['downsample_padding'], 'this U-Net\'s strided conv pads as '
                  'TensorFlow\'s SAME (diffusion_tf\'s layout): 0')
  return sampling


def _num_classes(config: dict, null_class) -> int:
  """Returns model.num_classes: num_class_embeds - 1 when the config records its last row as the null class."""
  embeds = config['num_class_embeds']
  if embeds is None:
    return 0
  if not isinstance(embeds, int) or embeds < 1:
    raise _refuse('num_class_embeds', embeds, 'must be None or a number of classes >= 1')
  if null_class is None:
    return embeds
  if null_class != embeds - 1 or embeds < 2:
    raise _refuse(NULL_CLASS_KEY, null_class, f'must be the last class embedding, num_class_embeds - 1 = '
                  f'{embeds - 1} (of at least 1 class)')
  return embeds - 1


def learned_null_class(source: dict) -> bool:
  """Returns whether a diffusers config records its last class embedding as a learned null class (ours do)."""
  return source.get('num_class_embeds') is not None and source.get(NULL_CLASS_KEY) is not None


def unet_config_from_diffusers(source: dict) -> tuple[UNetConfig, int]:
  """Returns (our UNetConfig, the image size) of a diffusers UNet2DModel config dict."""
  if source.get('_class_name', 'UNet2DModel') != 'UNet2DModel':
    raise _refuse('_class_name', source['_class_name'], 'only UNet2DModel maps onto this U-Net')
  config = {**UNET_DEFAULTS, **{k: v for k, v in source.items() if not k.startswith('_')}}
  for key, value in FIXED.items():
    if config[key] != value:
      raise _refuse(key, config[key], f'this U-Net has {key}={value!r}')
  size = config['sample_size']
  if isinstance(size, (list, tuple)):
    size = size[0] if len(set(size)) == 1 else None
  if not isinstance(size, int):
    raise _refuse('sample_size', config['sample_size'], 'needs one square side in pixels')
  channels = [int(c) for c in config['block_out_channels']]
  base = channels[0]
  if any(c % base for c in channels):
    raise _refuse('block_out_channels', channels, f'every entry must be a multiple of the first ({base})')
  if config['time_embedding_dim'] not in (None, 4 * base):
    raise _refuse('time_embedding_dim', config['time_embedding_dim'], f'this U-Net has 4 x {base} = {4 * base}')
  scale_shift = _choice(config, SCALE_SHIFT, 'resnet_time_scale_shift')
  if config['attn_norm_num_groups'] not in (None, config['norm_num_groups']):
    raise _refuse('attn_norm_num_groups', config['attn_norm_num_groups'], 'must equal norm_num_groups')
  if scale_shift and config['attn_norm_num_groups'] is None:
    raise _refuse('attn_norm_num_groups', None, "with resnet_time_scale_shift='scale_shift' diffusers' middle "
                  f'attention has no GroupNorm, this U-Net\'s has: set it to norm_num_groups={config["norm_num_groups"]}')
  sampling = _sampling(config)
  attends = _attended_levels(config['down_block_types'], config['up_block_types'], sampling)
  attended = [c for c, a in zip(channels, attends) if a] + [channels[-1]]  # the middle block always attends
  unet = UNetConfig(base_channels=base, channel_mults=tuple(c // base for c in channels),
                    num_res_blocks=int(config['layers_per_block']),
                    attention_resolutions=tuple(size // 2**level for level, a in enumerate(attends) if a),
                    **_heads(config['attention_head_dim'], attended), dropout=float(config['dropout']),
                    num_groups=int(config['norm_num_groups']), norm_eps=float(config['norm_eps']),
                    scale_shift_norm=scale_shift, resblock_updown=sampling == 'resnet',
                    time_embedding=_time_embedding(config),
                    num_classes=_num_classes(config, source.get(NULL_CLASS_KEY)))
  return unet, size


def unet_config_to_diffusers(unet: UNetConfig, image_size: int) -> dict:
  """Returns the diffusers UNet2DModel config dict of our UNetConfig at image_size."""
  attends = [r in unet.attention_resolutions for r in unet.resolutions(image_size)]
  channels = unet.level_channels()
  attended = {c for c, a in zip(channels, attends) if a} | {channels[-1]}
  if unet.num_head_channels != -1:
    head_dim = unet.num_head_channels
  elif unet.num_heads == 1:
    head_dim = None
  elif len({c // unet.num_heads for c in attended}) == 1:
    head_dim = channels[-1] // unet.num_heads
  else:
    raise ValueError(f'model.num_heads={unet.num_heads} gives the attention blocks of {sorted(attended)} channels '
                     'different head sizes; diffusers\' UNet2DModel has one attention_head_dim (set '
                     'model.num_head_channels instead)')
  sampling = SAMPLING[unet.resblock_updown]
  plain = PLAIN_BLOCKS[sampling]
  flip_sin_to_cos, freq_shift = TIME_EMBEDDINGS[unet.time_embedding]
  classes = {'num_class_embeds': unet.num_classes + 1, NULL_CLASS_KEY: unet.num_classes} if unet.num_classes else \
      {'num_class_embeds': None}
  return {
      '_class_name': 'UNet2DModel', **FIXED, 'sample_size': image_size, 'block_out_channels': list(channels),
      'layers_per_block': unet.num_res_blocks, 'attention_head_dim': head_dim, 'norm_num_groups': unet.num_groups,
      # diffusers' middle attention normalises with these groups; under 'scale_shift' only when told.
      'attn_norm_num_groups': unet.num_groups if unet.scale_shift_norm else None, 'norm_eps': unet.norm_eps,
      'dropout': unet.dropout, 'time_embedding_dim': None, 'flip_sin_to_cos': flip_sin_to_cos,
      'freq_shift': freq_shift, 'resnet_time_scale_shift': SCALE_SHIFT[unet.scale_shift_norm],
      'downsample_type': sampling, 'upsample_type': sampling, 'downsample_padding': 0,
      'down_block_types': [ATTENTION[0] if a else plain[0] for a in attends],
      'up_block_types': [ATTENTION[1] if a else plain[1] for a in reversed(attends)],
      'num_train_timesteps': None, **classes,
  }
