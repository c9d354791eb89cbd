"""A flagship run of the study: sigmoid schedule, eps-MAE loss, twice the training (600k steps)."""
from configs import study


def get_config():
  config = study.get_config()
  config.diffusion.schedule = 'sigmoid'
  config.diffusion.loss = 'mae'
  config.training.num_steps = 600_000
  return config
