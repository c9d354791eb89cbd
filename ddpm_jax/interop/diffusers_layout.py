"""diffusers' UNet2DModel in the DDPM layout and our U-Net: configs and weights, both ways, in numpy.

diffusers names a module by its block and position (`down_blocks.1.resnets.0`), we by level and
block (`down/level1_res0`); the up path counts its blocks from the bottom there, from the top here.
Convolutions are OIHW there and HWIO here, linear layers [out, in] there and [in, out] here, and
GroupNorm's `weight` is our `scale`. A diffusers config this U-Net cannot express is refused with
one line naming the key and its value; nothing here reads files or imports torch.
"""
import math
import re

import numpy as np

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
# What our U-Net is: diffusion_tf's layout. Any other value of these keys is another network.
FIXED = {
    'in_channels': 3, 'out_channels': 3, 'center_input_sample': False, 'time_embedding_type': 'positional',
    'freq_shift': 1, 'flip_sin_to_cos': False, 'mid_block_type': 'UNetMidBlock2D', 'mid_block_scale_factor': 1,
    'downsample_padding': 0, 'downsample_type': 'conv', 'upsample_type': 'conv', 'act_fn': 'silu',
    'resnet_time_scale_shift': 'default', 'add_attention': True, 'class_embed_type': None, 'num_class_embeds': None,
}
PLAIN, ATTENTION = ('DownBlock2D', 'UpBlock2D'), ('AttnDownBlock2D', 'AttnUpBlock2D')
# Renamed by diffusers in 0.14; older weight files (google/ddpm-*) still use the old names.
_OLD_ATTENTION_NAMES = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}
_RES_LAYERS = {'temb_proj': 'time_emb_proj', 'nin_shortcut': 'conv_shortcut'}
_ATTENTION_LAYERS = {'norm': 'group_norm', 'q': 'to_q', 'k': 'to_k', 'v': 'to_v', 'proj_out': 'to_out.0'}


def _refuse(key: str, value, why: str) -> ValueError:
  return ValueError(f'diffusers UNet2DModel config {key}={value!r}: {why}')


def _attended_levels(down_types, up_types) -> list[bool]:
  """Returns, per level, whether it attends; refuses block types our U-Net lacks or that disagree."""
  if len(up_types) != len(down_types):
    raise _refuse('up_block_types', list(up_types), f'needs {len(down_types)} blocks, one per down block')
  attends = []
  for level, (down, up) in enumerate(zip(down_types, reversed(up_types))):
    for key, kind, index in (('down_block_types', down, level), ('up_block_types', up, len(up_types) - 1 - level)):
      if kind not in PLAIN + ATTENTION:
        raise _refuse(f'{key}[{index}]', kind, f'not supported; valid: {", ".join(PLAIN + ATTENTION)}')
    if (down in ATTENTION) != (up in ATTENTION):
      raise _refuse(f'up_block_types[{len(up_types) - 1 - level}]', up, f'must attend as down block {level} '
                    f'({down}) does: both levels share one set of attention resolutions here')
    attends.append(down in ATTENTION)
  return attends


def _num_heads(head_dim, attended_channels: list[int]) -> int:
  """Returns the one head count every attention block has; refuses head sizes that give several."""
  if head_dim is None:
    return 1  # diffusers then makes the head as wide as the block: one head
  heads = {channels // head_dim for channels in attended_channels}
  if len(heads) != 1 or any(channels % head_dim for channels in attended_channels):
    raise _refuse('attention_head_dim', head_dim, f'gives blocks of {sorted(set(attended_channels))} channels '
                  'different head counts; this U-Net has one num_heads for every attention block')
  return heads.pop()


def unet_config_from_diffusers(source: dict) -> tuple[UNetConfig, int]:
  """Returns (our UNetConfig, the image size) of a diffusers UNet2DModel config dict."""
  if source.get('_class_name', 'UNet2DModel') != 'UNet2DModel':
    raise _refuse('_class_name', source['_class_name'], 'only UNet2DModel maps onto this U-Net')
  config = {**UNET_DEFAULTS, **{k: v for k, v in source.items() if not k.startswith('_')}}
  for key, value in FIXED.items():
    if config[key] != value:
      raise _refuse(key, config[key], f'this U-Net (diffusion_tf\'s layout) has {key}={value!r}')
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
  if config['attn_norm_num_groups'] not in (None, config['norm_num_groups']):
    raise _refuse('attn_norm_num_groups', config['attn_norm_num_groups'], 'must equal norm_num_groups')
  attends = _attended_levels(config['down_block_types'], config['up_block_types'])
  attended = [c for c, a in zip(channels, attends) if a] + [channels[-1]]  # the middle block always attends
  unet = UNetConfig(base_channels=base, channel_mults=tuple(c // base for c in channels),
                    num_res_blocks=int(config['layers_per_block']),
                    attention_resolutions=tuple(size // 2**level for level, a in enumerate(attends) if a),
                    num_heads=_num_heads(config['attention_head_dim'], attended), dropout=float(config['dropout']),
                    num_groups=int(config['norm_num_groups']), norm_eps=float(config['norm_eps']))
  return unet, size


def unet_config_to_diffusers(unet: UNetConfig, image_size: int) -> dict:
  """Returns the diffusers UNet2DModel config dict of our UNetConfig at image_size."""
  attends = [r in unet.attention_resolutions for r in unet.resolutions(image_size)]
  channels = unet.level_channels()
  attended = {c for c, a in zip(channels, attends) if a} | {channels[-1]}
  if unet.num_heads == 1:
    head_dim = None
  elif len({c // unet.num_heads for c in attended}) == 1:
    head_dim = channels[-1] // unet.num_heads
  else:
    raise ValueError(f'model.num_heads={unet.num_heads} gives the attention blocks of {sorted(attended)} channels '
                     'different head sizes; diffusers\' UNet2DModel has one attention_head_dim')
  return {
      '_class_name': 'UNet2DModel', **FIXED, 'sample_size': image_size, 'block_out_channels': list(channels),
      'layers_per_block': unet.num_res_blocks, 'attention_head_dim': head_dim, 'norm_num_groups': unet.num_groups,
      'attn_norm_num_groups': None, 'norm_eps': unet.norm_eps, 'dropout': unet.dropout, 'time_embedding_dim': None,
      'down_block_types': [ATTENTION[0] if a else PLAIN[0] for a in attends],
      'up_block_types': [ATTENTION[1] if a else PLAIN[1] for a in reversed(attends)],
      'num_train_timesteps': None,
  }


def diffusers_name(path: tuple[str, ...], num_levels: int) -> str:
  """Returns the diffusers state-dict prefix of our module at `path` (e.g. ('up', 'level0_res1'))."""
  top, rest = path[0], path[1:]
  if top == 'temb':
    return {'dense0': 'time_embedding.linear_1', 'dense1': 'time_embedding.linear_2'}[rest[0]]
  if top in ('norm_out', 'conv_out'):
    return {'norm_out': 'conv_norm_out', 'conv_out': 'conv_out'}[top]
  if top.startswith('mid_'):
    block = {'mid_res1': 'resnets.0', 'mid_attn': 'attentions.0', 'mid_res2': 'resnets.1'}[top]
    return '.'.join(['mid_block', block] + _layer_names(top, rest))
  if top == 'down' and rest[0] == 'conv_in':
    return 'conv_in'
  level, kind, index = re.fullmatch(r'level(\d+)_(res|attn|downsample|upsample)(\d*)', rest[0]).groups()
  level = int(level)
  block_index = level if top == 'down' else num_levels - 1 - level
  block = {'res': f'resnets.{index}', 'attn': f'attentions.{index}', 'downsample': 'downsamplers.0.conv',
           'upsample': 'upsamplers.0.conv'}[kind]
  return '.'.join([f'{top}_blocks.{block_index}', block] + _layer_names(kind, rest[1:]))


def _layer_names(kind: str, layers: tuple[str, ...]) -> list[str]:
  """Returns the diffusers names of a block's layers (ResBlock's or AttentionBlock's)."""
  table = _ATTENTION_LAYERS if 'attn' in kind else _RES_LAYERS
  return [table.get(layer, layer) for layer in layers]


def _flatten(params: dict, prefix=()) -> dict:
  flat = {}
  for key, value in params.items():
    if isinstance(value, dict) or hasattr(value, 'items'):
      flat.update(_flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def _unflatten(flat: dict) -> dict:
  tree = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _tensor_name(path: tuple[str, ...], num_levels: int) -> str:
  """Returns the diffusers tensor name of our param leaf at `path`."""
  leaf = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}[path[-1]]
  return f'{diffusers_name(path[:-1], num_levels)}.{leaf}'


def to_diffusers_weight(our_value: np.ndarray, name: str) -> np.ndarray:
  """Returns our leaf in diffusers' layout: convs OIHW, linear layers [out, in], 1x1 shortcuts [out, in, 1, 1]."""
  value = np.asarray(our_value, np.float32)
  if value.ndim == 4:
    return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
  if value.ndim == 2:
    value = np.ascontiguousarray(value.T)
    return value[:, :, None, None] if 'conv_shortcut' in name else value
  return value


def from_diffusers_weight(value: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
  """Returns a diffusers tensor in our layout and shape; raises ValueError when it cannot have it."""
  value = np.asarray(value, np.float32)
  if value.ndim == 4 and len(shape) == 4:
    value = value.transpose(2, 3, 1, 0)
  elif value.ndim == 4 and len(shape) == 2 and value.shape[2:] == (1, 1):
    value = value[:, :, 0, 0].T
  elif value.ndim == 2:
    value = value.T
  if value.shape != tuple(shape):
    raise ValueError(f'diffusers weight {name} has shape {list(value.shape)} in our layout, the U-Net needs '
                     f'{list(shape)}: the config and the weights describe different networks')
  return np.ascontiguousarray(value)


def rename_old_attention(state_dict: dict) -> dict:
  """Returns the state dict with pre-0.14 attention names (query, key, value, proj_attn) renamed."""
  renamed = {}
  for name, value in state_dict.items():
    parts = name.split('.')
    if len(parts) >= 3 and 'attentions' in parts and parts[-2] in _OLD_ATTENTION_NAMES:
      name = '.'.join(parts[:-2] + [_OLD_ATTENTION_NAMES[parts[-2]], parts[-1]])
    renamed[name] = value
  return renamed


def params_from_diffusers(state_dict: dict, abstract_params: dict, num_levels: int) -> dict:
  """Returns our params (numpy float32) from a diffusers state dict of numpy arrays; every tensor must be used."""
  state_dict = rename_old_attention(state_dict)
  flat, used = {}, set()
  for path, leaf in _flatten(abstract_params).items():
    name = _tensor_name(path, num_levels)
    if name not in state_dict:
      raise ValueError(f'the diffusers weights lack {name} (our {"/".join(path)}): the config and the weights '
                       'describe different networks')
    flat[path] = from_diffusers_weight(state_dict[name], leaf.shape, name)
    used.add(name)
  unused = sorted(set(state_dict) - used)
  if unused:
    raise ValueError(f'the diffusers weights hold {len(unused)} tensors this U-Net has no place for, the first '
                     f'{unused[0]}: the config and the weights describe different networks')
  return _unflatten(flat)


def params_to_diffusers(params: dict, num_levels: int) -> dict:
  """Returns the diffusers state dict (name -> numpy float32) of our params."""
  return {name: to_diffusers_weight(value, name) for name, value in
          ((_tensor_name(path, num_levels), value) for path, value in _flatten(params).items())}


def count(state_dict: dict) -> int:
  """Returns the number of scalars in a state dict."""
  return int(sum(math.prod(np.shape(v)) for v in state_dict.values()))
