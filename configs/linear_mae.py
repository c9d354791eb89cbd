"""The study's linear schedule with the eps-MAE (L1) loss, 300k steps."""
from configs import study


def get_config():
  config = study.get_config()
  config.diffusion.schedule = 'linear'
  config.diffusion.loss = 'mae'
  config.training.num_steps = 300_000
  return config
