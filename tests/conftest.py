"""Test-wide settings and the runs several test modules share."""
import os
import tempfile

# Must be set before JAX creates its CPU backend. LLVM's optimisation passes dominate the
# compile time of even a tiny U-Net (~2.5x), and the tests' models run in milliseconds anyway.
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0')
# One XLA compilation cache for the session, in-process runs and CLI subprocesses alike: the tiny
# config's programs compile once. Set before JAX is imported, which reads it.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='ddpm_jax_test_xla_'))

# Triton's extension segfaults when it loads after TensorFlow's (tensorflow-cpu 2.21, triton
# 3.8); some test modules import TFDS, others diffusers/torchmetrics (which load Triton).
# ddpm_jax.main loads the torch stack first for the same reason.
import torchmetrics  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import

import pytest  # noqa: E402  pylint: disable=g-import-not-at-top,g-bad-import-order

import runs  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture(scope='session')
def env():
  """Returns the environment of CLI subprocesses (the session's compilation cache included)."""
  return dict(os.environ)


@pytest.fixture(scope='session')
def trained(tmp_path_factory) -> str:
  """Returns a workdir the tiny config trained 4 steps (checkpoints and grids at 2 and 4). Read it; change a copy."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'tiny')
  runs.run(workdir)
  return workdir


@pytest.fixture(scope='session')
def trained_12(tmp_path_factory) -> str:
  """Returns a workdir the tiny config trained 12 steps, a checkpoint every 3 and the loss logged at every step."""
  workdir = str(tmp_path_factory.mktemp('trained_12') / 'run')
  runs.run(workdir, runs.TWELVE_STEPS)
  return workdir
