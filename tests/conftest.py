"""Test-wide settings: tiny models compile far longer than they run, so compile them cheaply."""
import os

# Must be set before JAX creates its CPU backend. LLVM's optimisation passes dominate the
# compile time of even a tiny U-Net (~2.5x), and the tests' models run in milliseconds anyway.
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0')
