"""How long CI takes: `.ci/run` on a clean clone of a commit (fresh venv, install, the README's test command).

Prints the wall time of the whole run, the part pytest reports, the test count and pytest's 15 slowest
tests (pyproject's --durations=15), and appends them to BENCHMARKS.md. The suite's budget is 6 minutes
of tests (`python -m pytest -q`), 9 minutes in all, on the 2-core CI machine.

  python -m benchmarks.ci_time [--commit=HEAD] [--output=BENCHMARKS.md]
"""
import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

from benchmarks import machine_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_ci(commit: str, log_path: str) -> tuple[int, float, str]:
  """Returns (exit status, wall seconds, output) of .ci/run on a fresh clone of commit."""
  with tempfile.TemporaryDirectory(prefix='ddpm_jax_ci_') as clone:
    subprocess.run(['git', 'clone', '-q', ROOT, clone], check=True)
    subprocess.run(['git', '-C', clone, 'checkout', '-q', commit], check=True)
    start = time.monotonic()
    with open(log_path, 'w') as log:
      status = subprocess.run(['bash', '.ci/run'], cwd=clone, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - start
  with open(log_path) as f:
    return status, seconds, f.read()


def summary_line(output: str) -> str:
  """Returns pytest's final '=== N passed ... in Xs ===' line."""
  lines = [line for line in output.splitlines() if re.search(r'\d+ (passed|failed)', line) and ' in ' in line]
  return lines[-1].strip('= ') if lines else 'no pytest summary'


def slowest(output: str) -> list[str]:
  """Returns pytest's 'slowest durations' rows."""
  return re.findall(r'^(\d+\.\d+s (?:call|setup|teardown) +\S+)$', output, flags=re.M)


def pytest_seconds(line: str) -> float:
  match = re.search(r' in ([\d.]+)s', line)
  return float(match.group(1)) if match else float('nan')


def report(commit: str, status: int, seconds: float, output: str) -> str:
  """Returns the markdown section of one measurement."""
  line = summary_line(output)
  rows = '\n'.join(f'| {d.split(" ", 2)[0]} | {d.split(" ", 2)[1]} | `{d.split(" ", 2)[2].strip()}` |'
                   for d in slowest(output))
  return (f'## CI time (.ci/run on a clean clone) ({datetime.date.today()}, cpu)\n\n'
          f'Command: `python -m benchmarks.ci_time --commit={commit}`\n'
          f'Machine: {platform.platform()}; {machine_info.cpu_model()}, {os.cpu_count()} cores; '
          f'load average {machine_info.load_average()}\n'
          f'Versions: Python {platform.python_version()} (the venv .ci/run creates installs the rest)\n\n'
          f'| .ci/run exit | .ci/run wall (venv + install + tests) | pytest | result |\n|---|---:|---:|---|\n'
          f'| {status} | {seconds / 60:.1f} min | {pytest_seconds(line) / 60:.1f} min | {line} |\n\n'
          f'The 15 slowest tests:\n\n| seconds | phase | test |\n|---:|---|---|\n{rows}\n')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--commit', default='HEAD')
  parser.add_argument('--output', default=os.path.join(ROOT, 'BENCHMARKS.md'), help='"" = print only')
  parser.add_argument('--log', default=os.path.join(tempfile.gettempdir(), 'ddpm_jax_ci_time.log'))
  args = parser.parse_args(argv)
  commit = subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', args.commit], check=True, capture_output=True,
                          text=True).stdout.strip()
  status, seconds, output = run_ci(commit, args.log)
  section = report(commit, status, seconds, output)
  print(section)
  if args.output:
    with open(args.output, 'a') as f:
      f.write('\n' + section)
  return status


if __name__ == '__main__':
  sys.exit(main())
