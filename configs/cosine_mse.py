"""The study's cosine schedule (Nichol & Dhariwal) with the eps-MSE loss, 300k steps."""
from configs import study


def get_config():
  config = study.get_config()
  config.diffusion.schedule = 'cosine'
  config.diffusion.loss = 'mse'
  config.training.num_steps = 300_000
  return config
