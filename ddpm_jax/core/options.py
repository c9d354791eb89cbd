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
