"""Test-wide settings and the runs several test modules share."""
import atexit
import fcntl
import os
import shutil
import tempfile

# Must be set before JAX creates its CPU backend. LLVM's optimisation passes dominate the
# compile time of even a tiny U-Net (~2.5x), and the tests' models run in milliseconds anyway.
# Appended to the user's XLA_FLAGS (e.g. the README's other-CPU numerics), unless they set a level themselves.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
# One XLA compilation cache for the session, in-process runs and CLI subprocesses alike: the tiny
# config's programs compile once. Set before JAX is imported, which reads it. pytest-xdist's workers
# inherit the cache of the process that starts them (an entry JAX finds half-written by another
# process is a warning and a compile, not an error); that process removes it at exit.
# Every program, however quick to compile: the tiny models' programs compile in well under the 1 s a user's run
# waits for before caching, and the same ones compile again in each CLI subprocess and in-process run.
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='ddpm_jax_test_xla_')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)

# Triton's extension segfaults when it loads after TensorFlow's (tensorflow-cpu 2.21, triton
# 3.8); some test modules import TFDS, others diffusers/torchmetrics (which load Triton).
# ddpm_jax.main loads the torch stack first for the same reason.
import torchmetrics  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import

import pytest  # noqa: E402  pylint: disable=g-import-not-at-top,g-bad-import-order

import runs  # noqa: E402  pylint: disable=g-import-not-at-top


# Test files whose module-scoped fixtures take seconds to build (a trained or evaluated run, a report, a wheel,
# compiled steps): each goes to one worker as a whole, which builds them once. Every other test is a unit of its
# own, sent to whichever worker is free, so the two end together. (xdist's --dist loadgroup would say this with
# marks, but groups nothing under pytest 9.2: pytest-dev/pytest-xdist#1386.)
ONE_WORKER_FILES = ('test_eval_bridge.py', 'test_evaluation.py', 'test_metrics.py', 'test_reference_stats.py',
                    'test_report.py', 'test_train_step.py', 'test_wheel.py')
SCHEDULED_HERE = pytest.StashKey[bool]()
# Single tests of 10 s or more (on 2 idle cores), collected first, slowest first: each is a unit of its own, so
# the workers start them early and end on tests of a second or two, together, instead of one worker finishing
# a minute-long test while the other idles. The first two build the shared runs `trained` and `trained_12` side by
# side (two tests that both wait for `trained` would leave a core idle while it trains).
SLOW_FIRST = ('test_sharding.py::test_on_four_devices', 'test_faults.py::test_sigkill',
              'test_distributed.py::test_two_processes', 'test_main.py::test_sigterm',
              'test_device_data.py::test_trains_on_device', 'test_faults.py::test_a_full_disk',
              'test_faults.py::test_resuming_with_another_model', 'test_evaluation.py', 'test_faults.py::test_nan_losses',
              'test_faults.py::test_a_truncated_latest',
              'test_convert.py::test_imported_weights_give_diffusers_forward[six_levels]', 'test_conditional.py')


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which starts the workers
def pytest_cmdline_main(config):
  """Runs the tests on 2 pytest-xdist workers (CI has 2 cores), unless they are all in one file.

  -n/--numprocesses, --tx and -p no:xdist decide for themselves, --dist too; --pdb runs in this process. So do
  one file's tests: a worker's start (~10 s of imports) would cost more than it saves.
  """
  if (not config.pluginmanager.hasplugin('xdist') or hasattr(config, 'workerinput') or config.option.tx
      or config.option.usepdb):
    return
  if config.option.numprocesses is None:
    files = {arg.split('::')[0] for arg in config.args}
    if len(files) == 1 and files.pop().endswith('.py'):
      return
    config.option.numprocesses = 2
  if config.option.dist == 'no' and config.option.numprocesses != 0:
    config.option.dist = 'loadscope'  # what xdist starts; pytest_xdist_make_scheduler below replaces it
    config.stash[SCHEDULED_HERE] = True


def pytest_collection_modifyitems(items):
  """Puts SLOW_FIRST's tests first, in its order; the others keep theirs."""
  def rank(item):
    return next((i for i, name in enumerate(SLOW_FIRST) if name in item.nodeid), len(SLOW_FIRST))
  items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent with -p no:xdist
def pytest_xdist_make_scheduler(config, log):
  """Returns the scheduler of runs distributed by pytest_cmdline_main: see ONE_WORKER_FILES."""
  if not config.stash.get(SCHEDULED_HERE, False):
    return None
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=g-import-not-at-top

  class OneWorkerFilesScheduling(LoadScopeScheduling):
    """Sends ONE_WORKER_FILES' tests file by file, every other test by itself (largest units first)."""

    def _split_scope(self, nodeid: str) -> str:
      path = nodeid.split('::')[0]
      return path if os.path.basename(path) in ONE_WORKER_FILES else nodeid

  return OneWorkerFilesScheduling(config, log)


@pytest.fixture(scope='session')
def env():
  """Returns the environment of CLI subprocesses (the session's compilation cache included)."""
  return dict(os.environ)


def trained_once(tmp_path_factory, name: str, overrides: dict | None = None) -> str:
  """Returns the workdir <name>/run that the tiny config (with overrides) trained, once per test run.

  pytest-xdist's workers share it: the first to ask trains it, the others wait for that and read it.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the run's temporary folder, above each worker's own
  workdir, done = root / name / 'run', root / f'{name}.done'
  with open(root / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the run fails
    if not done.exists():
      shutil.rmtree(workdir, ignore_errors=True)  # what a failed attempt left
      runs.run(str(workdir), overrides)
      done.touch()
  return str(workdir)


@pytest.fixture(scope='session')
def trained(tmp_path_factory) -> str:
  """Returns a workdir the tiny config trained 4 steps (checkpoints and grids at 2 and 4). Read it; change a copy."""
  return trained_once(tmp_path_factory, 'trained')


@pytest.fixture(scope='session')
def trained_12(tmp_path_factory) -> str:
  """Returns a workdir the tiny config trained 12 steps, a checkpoint every 3 and the loss logged at every step."""
  return trained_once(tmp_path_factory, 'trained_12', runs.TWELVE_STEPS)


@pytest.fixture(scope='session')
def adam_atol():
  """Returns atol(learning_rate, summed_terms): how far Adam's params may move when float32 sums run in another order.

  Runs that differ only in how a gradient is summed (the device count, microbatches) start from the same params
  and differ only in Adam's updates, each ~learning_rate per element. A gradient element summed in another order
  moves by ~eps32 * sqrt(summed_terms) of its terms' size, and Adam divides by the element itself, which
  cancellation can make ~1e4 times smaller than its terms: ~eps32 * sqrt(n) * 1e4 of a step (~3e-2 for n = 512),
  whatever the param's magnitude. Seen: up to 7e-3 of a step; a batch with two rows swapped moves params by ~3 steps.
  """
  float32_eps = 2.0 ** -23
  return lambda learning_rate, summed_terms: learning_rate * float32_eps * summed_terms ** 0.5 * 1e4
