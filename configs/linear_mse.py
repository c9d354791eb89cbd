"""The study's baseline (its diffusion-linear-scheduler run): linear betas, eps-MSE, 300k steps."""
from configs import default


def get_config():
  config = default.get_config()
  config.diffusion.schedule = 'linear'
  config.diffusion.loss = 'mse'
  config.training.num_steps = 300_000
  return config
