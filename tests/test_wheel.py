"""The package as a wheel: it carries the defaults and every subpackage, and its CLIs work outside the source tree.

The wheel is built once, installed with `pip install --target` into a temp folder and run from another one
(PYTHONPATH puts that folder before the editable install). A sitecustomize.py audit hook in each CLI process
records every file it opens or folder it lists in the source tree (the venv aside) and where its ddpm_jax and
eval_bridge modules came from: a wheel user has no configs/ or tests/, so nothing may come from there.
"""
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from diffusers import DDPMScheduler

from ddpm_jax.config import convert
from ddpm_jax.run import workdir as workdir_lib
from eval_bridge import testing
from runs import ROOT, copy_run
from test_convert import TINY as TINY_DIFFUSERS, random_unet, save
from test_evaluation import EVAL

PACKAGES = ('ddpm_jax', 'eval_bridge')
# What the repo's .gitignore keeps out of a clean checkout: an earlier in-tree build/ would leak stale modules.
NOT_IN_A_CHECKOUT = ('.git', '.venv', '.ci-venv', 'build', '*.egg-info', '__pycache__', '.pytest_cache', 'runs',
                     'reports')
# tests/test_evaluation.py's cheap evaluation, cheaper: 4 + 4 images through Inception, and no FID, whose
# 2048x2048 matrix square root alone takes ~10 s on 2 cores (KID reads the same weights and reference cache).
CHEAP_EVAL = {**EVAL, 'eval.num_samples': 4, 'eval.num_reference': 4,
              'eval.metrics': ('kid', 'ms_ssim', 'artefacts')}

# Runs first in every CLI process (PYTHONPATH); appends 'read PATH' lines and one 'modules {...}' line to the log.
SITECUSTOMIZE = '''
import atexit, json, os, sys

_LOG = os.environ['DDPM_JAX_WHEEL_LOG']
_TREE = tuple({os.path.join(f(os.environ['DDPM_JAX_SOURCE_TREE']), '') for f in (os.path.abspath, os.path.realpath)})
_VENV = tuple({os.path.join(f(sys.prefix), '') for f in (os.path.abspath, os.path.realpath)})


def _append(line):
  with open(_LOG, 'a') as f:
    f.write(line + '\\n')


def _audit(event, args):
  if event not in ('open', 'os.listdir', 'os.scandir') or not args or isinstance(args[0], int):
    return
  path = os.path.abspath(os.fsdecode(args[0] if args[0] is not None else '.'))
  if (path + os.sep).startswith(_TREE) and not (path + os.sep).startswith(_VENV):
    _append(f'read {event} {path}')


def _modules():
  loaded = {name: getattr(module, '__file__', None) for name, module in list(sys.modules.items())
            if name.split('.')[0] in ('ddpm_jax', 'eval_bridge')}
  _append('modules ' + json.dumps(loaded))


sys.addaudithook(_audit)
atexit.register(_modules)
'''


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> str:
  """Returns the path of the wheel built (without dependencies) from a clean copy of the source tree."""
  source = tmp_path_factory.mktemp('source') / 'ddpm_jax'
  shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_IN_A_CHECKOUT))
  out = tmp_path_factory.mktemp('wheel')
  # Without setuptools in the venv (Python 3.12+ venvs lack it), pip fetches it into an isolated build env.
  isolation = [] if importlib.util.find_spec('setuptools') is None else ['--no-build-isolation']
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '.', '--no-deps', *isolation, '-q', '-w', str(out)],
                 cwd=source, check=True, capture_output=True, timeout=600)
  [path] = glob.glob(str(out / '*.whl'))
  return path


@pytest.fixture(scope='module')
def installed(wheel, tmp_path_factory) -> str:
  """Returns the folder the wheel is installed into (`pip install --target`), outside the source tree."""
  target = str(tmp_path_factory.mktemp('site'))
  assert not target.startswith(ROOT + os.sep), f'pytest\'s temp folder {target} is in the source tree'
  subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', target, wheel],
                 check=True, capture_output=True, timeout=600)
  return target


@pytest.fixture(scope='module')
def hook(tmp_path_factory) -> str:
  """Returns a folder holding the audit hook's sitecustomize.py."""
  folder = tmp_path_factory.mktemp('hook')
  (folder / 'sitecustomize.py').write_text(SITECUSTOMIZE)
  return str(folder)


@pytest.fixture(scope='module')
def installed_cli(installed, hook, env):
  """Returns run(folder, module, *args) -> stdout: `python -m module args` from the wheel, run in a new folder.

  It fails if the process exits with an error, read the source tree or imported a module from elsewhere.
  """
  def run(folder, module: str, *args) -> str:
    cwd = folder / 'cwd'
    cwd.mkdir(parents=True)
    log = folder / 'audit.log'
    done = subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**env, 'PYTHONPATH': os.pathsep.join([hook, installed]),
                                            'DDPM_JAX_WHEEL_LOG': str(log), 'DDPM_JAX_SOURCE_TREE': ROOT,
                                            'HF_HUB_OFFLINE': '1'})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = log.read_text().splitlines()
    reads = [line for line in lines if line.startswith('read ')]
    assert not reads, f'{module} read the source tree: {reads[:10]}'
    [modules] = [json.loads(line[len('modules '):]) for line in lines if line.startswith('modules ')]
    assert modules.get('ddpm_jax', '').startswith(os.path.join(installed, 'ddpm_jax', '')), modules.get('ddpm_jax')
    elsewhere = {name: path for name, path in modules.items() if not (path or '').startswith(installed + os.sep)}
    assert not elsewhere, f'modules not from the wheel: {elsewhere}'
    return done.stdout
  return run


def test_the_wheel_carries_every_module_and_the_defaults_but_no_tests_or_configs(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  in_tree = {os.path.relpath(path, ROOT) for package in PACKAGES
             for path in glob.glob(os.path.join(ROOT, package, '**', '*.py'), recursive=True)}
  assert 'ddpm_jax/config/defaults.py' in in_tree
  assert not in_tree - names, f'missing from the wheel: {sorted(in_tree - names)}'
  packages = {name.split('/')[0] for name in names if not name.split('/')[0].endswith('.dist-info')}
  assert packages == set(PACKAGES), packages


def stand_in_eval(workdir: str, weights: str, cache: str) -> None:
  """Points the workdir's config.json at stand-in Inception weights and the cheapest evaluation."""
  config = convert.with_values(workdir_lib.load_config(workdir), {
      **CHEAP_EVAL, 'eval.inception_weights': weights, 'eval.reference_cache_dir': cache})
  workdir_lib.write_config(workdir_lib.Workdir(workdir).config_file, config)


def test_sample_and_eval_without_config(trained, installed_cli, tmp_path):
  workdir = copy_run(trained, tmp_path / 'run')
  weights = testing.write_random_inception_weights(str(tmp_path / 'inception.pth'))
  stand_in_eval(workdir, weights, str(tmp_path / 'reference_cache'))
  out = installed_cli(tmp_path / 'sample', 'ddpm_jax.main', f'--workdir={workdir}', '--mode=sample')
  assert 'Wrote 6 samples of step 4' in out, out
  out = installed_cli(tmp_path / 'eval', 'ddpm_jax.main', f'--workdir={workdir}', '--mode=eval',
                      '--checkpoint_step=4')
  assert 'step 4: KID' in out, out
  with open(os.path.join(workdir, 'eval', 'step_4.json')) as f:
    assert json.load(f)['num_samples'] == CHEAP_EVAL['eval.num_samples']


def test_convert_import_and_export(trained, installed_cli, tmp_path):
  source = save(random_unet(TINY_DIFFUSERS), tmp_path / 'pipeline', DDPMScheduler(num_train_timesteps=20))
  imported = str(tmp_path / 'imported')
  out = installed_cli(tmp_path / 'import', 'ddpm_jax.convert', 'import', f'--source={source}',
                      f'--workdir={imported}')
  assert 'T=20' in out, out
  assert os.path.isfile(os.path.join(imported, 'config.json'))
  assert os.path.isdir(os.path.join(imported, 'checkpoints', '0'))
  exported = str(tmp_path / 'exported')
  out = installed_cli(tmp_path / 'export', 'ddpm_jax.convert', 'export', f'--workdir={trained}',
                      f'--out={exported}')
  assert 'DDPMPipeline.from_pretrained' in out, out
  assert os.path.isfile(os.path.join(exported, 'model_index.json'))
  assert os.path.isfile(os.path.join(exported, 'unet', 'diffusion_pytorch_model.safetensors'))
