"""The study's base run: a DDPM U-Net on Food-101 at 64x64, every key with its default.

Other configs import this and override a handful of keys.
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0  # base PRNG seed: params, timesteps, noise, data order and flips derive from it

  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'tfds:food101'  # 'shapes', 'tfds:NAME' (food101 uses the study's split) or 'folder:PATH'
  data.data_dir = ''  # TFDS data_dir / where the resized cache lives ('' = TFDS default, ~/tensorflow_datasets)
  data.image_size = 64  # square side in pixels; must be divisible by 2**(len(model.channel_mults)-1)
  data.eval_split = 'test'  # split used as the reference for FID/KID
  data.random_flip = True  # random horizontal flip at train time, per example
  data.strict = False  # folder datasets: fail on an unreadable image instead of skipping it
  data.num_workers = 0  # grain worker processes (0 = read in the main process)
  data.on_device = False  # keep the whole train split in device memory and draw batches inside the train step

  config.model = model = ml_collections.ConfigDict()
  # 63,322,371 parameters (253 MB in fp32), near the study's 258 MB model.
  model.base_channels = 128  # channels at the first resolution
  model.channel_mults = (1, 2, 3, 3)  # channels = base * mult per resolution; one downsample between levels
  model.num_res_blocks = 2  # residual blocks per resolution on the way down
  model.attention_resolutions = (16,)  # feature-map sizes that get self-attention
  model.num_heads = 4  # attention heads
  model.dropout = 0.1  # dropout inside residual blocks during training
  model.num_groups = 32  # GroupNorm groups
  model.norm_eps = 1e-6  # GroupNorm epsilon (diffusion_tf's 1e-6; diffusers models often use 1e-5)
  model.dtype = 'float32'  # compute dtype of convolutions and attention (params stay float32): float32 | bfloat16
  # jax.nn.dot_product_attention's implementation: None picks cuDNN's fused kernel where it applies, else XLA.
  model.attention_impl = ml_collections.config_dict.placeholder(str)  # None | 'xla' | 'cudnn'

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = 'linear'  # linear | cosine | sigmoid | sigmoid_gamma
  diffusion.num_timesteps = 1000  # T
  diffusion.loss = 'mse'  # mse | mae | huber
  diffusion.prediction = 'eps'  # what the network predicts: eps | x0 | v

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 64  # global batch, split over all devices
  training.num_steps = 300_000  # total optimizer steps
  training.learning_rate = 2e-4  # peak Adam learning rate
  training.warmup_steps = 5000  # linear learning-rate warm-up
  training.grad_clip = 1.0  # global-norm gradient clipping (0 = off)
  training.ema_decay = 0.9999  # EMA decay of the params used for sampling and evaluation
  training.log_every_steps = 200  # scalars to TensorBoard and console
  training.checkpoint_every_steps = 15_000  # Orbax checkpoint period
  training.sample_every_steps = 15_000  # sample-grid period (defaults to the checkpoint period)
  training.keep_checkpoints = 3  # checkpoints kept on disk
  training.num_grid_samples = 64  # images in the periodic sample grid
  training.max_nonfinite_steps = 20  # stop after this many NaN/Inf steps in a row (they are skipped, not applied)

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.sampler = 'ddpm'  # ddpm | ddim
  sampling.num_steps = 1000  # reverse steps (ddim may use fewer)
  sampling.num_samples = 64  # images written by --mode=sample
  sampling.batch_size = 64  # images per sampling batch
  sampling.variance = 'beta_tilde'  # ddpm variance: beta_tilde (posterior) | beta
  sampling.eta = 0.0  # ddim stochasticity
  sampling.clip_denoised = True  # clip the predicted x0 to [-1, 1] at every step

  config.eval = ev = ml_collections.ConfigDict()
  ev.every_steps = 15_000  # FID/KID/MS-SSIM period in training (0 = off)
  ev.num_samples = 2000  # generated images per evaluation
  ev.sampler = 'ddim'  # sampler used for evaluation
  ev.sampling_steps = 100  # reverse steps used for evaluation
  ev.batch_size = 250  # images per sampling batch during evaluation
  ev.inception_weights = ''  # path to torch-fidelity Inception weights for offline machines ('' = download)
  ev.metrics = ('fid', 'kid', 'ms_ssim')  # evaluator plug-ins to run (eval_bridge/metrics/): fid | kid | ms_ssim
  ev.ms_ssim_pairs = 500  # random generated pairs averaged for MS-SSIM
  ev.num_reference = 2020  # reference images (at most the split's size; Food-101's study test split has 2020)
  ev.reference_cache_dir = ''  # where reference features are cached ('' = ~/.cache/ddpm_jax/reference_features)
  return config
