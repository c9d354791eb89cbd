"""The study's baseline (its diffusion-linear-scheduler run): linear betas, eps-MSE, 300k steps."""
from configs import study


def get_config():
  config = study.get_config()
  config.diffusion.schedule = 'linear'
  config.diffusion.loss = 'mse'
  config.training.num_steps = 300_000
  return config
