"""Errors a run reports to the user as one line (no imports: main.py loads it before JAX)."""


class NonFiniteError(RuntimeError):
  """Training produced NaN/Inf losses or gradients for too many steps in a row."""


class StorageError(RuntimeError):
  """A checkpoint could not be written (disk full, permissions); the earlier ones are intact."""
