"""Class-conditional Food-101 on an ADM-style U-Net (Dhariwal & Nichol 2021): configs/food101_cfg.py with
scale-shift norm (AdaGN), BigGAN-style residual up/downsampling, 64-channel attention heads at 32, 16 and 8 px,
and ADM's timestep sinusoids. The widths stay the study's (128 x (1, 2, 3, 3)), so it compares with food101_cfg
by the network's design alone.

It costs more than food101_cfg's DDPM network: 78.2M parameters against 63.4M (the AdaGN projections and the
resampling blocks) and 1.32x the forward FLOPs (72 against 55 GFLOP an image, XLA's count), much of it attention
at 32 px, on 4x the positions of 16 px. BENCHMARKS.md's ADM table has the train-step time and memory of each
option against the DDPM network.
"""
from configs import food101_cfg


def get_config():
  config = food101_cfg.get_config()
  config.model.scale_shift_norm = True
  config.model.resblock_updown = True
  config.model.num_head_channels = 64  # heads = width // 64: 2, 4, 6 and 6 at the four levels
  config.model.attention_resolutions = (32, 16, 8)
  config.model.time_embedding = 'adm'
  return config
