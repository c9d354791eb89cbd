"""What every CLI does with an error: a user mistake is one line on stderr and exit status 2.

No imports beyond the standard library and `errors`: the CLIs load it before JAX.
"""
import contextlib
import sys

from ddpm_jax import errors

# User mistakes (bad config values, paths, missing checkpoints). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError)
# The run went wrong, not the input (NaN losses, a full disk): one line too, but exit status 1.
RUN_ERRORS = (errors.NonFiniteError, errors.StorageError)


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
