"""Command line: flags → config → the chosen mode (train, sample). Nothing else lives here.

  python -m ddpm_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
  python -m ddpm_jax.main --workdir=runs/quickstart --mode=sample  # the workdir's config.json
  python -m ddpm_jax.main --helpconfig  # every config key, its default and what it does
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from ddpm_jax import cli, paths

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py). --mode=sample and --mode=eval '
                                'default to the workdir\'s config.json.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval'], 'What to do.')
flags.DEFINE_integer('checkpoint_step', None, 'Checkpoint to sample from (default: the latest) or to evaluate '
                     '(default: every checkpoint).')
flags.DEFINE_bool('allow_config_change', False, 'Resume a workdir whose saved config.json differs from --config in '
                  'keys that change what is trained (model, diffusion, data, optimizer, seed).')
flags.DEFINE_bool('traceback', False, 'Show the full traceback of a configuration or input error.')
# Multi-host: every process runs the same command with its own --process_id (README "Multiple GPUs
# and hosts"); under srun none is needed (ddpm_jax/distributed.py says what is detected).
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 in a multi-process run (with '
                    '--num_processes and --process_id).')
flags.DEFINE_integer('num_processes', None, 'How many processes the multi-process run has.')
flags.DEFINE_integer('process_id', None, "This process's index in the multi-process run, 0 to num_processes - 1.")
flags.mark_flags_as_required(['workdir'])

PROGRAM = 'ddpm_jax'


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
    jax.config.update('jax_compilation_cache_dir', os.path.join(paths.cache_root(), 'xla'))
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:  # the tests cache every program
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def run(config, workdir: str, mode: str, checkpoint_step, allow_config_change: bool = False, *,
        coordinator_address: str | None = None, num_processes: int | None = None,
        process_id: int | None = None) -> None:
  """Runs the mode on the config (in a multi-process run when the last three arguments or SLURM say so).

  config: a ConfigDict (a config file with its overrides) or a typed Config; every key is checked
  before anything is written.
  """
  # Imported here so that --help and flag errors answer without loading JAX.
  from ddpm_jax.config import checks, convert  # pylint: disable=g-import-not-at-top
  config = convert.from_configdict(config)  # the one conversion: modules see typed sections from here on
  from ddpm_jax.run import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(coordinator_address, num_processes, process_id)  # before anything touches a device
  checks.validate_config(config)  # before TensorFlow and torch load: a bad value answers in seconds
  enable_compilation_cache()
  with cli.native_notices_hidden():  # TensorFlow prints C++ notices when a mode's imports (CLU, TFDS) load it
    if mode == 'eval' or config.eval.every_steps:
      preload_torch_stack()  # ~10 s of imports that only evaluation needs
      from ddpm_jax.evaluation import scores  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    if mode == 'train':
      from ddpm_jax.run import train  # pylint: disable=g-import-not-at-top
    else:
      from ddpm_jax.run import modes  # pylint: disable=g-import-not-at-top
  if mode == 'train':
    train.train_and_evaluate(config, workdir, allow_config_change=allow_config_change)
  elif mode == 'sample':
    modes.sample(config, workdir, checkpoint_step, allow_config_change)
  elif mode == 'eval':
    modes.evaluate(config, workdir, checkpoint_step, allow_config_change)


def load_config():
  """Returns the config (without --config, the workdir's for sample and eval); a bad one becomes a ValueError."""
  # config_flags loads the file and applies overrides lazily, on first access.
  if not FLAGS['config'].present:
    if FLAGS.mode == 'train':
      raise ValueError('--config is required to train (--mode=sample and --mode=eval read the workdir\'s '
                       'config.json when it is not given)')
    from ddpm_jax.run import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    return workdir_lib.load_config(FLAGS.workdir)
  try:
    config = FLAGS.config
    config.seed  # pylint: disable=pointless-statement  # forces the lazy load
    return config
  except (OSError, AttributeError, KeyError, TypeError) as e:
    message = ' '.join(str(e).replace('\\n', ' ').replace("\\'", "'").split())
    raise ValueError(f'bad --config or override: {message}') from None


def main(argv):
  if len(argv) > 1:
    cli.fail(PROGRAM, f'unexpected arguments: {" ".join(argv[1:])} (flags take the form --name=value)')
  cli.quiet_libraries(FLAGS['verbosity'].present, FLAGS.traceback)  # before JAX and TensorFlow load
  with cli.one_line_errors(PROGRAM, FLAGS.traceback):
    run(load_config(), FLAGS.workdir, FLAGS.mode, FLAGS.checkpoint_step, FLAGS.allow_config_change,
        coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id)


def parse_flags(argv):
  """Returns the positional arguments; an override of an unknown config key exits with one line.

  --helpconfig prints every config key with its default and doc, and exits.
  """
  if '--helpconfig' in argv[1:]:
    from ddpm_jax.config import reference  # pylint: disable=g-import-not-at-top
    print(reference.text(), end='')
    sys.exit(0)
  missing_config = override_without_config(argv)
  if missing_config:
    cli.fail(PROGRAM, missing_config)
  try:
    return cli.parse_or_fail(PROGRAM, FLAGS, argv)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # config_flags applies --config.KEY=VALUE overrides while parsing; an unknown key gets the schema's word.
    cli.fail(PROGRAM, unknown_override(argv) or
             'bad config override: ' + str(e).replace('\\n', ' ').replace("\\'", "'"))


def override_without_config(argv) -> str:
  """Returns the one-line error of --config.KEY=VALUE overrides given without --config ('' otherwise)."""
  args = argv[1:]
  overrides = [arg.split('=', 1)[0] for arg in args if arg.startswith('--config.')]
  if not overrides or any(arg == '--config' or arg.startswith('--config=') for arg in args):
    return ''
  workdir = next((arg.split('=', 1)[1] for arg in args if arg.startswith('--workdir=')), 'WORKDIR')
  return (f'{overrides[0]} overrides a key of --config, which is not given; to change a key of the workdir\'s '
          f'saved config, add --config=configs/workdir.py:{workdir}')


def unknown_override(argv) -> str:
  """Returns the one-line error of the first --config.KEY=VALUE whose KEY the schema lacks ('' when all are known)."""
  from ddpm_jax.config import convert  # pylint: disable=g-import-not-at-top
  for arg in argv[1:]:
    if arg.startswith('--config.'):
      key = arg.removeprefix('--config.').split('=', 1)[0]
      try:
        convert.check_key(key, ' (a --config override)')
      except ValueError as e:
        return str(e)
  return ''


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
