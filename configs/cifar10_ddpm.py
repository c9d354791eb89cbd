"""The original DDPM on CIFAR-10 (Ho et al. 2020, the 35.7M-parameter model): the paper's settings."""
from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'tfds:cifar10'
  config.data.image_size = 32
  config.data.random_flip = True

  config.model.base_channels = 128
  config.model.channel_mults = (1, 2, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attention_resolutions = (16,)
  config.model.num_heads = 1
  config.model.dropout = 0.1

  config.diffusion.schedule = 'linear'
  config.diffusion.num_timesteps = 1000
  config.diffusion.loss = 'mse'
  config.diffusion.prediction = 'eps'
  config.diffusion.loss_weighting = 'none'

  config.training.batch_size = 128
  config.training.num_steps = 800_000
  config.training.learning_rate = 2e-4
  config.training.warmup_steps = 5000
  config.training.grad_clip = 1.0
  config.training.ema_decay = 0.9999
  config.training.ema_warmup = False  # the paper's EMA: a constant decay from the first step

  # The paper samples with sigma_t^2 = beta_t through all 1000 steps; evaluate the same way, so the
  # metrics are of the paper's sampler (DDIM ignores the variance).
  config.sampling.sampler = 'ddpm'
  config.sampling.num_steps = 1000
  config.sampling.variance = 'beta'
  config.eval.sampling.sampler = 'ddpm'
  config.eval.sampling.num_steps = 1000
  config.eval.sampling.variance = 'beta'
  config.eval.num_reference = 10_000  # the whole CIFAR-10 test split
  return config
