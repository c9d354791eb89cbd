"""ConfigDict or config.json -> the typed `Config`, every key checked; and back (ConfigDict, JSON dict).

A config file, a command-line override and a workdir's config.json are all mappings of sections;
`from_mapping` walks the schema, refuses a key it does not declare (naming the closest real key, or
the key it was renamed to), checks each value's type, choices and range, and fills absent keys
with their defaults. Keys that earlier versions wrote are moved to where they live now (`migrate`).
"""
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping

import ml_collections

from ddpm_jax.config import schema
from ddpm_jax.core.options import check_option

# Keys that moved: the evaluation's sampler became the sub-section eval.sampling.
RENAMED = {'eval.sampler': 'eval.sampling.sampler', 'eval.sampling_steps': 'eval.sampling.num_steps',
           'eval.timestep_spacing': 'eval.sampling.timestep_spacing'}
# Before eval.sampling existed, an evaluation sampled with these of config.sampling.
_SHARED_WITH_SAMPLING = ('variance', 'eta', 'clip_denoised')


def section_fields(cls) -> dict:
  """Returns {name: (dataclasses.Field, resolved type)} of a section's keys."""
  hints = typing.get_type_hints(cls)
  return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def is_section(kind) -> bool:
  """Returns whether a key's type is a section (a dataclass) rather than a value."""
  return isinstance(kind, type) and dataclasses.is_dataclass(kind)


# Keys whose default has changed: a config.json written before such a key existed trained with the value on the
# right, not with today's default (diffusion.prediction: v since issue 25; eps before).
EARLIER_DEFAULTS = {'diffusion': {'prediction': 'eps'}}


def with_earlier_defaults(saved: dict) -> dict:
  """Returns a config.json's dict with the keys it lacks whose default changed set to what its run trained with."""
  for section, earlier in EARLIER_DEFAULTS.items():
    if isinstance(saved.get(section), dict):
      saved = {**saved, section: {**earlier, **saved[section]}}
  return saved


def migrate(saved: dict) -> dict:
  """Returns a config.json's dict with the keys earlier versions wrote moved to where they live now."""
  saved = with_earlier_defaults(saved)
  evaluation = saved.get('eval')
  if not isinstance(evaluation, dict) or 'sampling' in evaluation:
    return saved
  moved = {new.rpartition('.')[2]: evaluation[old.rpartition('.')[2]]
           for old, new in RENAMED.items() if old.rpartition('.')[2] in evaluation}
  if not moved:
    return saved
  sampling = saved.get('sampling', {})
  moved.update({key: sampling[key] for key in _SHARED_WITH_SAMPLING if key in sampling})
  rest = {key: value for key, value in evaluation.items() if f'eval.{key}' not in RENAMED}
  return {**saved, 'eval': {**rest, 'sampling': moved}}


def unknown_key_error(key: str, known: list[str], where: str) -> ValueError:
  """Returns the one-line error for a key the schema does not declare, with the likeliest intended key."""
  if key in RENAMED:
    return ValueError(f'{key}{where} was renamed {RENAMED[key]}; set that instead')
  prefix, _, name = key.rpartition('.')
  close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
  hint = f'; did you mean {prefix + "." if prefix else ""}{close[0]}?' if close else \
      f'; the keys of {prefix or "the config"} are {", ".join(known)}'
  return ValueError(f'{key}{where} is not a config key{hint}')


def type_name(kind) -> str:
  """Returns a type as the user reads it: 'an integer', 'a tuple of strings', 'None or a string'."""
  names = {bool: 'True or False', int: 'an integer', float: 'a finite number', str: 'a string'}
  if typing.get_origin(kind) is tuple:
    elements = typing.get_args(typing.get_args(kind)[0]) or typing.get_args(kind)[:1]
    return 'a tuple of ' + ' or '.join(f'{names[e].removeprefix("an ").removeprefix("a ")}s' for e in elements)
  if typing.get_origin(kind) in (typing.Union, types.UnionType):
    return ' or '.join('None' if arg is type(None) else names[arg] for arg in typing.get_args(kind))
  return names[kind]


def coerce(value, kind):
  """Returns value as the type (ints are numbers, lists tuples); raises TypeError when it is not of it."""
  if typing.get_origin(kind) in (typing.Union, types.UnionType):
    if value is None and type(None) in typing.get_args(kind):
      return None
    for arg in typing.get_args(kind):  # the first type that takes the value (an int | str label: either)
      if arg is not type(None):
        try:
          return coerce(value, arg)
        except TypeError:
          continue
    raise TypeError
  if typing.get_origin(kind) is tuple:
    if isinstance(value, int) and not isinstance(value, bool) and typing.get_args(kind)[0] is int:
      value = (value,)  # attention_resolutions=16 means (16,)
    if not isinstance(value, (list, tuple)):
      raise TypeError
    return tuple(coerce(element, typing.get_args(kind)[0]) for element in value)
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if kind is int and isinstance(value, float) and value.is_integer() and math.isfinite(value):
    return int(value)  # 1e4 in a config file
  if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
    raise TypeError
  if kind is float and not math.isfinite(value):
    raise TypeError
  return value


def check_value(key: str, value, field: dataclasses.Field, kind):
  """Returns the value as its type once it is of the type, among the choices and in the range; else ValueError."""
  meta, given = field.metadata, value
  try:
    value = coerce(value, kind)
  except TypeError:
    hint = ''
    if isinstance(value, str) and ',' in value and typing.get_origin(kind) is tuple:
      hint = f' (a tuple on the command line: --config.{key}="{tuple(value.split(","))}")'
    raise ValueError(f'{key}={value!r} must be {type_name(kind)}{hint}') from None
  check_option(key, value, meta, given)
  return value


def from_mapping(values: Mapping, cls=schema.Config, prefix: str = '', where: str = ''):
  """Returns the section `cls` of the mapping's keys (absent ones at their defaults); ValueError at the first bad key.

  where: the source named in errors, e.g. ' in runs/x/config.json'.
  """
  if isinstance(values, cls):
    return values
  if not isinstance(values, Mapping):
    raise ValueError(f'{prefix.rstrip(".") or "the config"}{where} must be a section of keys, not {values!r}')
  fields = section_fields(cls)
  for key in values:
    if key not in fields:
      raise unknown_key_error(f'{prefix}{key}', list(fields), where)
  settings = {}
  for name, (field, kind) in fields.items():
    if name not in values:
      continue
    value = values[name]
    if is_section(kind):
      settings[name] = from_mapping(value, kind, f'{prefix}{name}.', where)
    else:
      settings[name] = check_value(f'{prefix}{name}', value, field, kind)
  try:
    return cls(**settings)
  except ValueError as e:  # a section's own __post_init__ check
    raise ValueError(f'{prefix.rstrip(".")}{where}: {e}') from None


def from_configdict(config: ml_collections.ConfigDict | Mapping, where: str = '') -> schema.Config:
  """Returns the typed Config of a ConfigDict (a config file with its overrides)."""
  if isinstance(config, schema.Config):
    return config
  values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  return from_mapping(values, where=where)


def to_dict(config) -> dict:
  """Returns a section as a nested dict of plain values (tuples stay tuples; json.dump writes them as lists)."""
  return {f.name: to_dict(getattr(config, f.name)) if dataclasses.is_dataclass(getattr(config, f.name))
          else getattr(config, f.name) for f in dataclasses.fields(config)}


def to_configdict(config=None) -> ml_collections.ConfigDict:
  """Returns the ConfigDict of a Config (default: every key at its default): what configs/*.py start from.

  Options that may be None become typed placeholders, so an override is still type-checked.
  """
  config = schema.Config() if config is None else config
  result = ml_collections.ConfigDict()
  for name, (_, kind) in section_fields(type(config)).items():
    value = getattr(config, name)
    if is_section(kind):
      result[name] = to_configdict(value)
    elif value is None:
      inner = next(arg for arg in typing.get_args(kind) if arg is not type(None))
      result[name] = ml_collections.config_dict.placeholder(inner)
    else:
      result[name] = value
  return result


def walk(key: str):
  """Returns (the Fields along a dotted key, the section the walk ended in, the first part it lacks or None, and
  whether it ended at a value).

  The walk stops at the first value (not a section) or at the first unknown part; when every part of the
  key names a section it ends in the last one.
  """
  cls, path = schema.Config, []
  for part in key.split('.'):
    fields = section_fields(cls)
    if part not in fields:
      return path, cls, part, False
    field, kind = fields[part]
    path.append(field)
    if not is_section(kind):
      return path, cls, None, True
    cls = kind
  return path, cls, None, False


def check_key(key: str, where: str = '') -> None:
  """Returns None when a dotted key names a config option; else raises the one-line unknown-key ValueError."""
  path, cls, missing, at_value = walk(key)
  if missing is not None:
    prefix = ''.join(f'{field.name}.' for field in path)
    raise unknown_key_error(key if key in RENAMED else f'{prefix}{missing}', list(section_fields(cls)), where)
  if not at_value:
    raise ValueError(f'{key}{where} is a section, not a key; its keys are {", ".join(section_fields(cls))}')


def is_free(key: str) -> bool:
  """Returns whether changing a dotted key on resume leaves what the run trains unchanged (its option says)."""
  return any(field.metadata.get('free') for field in walk(key)[0])


def with_values(config: schema.Config, values: Mapping) -> schema.Config:
  """Returns the config with {'section.key': value} set, each value checked as any config's is."""
  tree = to_dict(config)
  for key, value in values.items():
    *sections, name = key.split('.')
    node = tree
    for section in sections:
      if not isinstance(node.get(section), dict):
        raise unknown_key_error(key, list(node), '')
      node = node[section]
    if name not in node:
      raise unknown_key_error(key, list(node), '')
    node[name] = value
  return from_mapping(tree)
