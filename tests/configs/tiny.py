"""A test-sized run: 8x8 shapes, a ~20k-parameter U-Net, a few steps. Compiles in seconds on a CPU."""
from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.data.image_size = 8
  config.model.base_channels = 8
  config.model.channel_mults = (1, 2)
  config.model.attention_resolutions = (4,)
  config.model.num_groups = 4
  config.diffusion.num_timesteps = 100
  # The tests were written for the ε-MSE recipe the quickstart had before it took v + Min-SNR: keep it here.
  config.diffusion.prediction = 'eps'
  config.diffusion.loss_weighting = 'none'
  config.training.ema_decay = 0.995
  # Unconditional, as the quickstart was before it conditioned on the shape kind (tests/test_conditional.py
  # covers class-conditional runs).
  config.model.num_classes = 0
  config.sampling.guidance_scale = 1.0
  config.eval.guidance_scale = 1.0
  config.training.batch_size = 8
  config.training.num_steps = 4
  config.training.learning_rate = 1e-3
  config.training.warmup_steps = 2
  config.training.log_every_steps = 2
  config.training.checkpoint_every_steps = 2
  config.training.sample_every_steps = 2
  config.training.num_grid_samples = 4
  config.sampling.num_steps = 5
  config.sampling.num_samples = 6
  config.sampling.batch_size = 4
  return config
