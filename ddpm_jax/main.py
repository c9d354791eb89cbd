"""Command line: flags → config → the chosen mode (train, sample). Nothing else lives here.

  python -m ddpm_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
  python -m ddpm_jax.main --config=configs/quickstart.py --workdir=runs/quickstart --mode=sample
"""
import logging as logging_lib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ddpm_jax import errors

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval'], 'What to do.')
flags.DEFINE_integer('checkpoint_step', None, 'Checkpoint to sample from (default: the latest) or to evaluate '
                     '(default: every checkpoint).')
flags.DEFINE_bool('allow_config_change', False, 'Resume a workdir whose saved config.json differs from --config in '
                  'keys that change what is trained (model, diffusion, data, optimizer).')
flags.DEFINE_bool('traceback', False, 'Show the full traceback of a configuration or input error.')
flags.mark_flags_as_required(['config', 'workdir'])

# User mistakes (bad config values, paths, missing checkpoints) surface as these; they
# become one line on stderr. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError)


def preload_torch_stack() -> None:
  """Imports torchmetrics (and with it Triton) before TensorFlow, which CLU and TFDS load.

  Triton's extension segfaults when it loads after TensorFlow's (seen with
  tensorflow-cpu 2.21 and triton 3.8); loaded first, both work.
  """
  import torchmetrics  # pylint: disable=g-import-not-at-top,unused-import


def enable_compilation_cache() -> None:
  """Keeps compiled XLA programs on disk, so a resumed run or a second mode skips minutes of compiling."""
  import jax  # pylint: disable=g-import-not-at-top
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    cache = os.path.join(os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'ddpm_jax', 'xla')
    jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def run(config, workdir: str, mode: str, checkpoint_step, allow_config_change: bool = False) -> None:
  """Runs the mode on the config."""
  # Imported here so that --help and flag errors answer without loading JAX.
  preload_torch_stack()
  from ddpm_jax import train, validation  # pylint: disable=g-import-not-at-top
  enable_compilation_cache()
  validation.validate_config(config)
  if mode == 'train':
    train.train_and_evaluate(config, workdir, allow_config_change=allow_config_change)
  elif mode == 'sample':
    train.sample(config, workdir, checkpoint_step)
  elif mode == 'eval':
    train.evaluate_checkpoints(config, workdir, checkpoint_step)


class _QuietLibraries(logging_lib.Filter):
  """Drops the INFO chatter of Orbax and grain (dozens of lines a checkpoint); keeps their warnings."""

  def filter(self, record):
    return record.levelno >= logging_lib.WARNING or not any(
        part in record.pathname for part in ('/orbax/', '/grain/'))


def load_config():
  """Returns the config; a missing file or an override of an unknown key becomes a ValueError."""
  # config_flags loads the file and applies overrides lazily, on first access.
  try:
    config = FLAGS.config
    config.seed  # pylint: disable=pointless-statement  # forces the lazy load
    return config
  except (OSError, AttributeError, KeyError, TypeError) as e:
    message = ' '.join(str(e).replace('\\n', ' ').replace("\\'", "'").split())
    raise ValueError(f'bad --config or override: {message}') from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    run(load_config(), FLAGS.workdir, FLAGS.mode, FLAGS.checkpoint_step, FLAGS.allow_config_change)
  except errors.NonFiniteError as e:
    if FLAGS.traceback:
      raise
    logging.error('%s', e)
    print(f'ddpm_jax: error: {e}', file=sys.stderr)
    sys.exit(1)
  except USER_ERRORS as e:
    if FLAGS.traceback:
      raise
    logging.error('%s', e)
    print(f'ddpm_jax: error: {e}', file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
  """Returns the positional arguments; an override of an unknown config key exits with one line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f'ddpm_jax: error: {e}\nPass --helpfull to see the flags.', file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # config_flags applies --config.KEY=VALUE overrides while parsing.
    message = ' '.join(str(e).replace('\\n', ' ').replace("\\'", "'").split())
    print(f'ddpm_jax: error: bad config override: {message}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
