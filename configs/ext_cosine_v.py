"""Extended study: cosine_mse with v-prediction (Salimans & Ho 2022) instead of ε, nothing else changed.

Tests whether predicting v alone changes FID and the artefacts against configs/cosine_mse.py;
it is also the control of configs/ext_cosine_v_min_snr.py, which adds Min-SNR weighting to it.
"""
from configs import cosine_mse


def get_config():
  config = cosine_mse.get_config()
  config.diffusion.prediction = 'v'
  return config
