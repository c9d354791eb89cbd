"""The pure core imports only jax, flax, optax and numpy, so it runs where TensorFlow can't be installed."""
import subprocess
import sys

PURE_MODULES = ['ddpm_jax.schedules', 'ddpm_jax.diffusion', 'ddpm_jax.models.unet', 'ddpm_jax.train_step',
                'ddpm_jax.sharding', 'ddpm_jax.device_data', 'ddpm_jax.distributed']
FORBIDDEN = ['tensorflow', 'tensorflow_datasets', 'grain', 'clu', 'torch', 'torch_fidelity', 'torchmetrics',
             'ml_collections', 'orbax', 'PIL', 'matplotlib', 'eval_bridge', 'ddpm_jax.data', 'ddpm_jax.train']


def test_pure_core_imports_nothing_from_the_io_layers():
  code = (f'import sys\n'
          f'for name in {PURE_MODULES!r}: __import__(name)\n'
          f'bad = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r} or m in {FORBIDDEN!r})\n'
          f'print(",".join(bad))\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert result.stdout.strip() == '', f'the pure core imported: {result.stdout.strip()}'
