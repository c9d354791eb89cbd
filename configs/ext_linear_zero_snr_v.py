"""Extended study: linear_mse rescaled to zero terminal SNR (Lin et al. 2023), with v-prediction.

The linear schedule leaves ᾱ_T ≈ 4e-5: the training's noisiest images still hold their mean brightness,
which sampling's pure noise never has, a suspect for the study's dark-image and colour-shift artefacts.
Against configs/linear_mse.py this tests the fix; ᾱ_T = 0 needs v (or x0), so it changes both keys
(configs/ext_cosine_v.py shows what v alone does, on the cosine schedule). Evaluation keeps the study's
DDIM 'leading' steps so the metrics stay comparable; `--mode=eval --config.eval.timestep_spacing=trailing`
starts sampling at t = T as Lin et al. advise.
"""
from configs import linear_mse


def get_config():
  config = linear_mse.get_config()
  config.diffusion.zero_terminal_snr = True
  config.diffusion.prediction = 'v'
  return config
