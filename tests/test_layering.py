"""The pure core (every module under ddpm_jax/core/) imports only jax, flax, optax and numpy, so it runs where
TensorFlow can't be installed."""
import ast
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, 'ddpm_jax', 'core')
# Blocked while the core imports (flax itself needs absl, so absl is checked in the core's own imports below).
FORBIDDEN = ['tensorflow', 'tensorflow_datasets', 'grain', 'clu', 'orbax', 'torch', 'torch_fidelity', 'torchmetrics',
             'torchvision', 'ml_collections', 'PIL', 'matplotlib', 'tensorboard', 'eval_bridge']
# What a core module itself may import: these four, the core, and the standard library.
ALLOWED = {'jax', 'flax', 'optax', 'numpy'}
# The I/O side of ddpm_jax: everything outside core/.
FORBIDDEN_OWN = ['ddpm_jax.data', 'ddpm_jax.run', 'ddpm_jax.config', 'ddpm_jax.interop', 'ddpm_jax.reporting',
                 'ddpm_jax.evaluation', 'ddpm_jax.main', 'ddpm_jax.convert', 'ddpm_jax.report', 'ddpm_jax.cli']


def core_modules() -> list:
  """Returns the dotted names of every module file under ddpm_jax/core/."""
  names = []
  for directory, _, files in os.walk(CORE):
    for name in sorted(files):
      if name.endswith('.py'):
        relative = os.path.relpath(os.path.join(directory, name), ROOT)[:-3].replace(os.sep, '.')
        names.append(relative.removesuffix('.__init__'))
  return names


def test_the_walk_finds_every_core_module():
  modules = core_modules()
  for name in ('ddpm_jax.core.schedules', 'ddpm_jax.core.diffusion', 'ddpm_jax.core.keys', 'ddpm_jax.core.train_step',
               'ddpm_jax.core.sampler', 'ddpm_jax.core.sharding', 'ddpm_jax.core.device_data',
               'ddpm_jax.core.models.unet'):
    assert name in modules


def test_every_core_module_imports_with_the_io_libraries_blocked():
  modules = core_modules()
  spec = json.dumps({'modules': modules, 'forbidden': FORBIDDEN, 'forbidden_own': FORBIDDEN_OWN})
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'programs', 'core_imports.py'), spec],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and f'imported {len(modules)}' in result.stdout, result.stderr[-3000:]


def imported_names(path: str) -> set:
  """Returns the top-level names of every module the file imports."""
  names = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names.add(node.module)
  return names


def test_core_modules_import_only_jax_flax_optax_numpy_the_core_and_the_standard_library():
  for directory, _, files in os.walk(CORE):
    for name in (f for f in files if f.endswith('.py')):
      path = os.path.join(directory, name)
      for module in imported_names(path):
        top = module.split('.')[0]
        allowed = top in ALLOWED or top in sys.stdlib_module_names or module.startswith('ddpm_jax.core')
        assert allowed, f'{os.path.relpath(path, ROOT)} imports {module}'
