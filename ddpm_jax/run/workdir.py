"""The workdir's own bookkeeping: is it writable, and does the config still describe what it trained.

config.json holds the config the checkpoints were trained with. Resuming with a config
that trains something else (another model, schedule, loss, dataset, optimizer, seed)
would silently change the run, so it is refused unless the user says so; keys that only
say how long, how often or how to evaluate may change freely (their option says `free`).
Every replaced config.json is kept beside it as config.<UTC time>.json.
A class-conditional run also records its dataset's class names, by label id, in classes.json.
"""
import datetime
import json
import os
import shutil

from absl import logging

from ddpm_jax.config import convert, schema
from ddpm_jax.paths import Workdir

ABSENT = '<absent>'


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


def as_json(config: schema.Config) -> dict:
  """Returns the config as config.json holds it (tuples as lists)."""
  return json.loads(json.dumps(convert.to_dict(config)))


def config_changes(saved: dict, current: dict) -> dict:
  """Returns {key: (saved value, current value)} for every key that differs (missing keys read as '<absent>')."""
  saved, current = flatten(convert.migrate(saved)), flatten(current)
  return {key: (saved.get(key, ABSENT), current.get(key, ABSENT)) for key in sorted(saved.keys() | current.keys())
          if saved.get(key, ABSENT) != current.get(key, ABSENT)}


is_free = convert.is_free  # whether changing a key on resume leaves what the run trains unchanged


def describe(changes: dict) -> str:
  """Returns the changes as 'key: old -> new' joined by '; '."""
  return '; '.join(f'{key}: {old!r} -> {new!r}' for key, (old, new) in changes.items())


def check_config(workdir: str, config: schema.Config, has_checkpoints: bool, allow_change: bool = False) -> dict:
  """Returns the config changes since the workdir's config.json ({} when it has none).

  A change to a key that is not free in a workdir with checkpoints is a ValueError that
  lists the differences, unless allow_change.
  """
  path = Workdir(workdir).config_file
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    changes = config_changes(json.load(f), as_json(config))
  # A key the saved config lacks came with a newer version, whose default is what the run trained with.
  trained = {key: change for key, change in changes.items() if not is_free(key) and change[0] != ABSENT}
  if trained and has_checkpoints and not allow_change:
    raise ValueError(f'the config differs from the one {workdir} was trained with ({path}) in what it trains: '
                     f'{describe(trained)}. Use the original config, a new --workdir, or pass '
                     f'--allow_config_change to go on with the new one.')
  return changes


def record_config(workdir: str, config: schema.Config, changes: dict) -> None:
  """Writes config.json (the first time, or after changes), keeping the replaced one as config.<time>.json."""
  path = Workdir(workdir).config_file
  if os.path.exists(path):
    if not changes:
      return
    kept = keep_old_config(workdir)
    logging.warning('Config changed since %s (kept as %s): %s', os.path.basename(path), os.path.basename(kept),
                    describe(changes))
  write_config(path, config)


def keep_old_config(workdir: str) -> str:
  """Returns the path of a copy of config.json: config.<UTC time>.json beside it (config.json stays until replaced)."""
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')
  kept = Workdir(workdir).kept_config(stamp)
  shutil.copy2(Workdir(workdir).config_file, kept)
  return kept


def write_config(path: str, config: schema.Config) -> None:
  """Writes the config as JSON, atomically."""
  with open(path + '.tmp', 'w') as f:
    json.dump(as_json(config), f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)


def load_config(workdir: str) -> schema.Config:
  """Returns the config workdir was trained or imported with: its config.json, keys it lacks at their defaults."""
  path = Workdir(workdir).config_file
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist, so the workdir\'s config is unknown: pass --config '
                            '(a workdir gets config.json when it first trains or is imported)')
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path} cannot be read as JSON ({e}); pass --config instead') from None
  return convert.from_mapping(convert.migrate(saved), where=f' in {path}')


def write_class_names(workdir: str, names) -> None:
  """Writes classes.json: the JSON list of the class names, label id i at index i, atomically."""
  path = Workdir(workdir).classes_json
  with open(path + '.tmp', 'w') as f:
    json.dump([str(name) for name in names], f, indent=1)
  os.replace(path + '.tmp', path)


def read_class_names(workdir: str) -> tuple[str, ...]:
  """Returns the class names classes.json records, by label id; () when the workdir has none."""
  path = Workdir(workdir).classes_json
  if not os.path.isfile(path):
    return ()
  try:
    with open(path) as f:
      names = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path} cannot be read as JSON ({e}); it must hold a JSON list of class names') from None
  if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
    raise ValueError(f'{path} must hold a JSON list of class names (label id i at index i), not {names!r:.80}')
  return tuple(names)
