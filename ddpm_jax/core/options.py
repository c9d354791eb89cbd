"""How a config option is declared: a dataclass field with its default, a one-line doc and what is allowed.

The typed config (ddpm_jax/config/schema.py) reads these to check values, print `--helpconfig` and
write the README's config reference; the core's own settings (UNetConfig, SamplerSettings) declare
their fields the same way, so each option is declared once. Pure: the standard library only.
"""
import dataclasses
import math
from typing import Any


def option(default: Any, doc: str, *, choices: tuple = (), low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, free: bool = False, check=None):
  """Returns a dataclass field: default, doc, the allowed choices or [low, high] range, and resume-freedom.

  choices: the allowed values (for a tuple option, of each element); low/high: the range, open at a side
  with low_open/high_open; free: changing it on resume leaves what the run trains unchanged (periods,
  evaluation, logging); check: a callable(key, value) raising ValueError, for rules the others can't say.
  """
  metadata = {'doc': doc, 'choices': tuple(choices), 'low': low, 'high': high, 'low_open': low_open,
              'high_open': high_open, 'free': free, 'check': check}
  if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
    return dataclasses.field(default_factory=lambda: default, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def describe_range(meta: dict) -> str:
  """Returns the allowed values of an option as text: '{a, b}', '>= 1', '[0, 1)', '(0, inf)' or ''."""
  if meta.get('choices'):
    return '{' + ', '.join(repr(c) if isinstance(c, str) else str(c) for c in meta['choices']) + '}'
  low, high = meta.get('low'), meta.get('high')
  if low is None and high is None:
    return ''
  if high is None:
    return f'{">" if meta["low_open"] else ">="} {low:g}'
  if low is None:
    return f'{"<" if meta["high_open"] else "<="} {high:g}'
  return f'{"(" if meta["low_open"] else "["}{low:g}, {high:g}{")" if meta["high_open"] else "]"}'


def check_option(key: str, value, meta, given=None) -> None:
  """Raises a one-line ValueError unless value (each element of a tuple) is among the choices and in the range.

  given: the value as the user wrote it, for the message (default: value). The option's `check` runs last.
  """
  given = value if given is None else given
  for element in (value if isinstance(value, tuple) else (value,)):
    if meta.get('choices') and element not in meta['choices']:
      which = '' if element is value else f': {element!r}'
      raise ValueError(f'{key}={given!r}{which} is not one of {describe_range(meta)}')
    if isinstance(element, (int, float)) and not isinstance(element, bool) and not in_range(element, meta):
      verb = 'lie in' if describe_range(meta)[0] in '[(' else 'be'
      raise ValueError(f'{key}={given!r} must {verb} {describe_range(meta)}')
  if meta.get('check'):
    meta['check'](key, value)


def check_options(section, prefix: str) -> None:
  """Raises check_option's ValueError at the first field of a dataclass of options whose value its option refuses."""
  for field in dataclasses.fields(section):
    if 'doc' in field.metadata:
      check_option(f'{prefix}{field.name}', getattr(section, field.name), field.metadata)


def in_range(value, meta: dict) -> bool:
  """Returns whether a number lies in the option's range (NaN never does)."""
  if isinstance(value, float) and math.isnan(value):
    return False
  low, high = meta.get('low'), meta.get('high')
  if low is not None and (value < low or (meta['low_open'] and value == low)):
    return False
  if high is not None and (value > high or (meta['high_open'] and value == high)):
    return False
  return True
