"""The config a workdir was trained or imported with (its config.json), to override keys of on the command line.

  python -m ddpm_jax.main --config=configs/workdir.py:runs/ddpm_cifar10 --workdir=runs/ddpm_cifar10 \
    --mode=eval --config.eval.protocol=paper

Without --config, --mode=sample and --mode=eval read config.json as they are; this file is for changing a key.
"""
from ddpm_jax.config import convert
from ddpm_jax.run import workdir


def get_config(path):
  return convert.to_configdict(workdir.load_config(path))
