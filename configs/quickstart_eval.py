"""Scores a quickstart run in about a minute on 2 CPU cores: the workdir's config, with a small evaluation.

  python -m eval_bridge.testing /tmp/standin_inception.pth  # offline only: stand-in weights, scores marked so
  python -m ddpm_jax.main --config=configs/quickstart_eval.py:runs/quickstart --workdir=runs/quickstart \
    --mode=eval --checkpoint_step=1500 [--config.eval.inception_weights=/tmp/standin_inception.pth]

The argument is the workdir: its config.json, with only evaluation keys changed. The defaults (2,000 samples
against 2,020 reference images) take ~25 minutes a checkpoint there, nearly all of it Inception at 299x299 px
(0.22 CPU-seconds an image). Here: 160 samples (DPM-Solver++(2M), 20 steps) against 160 reference images,
whose features are cached after the first evaluation (README, "A quickstart run in about a minute", has the
measured times). FID at n=160 is biased upward by tens of points: enough to follow one run, not to compare
with anything published.
"""
from ddpm_jax.config import convert
from ddpm_jax.run import workdir


def get_config(path):
  config = convert.to_configdict(workdir.load_config(path))
  config.eval.num_samples = 160
  config.eval.num_reference = 160
  config.eval.batch_size = 160  # one sampling batch: 16x16 images are small
  config.eval.ms_ssim_pairs = 100
  config.eval.sampling.sampler = 'dpmpp_2m'
  config.eval.sampling.num_steps = 20
  config.eval.sampling.timestep_spacing = 'logsnr'
  return config
