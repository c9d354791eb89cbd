"""The study's base run: a DDPM U-Net on Food-101 at 64x64 with the package's defaults, trained as the study did.

The study compared noise schedules and losses with eps-prediction and unweighted losses; the package's default
has since moved to v-prediction (which learns faster: benchmarks/learning_efficiency.py). Both are pinned here.
The six study configs start from here, so they train what the study trained (tests/test_configs.py holds them to it).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.diffusion.prediction = 'eps'
  config.diffusion.loss_weighting = 'none'
  return config
