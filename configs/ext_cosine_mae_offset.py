"""Extended study: the flagship cosine_mae (600k steps) with offset noise of strength 0.1.

Offset noise adds a per-image, per-channel constant to the training noise, so the network learns to move an
image's mean: against configs/cosine_mae.py it tests whether the best run's brightness and colour gaps and
its share of dark images come closer to the real images', and what that costs in FID.
"""
from configs import cosine_mae


def get_config():
  config = cosine_mae.get_config()
  config.diffusion.offset_noise = 0.1
  return config
