"""What every benchmark records about the machine it ran on."""
import os
import platform


def cpu_model() -> str:
  """Returns the CPU's model name (from /proc/cpuinfo where there is one)."""
  model = platform.processor() or platform.machine()
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    model = names[0] if names else model
  return model


def load_average() -> str:
  """Returns the 1/5/15-minute load averages: the machine may be shared while a benchmark runs."""
  return ', '.join(f'{x:.1f}' for x in os.getloadavg())


def environment_lines(module: str) -> list[str]:
  """Returns a JAX benchmark section's bullets: the command (with XLA_FLAGS), the machine and the versions."""
  import sys  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  xla_flags = f'XLA_FLAGS={os.environ["XLA_FLAGS"]} ' if os.environ.get('XLA_FLAGS') else ''
  return [
      f'- Command: `{xla_flags}python -m {module} {" ".join(sys.argv[1:])}`',
      f'- Machine: {platform.platform()}; {cpu_model()}, {os.cpu_count()} CPUs; JAX on '
      f'{jax.device_count()} x {device.platform} ({device.device_kind}); load average {load_average()}',
      f'- Versions: Python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, '
      f'optax {optax.__version__}',
  ]
