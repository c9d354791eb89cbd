"""Extended study: linear_mse with offset noise of strength 0.1.

Tests the study's dark-image and colour-shift observation on the schedule that leaks the most mean
brightness (ᾱ_T ≈ 4e-5): against configs/linear_mse.py, do Δbright, colour and Δdark shrink? Beside
configs/ext_linear_zero_snr_v.py it compares the cheap fix with the schedule's own.
"""
from configs import linear_mse


def get_config():
  config = linear_mse.get_config()
  config.diffusion.offset_noise = 0.1
  return config
