"""Extended study: cosine_mse with v-prediction and Min-SNR-γ loss weighting (Hang et al. 2023, γ = 5).

Tests whether Min-SNR weighting (the weight min(SNR, γ) / (SNR + 1) of a v loss) trains faster or better:
against configs/ext_cosine_v.py it changes the weighting alone; against configs/cosine_mse.py, both.
"""
from configs import cosine_mse


def get_config():
  config = cosine_mse.get_config()
  config.diffusion.prediction = 'v'
  config.diffusion.loss_weighting = 'min_snr'
  config.diffusion.min_snr_gamma = 5.0  # Hang et al.'s; default's value, spelt out because it is what is tested
  return config
