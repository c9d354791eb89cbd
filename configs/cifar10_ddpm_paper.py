"""Scores a CIFAR-10 DDPM workdir as Ho et al. (2020) did: 50,000 samples of the DDPM sampler with sigma^2 = beta
over all 1000 steps against the 50,000 training images (FID 3.17 in the paper), Inception in full float32.

  python -m ddpm_jax.convert import --source=google/ddpm-cifar10-32 --workdir=runs/ddpm_cifar10 \
    --config=configs/cifar10_ddpm.py
  python -m ddpm_jax.main --config=configs/cifar10_ddpm_paper.py:runs/ddpm_cifar10 --workdir=runs/ddpm_cifar10 \
    --mode=eval

The argument is the workdir: its config.json, with only evaluation and sampling keys changed.
"""
from ddpm_jax.config import convert
from ddpm_jax.run import workdir


def get_config(path):
  config = convert.to_configdict(workdir.load_config(path))
  config.eval.protocol = 'paper'
  config.eval.paper_num_samples = 50_000
  config.eval.paper_sampler = 'ddpm'
  config.eval.paper_sampling_steps = 0  # all T = 1000
  config.eval.paper_variance = 'beta'  # the paper's CIFAR-10 samples; google's scheduler config says fixed_small
  config.eval.batch_size = 1000
  return config
