"""Extended study: linear_mse rescaled to zero terminal SNR (Lin et al. 2023), with v-prediction.

The linear schedule leaves ᾱ_T ≈ 4e-5: the training's noisiest images still hold their mean brightness,
which sampling's pure noise never has, a suspect for the study's dark-image and colour-shift artefacts.
Against configs/linear_mse.py this tests the fix; ᾱ_T = 0 needs v (or x0), so it changes both keys
(configs/ext_cosine_v.py shows what v alone does, on the cosine schedule). A log-SNR grid can't start
from ᾱ_T = 0 (infinite noise level), so evaluation's DPM-Solver++(2M) takes its own grid from t = T-1,
as Lin et al. advise ('trailing'); at 20 steps both grids solve the same ODE to within ~0.005 RMS.
"""
from configs import linear_mse


def get_config():
  config = linear_mse.get_config()
  config.diffusion.zero_terminal_snr = True
  config.diffusion.prediction = 'v'
  config.eval.sampling.timestep_spacing = 'trailing'
  return config
