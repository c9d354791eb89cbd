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
