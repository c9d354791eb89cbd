"""The workdir's own bookkeeping: is it writable, and does the config still describe what it trained.

config.json holds the config the checkpoints were trained with. Resuming with a config
that trains something else (another model, schedule, loss, dataset, optimizer, seed)
would silently change the run, so it is refused unless the user says so; keys that only
say how long, how often or how to evaluate may change freely. Every replaced
config.json is kept beside it as config.<UTC time>.json.
"""
import datetime
import importlib.util
import json
import os
import shutil

import ml_collections
from absl import logging

CONFIG_FILE = 'config.json'
ABSENT = '<absent>'

# Keys (or sections, ending in '.') that change when and how a run reports, not what it trains.
FREE_KEYS = ('training.num_steps', 'training.log_every_steps', 'training.checkpoint_every_steps',
             'training.sample_every_steps', 'training.keep_checkpoints', 'training.num_grid_samples',
             'training.max_nonfinite_steps', 'data.data_dir', 'data.num_workers', 'data.strict', 'data.eval_split',
             'sampling.', 'eval.', 'logging.')


def check_writable(workdir: str) -> None:
  """Returns None once workdir exists and a file can be written in it; raises a one-line PermissionError."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test.{os.getpid()}')  # one per process: hosts may share the workdir
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f'workdir {workdir!r} is not writable ({e.strerror}); choose another --workdir') from None


def flatten(tree: dict, prefix: str = '') -> dict:
  """Returns {'a.b': leaf} for a nested dict."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def config_changes(saved: dict, current: dict) -> dict:
  """Returns {key: (saved value, current value)} for every key that differs (missing keys read as '<absent>')."""
  saved, current = flatten(saved), flatten(current)
  return {key: (saved.get(key, ABSENT), current.get(key, ABSENT)) for key in sorted(saved.keys() | current.keys())
          if saved.get(key, ABSENT) != current.get(key, ABSENT)}


def is_free(key: str) -> bool:
  """Returns whether changing `key` leaves what the run trains unchanged."""
  return any(key == free or (free.endswith('.') and key.startswith(free)) for free in FREE_KEYS)


def describe(changes: dict) -> str:
  """Returns the changes as 'key: old -> new' joined by '; '."""
  return '; '.join(f'{key}: {old!r} -> {new!r}' for key, (old, new) in changes.items())


def check_config(workdir: str, config: ml_collections.ConfigDict, has_checkpoints: bool,
                 allow_change: bool = False) -> dict:
  """Returns the config changes since the workdir's config.json ({} when it has none).

  A change to a key outside FREE_KEYS in a workdir with checkpoints is a ValueError that
  lists the differences, unless allow_change.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    changes = config_changes(json.load(f), json.loads(config.to_json_best_effort(sort_keys=True)))
  # A key the saved config lacks came with a newer version, whose default is what the run trained with.
  trained = {key: change for key, change in changes.items() if not is_free(key) and change[0] != ABSENT}
  if trained and has_checkpoints and not allow_change:
    raise ValueError(f'the config differs from the one {workdir} was trained with ({path}) in what it trains: '
                     f'{describe(trained)}. Use the original config, a new --workdir, or pass '
                     f'--allow_config_change to go on with the new one.')
  return changes


def record_config(workdir: str, config: ml_collections.ConfigDict, changes: dict) -> None:
  """Writes config.json (the first time, or after changes), keeping the replaced one as config.<time>.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    if not changes:
      return
    kept = keep_old_config(path)
    logging.warning('Config changed since %s (kept as %s): %s', CONFIG_FILE, os.path.basename(kept),
                    describe(changes))
  write_config(path, config)


def keep_old_config(path: str) -> str:
  """Returns the path of a copy of config.json: config.<UTC time>.json beside it (config.json stays until replaced)."""
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')
  kept = os.path.join(os.path.dirname(path), f'config.{stamp}.json')
  shutil.copy2(path, kept)
  return kept


def write_config(path: str, config: ml_collections.ConfigDict) -> None:
  """Writes the config as JSON, atomically."""
  with open(path + '.tmp', 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + '.tmp', path)


def default_config() -> ml_collections.ConfigDict:
  """Returns configs/default.py's config (every key at its default), loaded by path: configs/ is no package."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'default.py')
  spec = importlib.util.spec_from_file_location('ddpm_jax_default_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _overlay(config: ml_collections.ConfigDict, saved: dict, prefix: str = '') -> None:
  """Sets config's keys to saved's values (lists become tuples where the default is one); new keys keep defaults."""
  for key, value in saved.items():
    if isinstance(value, dict) and key in config and isinstance(config[key], ml_collections.ConfigDict):
      _overlay(config[key], value, f'{prefix}{key}.')
      continue
    default = config.get(key)
    if isinstance(value, list) and (isinstance(default, tuple) or default is None):
      value = tuple(value)
    try:
      with config.ignore_type():
        config[key] = value
    except (KeyError, AttributeError, TypeError) as e:
      raise ValueError(f'{CONFIG_FILE} key {prefix}{key}={value!r} cannot be read ({e})') from None


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Returns the config workdir was trained or imported with: the defaults overlaid with its config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist, so the workdir\'s config is unknown: pass --config '
                            '(a workdir gets config.json when it first trains or is imported)')
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path} cannot be read as JSON ({e}); pass --config instead') from None
  config = default_config()
  _overlay(config, saved)
  return config
