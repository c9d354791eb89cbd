"""Driving `python -m ddpm_jax.main` in subprocesses, for tests where the process boundary is the point."""
import subprocess
import sys

from runs import ROOT, TINY, checkpoint_steps  # noqa: F401  pylint: disable=unused-import


def command(*args, config=TINY) -> list:
  """Returns the argv of a CLI run of the config with the given flags."""
  return [sys.executable, '-m', 'ddpm_jax.main', f'--config={config}', *args]


def cli(env, *args, config=TINY, **kwargs) -> subprocess.CompletedProcess:
  """Returns the finished CLI process (text output captured; 600 s at most)."""
  return subprocess.run(command(*args, config=config), cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600, **kwargs)


def start(env, *args, config=TINY, **kwargs) -> subprocess.Popen:
  """Returns the started CLI process, its output piped as text."""
  return subprocess.Popen(command(*args, config=config), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kwargs)


def error_line(stderr: str) -> str:
  """Returns the CLI's one-line error (libraries may log more around it); fails unless there is exactly one."""
  lines = [line for line in stderr.splitlines() if line.startswith('ddpm_jax: error:')]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]
