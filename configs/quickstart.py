"""A small U-Net (1.1M parameters) on the built-in shapes at 16x16: shapes appear in ~6 minutes on 2 CPU cores.

Tuned on 2 shared CPU cores by trying batch, learning rate, steps, width and prediction type:
many small steps beat fewer large ones at equal wall time (batch 16 runs ~3.7 steps/s).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'shapes'
  config.data.image_size = 16
  config.model.base_channels = 32
  config.model.channel_mults = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = (4,)
  config.model.num_heads = 1
  config.model.dropout = 0.0
  config.model.num_groups = 8
  config.diffusion.schedule = 'cosine'
  config.diffusion.loss = 'mse'
  config.training.batch_size = 16  # small batches, many steps: the fastest route to shapes on a CPU
  config.training.num_steps = 1000
  config.training.learning_rate = 2e-3
  config.training.warmup_steps = 25
  config.training.ema_decay = 0.995
  config.training.log_every_steps = 25
  config.training.checkpoint_every_steps = 250
  config.training.sample_every_steps = 500
  config.training.keep_checkpoints = 2
  config.sampling.sampler = 'ddim'
  config.sampling.num_steps = 50
  config.sampling.eta = 1.0  # stochastic DDIM: clean shapes from a young model, where eta=0 leaves speckle
  config.eval.sampling.eta = 1.0  # evaluations sample as the grids do
  config.eval.every_steps = 0
  return config
