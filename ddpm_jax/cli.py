"""What every CLI does with the terminal: a user mistake is one line on stderr and exit status 2, and the
libraries' start-up notices and internals stay quiet unless --verbosity (-v) asks for them.

No imports beyond the standard library, absl and `errors`: the CLIs load it before JAX.
"""
import contextlib
import logging as logging_lib
import os
import sys
import tempfile

from ddpm_jax import errors

# User mistakes (bad config values, paths, missing checkpoints). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError)
# The run went wrong, not the input (NaN losses, a full disk): one line too, but exit status 1.
RUN_ERRORS = (errors.NonFiniteError, errors.StorageError)
_quiet = False  # set by quiet_libraries: whether native start-up notices are hidden too
# absl's help flags, which exit with status 1 after printing the help.
HELP_FLAGS = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull', '--helpxml')


def fail(program: str, message, status: int = 2):
  """Prints `<program>: error: <message>` on stderr as one line and exits with `status`."""
  text = ' '.join(str(message).split())
  print(f'{program}: error: {text}', file=sys.stderr)
  sys.exit(status)


@contextlib.contextmanager
def one_line_errors(program: str, traceback: bool = False):
  """Turns user errors into one line and exit 2, run errors into one line and exit 1; `traceback` re-raises them."""
  try:
    yield
  except RUN_ERRORS as e:
    if traceback:
      raise
    fail(program, e, status=1)
  except USER_ERRORS as e:
    if traceback:
      raise
    fail(program, e, status=2)


def parse_or_fail(program: str, parse, argv):
  """Returns parse(argv); --help and its kin exit with status 0 (absl's exit 1), a flag error as one line."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return parse(argv)
  except SystemExit as e:
    if e.code == 1 and any(arg.split('=')[0] in HELP_FLAGS for arg in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    fail(program, f'{e} (pass --helpfull to see the flags)')


class QuietLibraries(logging_lib.Filter):
  """Drops the chatter of Orbax, grain and asyncio, which the run reports in one line of its own where it matters.

  Orbax logs dozens of INFO lines a checkpoint and a "Metadata file does not exist" warning on every restore;
  a failed save logs each failing thread's traceback, and asyncio one more per unwritten array at exit
  (thousands of lines for a U-Net). Quiet (the default): Orbax's records go, grain keeps its warnings.
  verbose (--verbosity): every warning stays, and without `tracebacks` as one line each.
  """

  def __init__(self, verbose: bool, tracebacks: bool):
    super().__init__()
    self.verbose, self.tracebacks = verbose, tracebacks

  def filter(self, record):
    from_orbax = '/orbax/' in record.pathname
    from_library = from_orbax or '/grain/' in record.pathname
    if record.name == 'asyncio' and ('exception was never retrieved' in record.getMessage() or
                                     'Task was destroyed but it is pending' in record.getMessage()):
      return self.tracebacks
    if from_library and not self.tracebacks:
      record.exc_info, record.exc_text = None, None
    if from_orbax and not self.verbose:
      return False
    return record.levelno >= logging_lib.WARNING or not from_library


def quiet_libraries(verbose: bool, tracebacks: bool = False) -> None:
  """Keeps JAX, TensorFlow, absl and Orbax to their warnings (and Orbax silent) unless `verbose`.

  Call it once the flags are parsed and before JAX or TensorFlow loads: TensorFlow reads
  TF_CPP_MIN_LOG_LEVEL when it loads (its oneDNN and absl start-up notices come from C++).
  """
  global _quiet
  from absl import logging  # pylint: disable=g-import-not-at-top
  _quiet = not verbose
  if not verbose:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    logging.set_verbosity(logging.WARNING)  # JAX's "Unable to initialize backend 'tpu'" is an INFO record
  logging.get_absl_handler().addFilter(QuietLibraries(verbose, tracebacks))


@contextlib.contextmanager
def native_notices_hidden():
  """Runs the block (an import) with the process's stderr held back, shown only if the block raises.

  TensorFlow's C++ prints its start-up notices (oneDNN, "All log messages before absl::InitializeLog()")
  straight to file descriptor 2 when it loads, whatever TF_CPP_MIN_LOG_LEVEL says. Only after
  quiet_libraries(verbose=False); otherwise the block runs as it is.
  """
  if not _quiet:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      held.seek(0)
      sys.stderr.write(held.read().decode(errors='replace'))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)
