"""The study's sigmoid schedule with the eps-MSE loss, 300k steps."""
from configs import study


def get_config():
  config = study.get_config()
  config.diffusion.schedule = 'sigmoid'
  config.diffusion.loss = 'mse'
  config.training.num_steps = 300_000
  return config
