"""Test-wide settings: tiny models compile far longer than they run, so compile them cheaply."""
import os

# Must be set before JAX creates its CPU backend. LLVM's optimisation passes dominate the
# compile time of even a tiny U-Net (~2.5x), and the tests' models run in milliseconds anyway.
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0')

# Triton's extension segfaults when it loads after TensorFlow's (tensorflow-cpu 2.21, triton
# 3.8); some test modules import TFDS, others diffusers/torchmetrics (which load Triton).
# ddpm_jax.main loads the torch stack first for the same reason.
import torchmetrics  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import

import pytest  # noqa: E402  pylint: disable=g-import-not-at-top,g-bad-import-order


@pytest.fixture(scope='session')
def env(tmp_path_factory):
  """Returns the environment of CLI runs: one XLA compilation cache for the session, so the tiny
  config's programs compile once for every test that drives the CLI."""
  environment = dict(os.environ)
  environment['JAX_COMPILATION_CACHE_DIR'] = str(tmp_path_factory.mktemp('xla_cache'))
  return environment
