"""diffusers' UNet2DModel weights and our U-Net's params, both ways, in numpy (the configs: `diffusers_layout`).

diffusers names a module by its block and position (`down_blocks.1.resnets.0`), we by level and
block (`down/level1_res0`); the up path counts its blocks from the bottom there, from the top here.
Convolutions are OIHW there and HWIO here, linear layers [out, in] there and [in, out] here, and
GroupNorm's `weight` is our `scale`; the class embedding is [rows, width] in both, ours with a null
class row last. Nothing here reads files or imports torch.
"""
import math
import re

import numpy as np

from ddpm_jax.interop.diffusers_layout import CLASS_EMBEDDING

# Renamed by diffusers in 0.14; older weight files (google/ddpm-*) still use the old names.
_OLD_ATTENTION_NAMES = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}
_RES_LAYERS = {'temb_proj': 'time_emb_proj', 'nin_shortcut': 'conv_shortcut'}
_ATTENTION_LAYERS = {'norm': 'group_norm', 'q': 'to_q', 'k': 'to_k', 'v': 'to_v', 'proj_out': 'to_out.0'}


def with_zero_null_class(state_dict: dict) -> dict:
  """Returns the state dict with a zero row appended to its class embedding: a null class for our class table."""
  table = np.asarray(state_dict[CLASS_EMBEDDING], np.float32)
  return {**state_dict, CLASS_EMBEDDING: np.concatenate([table, np.zeros_like(table[:1])])}


def diffusers_name(path: tuple[str, ...], num_levels: int) -> str:
  """Returns the diffusers state-dict prefix of our module at `path` (e.g. ('up', 'level0_res1'))."""
  top, rest = path[0], path[1:]
  if top == 'class_embed':
    return 'class_embedding'
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
  # A resampling conv is `downsamplers.0.conv`; a resampling residual block (resblock_updown) `downsamplers.0`.
  resampler = 'conv' if len(rest) == 1 else None
  block = {'res': f'resnets.{index}', 'attn': f'attentions.{index}',
           'downsample': '.'.join(filter(None, ('downsamplers.0', resampler))),
           'upsample': '.'.join(filter(None, ('upsamplers.0', resampler)))}[kind]
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
  leaf = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight', 'bias': 'bias'}[path[-1]]
  return f'{diffusers_name(path[:-1], num_levels)}.{leaf}'


def to_diffusers_weight(our_value: np.ndarray, name: str) -> np.ndarray:
  """Returns our leaf in diffusers' layout: convs OIHW, linear layers [out, in], 1x1 shortcuts [out, in, 1, 1]."""
  value = np.asarray(our_value, np.float32)
  if name == CLASS_EMBEDDING:  # an embedding table: [rows, width] in both
    return value
  if value.ndim == 4:
    return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
  if value.ndim == 2:
    value = np.ascontiguousarray(value.T)
    return value[:, :, None, None] if 'conv_shortcut' in name else value
  return value


def from_diffusers_weight(value: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
  """Returns a diffusers tensor in our layout and shape; raises ValueError when it cannot have it."""
  value = np.asarray(value, np.float32)
  if name == CLASS_EMBEDDING:
    pass
  elif value.ndim == 4 and len(shape) == 4:
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
