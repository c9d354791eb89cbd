"""A small U-Net (~1M parameters) on the built-in shapes at 16x16: shapes appear in a few minutes on 2 CPU cores."""
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
  config.training.batch_size = 64
  config.training.num_steps = 400
  config.training.learning_rate = 1e-3
  config.training.warmup_steps = 50
  config.training.ema_decay = 0.995
  config.training.log_every_steps = 25
  config.training.checkpoint_every_steps = 100
  config.training.sample_every_steps = 200
  config.training.keep_checkpoints = 2
  config.sampling.sampler = 'ddim'
  config.sampling.num_steps = 50
  config.eval.every_steps = 0
  return config
