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
  data.split_seed = 0  # which images the hold-out splits hold (Food-101's study test split), whatever config.seed is
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
  # Compute dtype of convs and attention; params, EMA and Adam stay float32. float16 scales the loss dynamically.
  model.dtype = 'float32'  # float32 | bfloat16 | float16
  # jax.nn.dot_product_attention's implementation: None picks cuDNN's fused kernel where it applies, else XLA.
  model.attention_impl = ml_collections.config_dict.placeholder(str)  # None | 'xla' | 'cudnn'
  model.remat = False  # recompute each res/attention block's activations in the backward pass: less memory, more time

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = 'linear'  # linear | cosine | sigmoid | sigmoid_gamma | trained (diffusion.trained_betas)
  diffusion.trained_betas = ()  # schedule='trained': the T betas themselves (what an import of other betas sets)
  diffusion.num_timesteps = 1000  # T
  diffusion.loss = 'mse'  # mse | mae | huber
  diffusion.prediction = 'eps'  # what the network predicts: eps | x0 | v
  diffusion.loss_weighting = 'none'  # per-example loss weight: none | min_snr (Hang et al. 2023's Min-SNR-gamma)
  diffusion.min_snr_gamma = 5.0  # min_snr's gamma: SNR clipped at gamma (weight min(SNR, gamma)/SNR for eps)
  diffusion.offset_noise = 0.0  # std of a per-image, per-channel constant added to the training noise (0 = off)
  diffusion.zero_terminal_snr = False  # rescale the schedule so alpha_bar_T = 0 (Lin et al. 2023); needs v or x0

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 64  # global batch, split over all devices
  training.grad_accum_steps = 1  # microbatches per optimizer step (batch_size / this at a time in memory)
  training.num_steps = 300_000  # total optimizer steps
  training.learning_rate = 2e-4  # peak Adam learning rate
  training.warmup_steps = 5000  # linear learning-rate warm-up
  training.grad_clip = 1.0  # global-norm gradient clipping (0 = off)
  training.ema_decay = 0.9999  # EMA decay of the params used for sampling and evaluation
  training.ema_warmup = True  # EMA decay min(ema_decay, (1 + step) / (10 + step)); False = constant ema_decay (DDPM)
  training.log_every_steps = 200  # scalars to TensorBoard and console
  training.checkpoint_every_steps = 15_000  # Orbax checkpoint period
  training.sample_every_steps = 15_000  # sample-grid period (defaults to the checkpoint period)
  training.keep_checkpoints = 3  # checkpoints kept on disk
  training.num_grid_samples = 64  # images in the periodic sample grid
  training.max_nonfinite_steps = 20  # stop after this many NaN/Inf steps in a row (they are skipped, not applied)

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.sampler = 'ddpm'  # ddpm | ddim | dpmpp_2m (DPM-Solver++(2M))
  sampling.num_steps = 1000  # reverse steps (ddim may use fewer, dpmpp_2m at most T-1)
  sampling.num_samples = 64  # images written by --mode=sample
  sampling.batch_size = 64  # images per sampling batch
  sampling.variance = 'beta_tilde'  # ddpm variance: beta_tilde (posterior) | beta
  sampling.eta = 0.0  # ddim stochasticity
  sampling.timestep_spacing = 'leading'  # ddim's steps: leading (DDIM paper, diffusers) | linspace (T-1..0) | trailing
  sampling.clip_denoised = True  # clip the predicted x0 to [-1, 1] at every step

  config.eval = ev = ml_collections.ConfigDict()
  # fast: the settings below (in-loop, cheap) | paper: as papers score (eval.paper_*, the whole 'train' split as the
  # reference, Inception in full float32); README "Evaluate"
  ev.protocol = 'fast'
  ev.paper_num_samples = 50_000  # paper protocol: generated images
  ev.paper_sampler = 'ddpm'  # paper protocol: sampler (with sampling.variance / sampling.eta)
  ev.paper_sampling_steps = 0  # paper protocol: reverse steps (0 = all T)
  ev.every_steps = 15_000  # FID/KID/MS-SSIM period in training (0 = off)
  ev.num_samples = 2000  # generated images per evaluation
  ev.sampler = 'ddim'  # sampler used for evaluation: ddpm | ddim | dpmpp_2m
  ev.sampling_steps = 100  # reverse steps used for evaluation
  ev.timestep_spacing = 'leading'  # ddim's steps in evaluation: leading | linspace | trailing
  ev.batch_size = 250  # images per sampling batch during evaluation
  ev.inception_weights = ''  # path to torch-fidelity Inception weights for offline machines ('' = download)
  # Evaluator plug-ins to run (eval_bridge/metrics/): fid | kid | ms_ssim | artefacts | isc (Inception Score) | prc
  ev.metrics = ('fid', 'kid', 'ms_ssim', 'artefacts')
  ev.ms_ssim_pairs = 500  # random generated pairs averaged for MS-SSIM
  ev.num_reference = 2020  # reference images (at most the split's size; Food-101's study test split has 2020)
  ev.reference_cache_dir = ''  # where reference features are cached ('' = ~/.cache/ddpm_jax/reference_features)

  config.logging = lg = ml_collections.ConfigDict()
  lg.wandb = False  # also log scalars, sample grids and the config to Weights & Biases (pip install -e '.[wandb]')
  lg.wandb_project = 'ddpm_jax'  # wandb project
  lg.wandb_entity = ''  # wandb user or team ('' = your default entity)
  lg.wandb_run_name = ''  # run name shown in wandb ('' = the workdir's name)
  lg.wandb_mode = ''  # online | offline | disabled ('' = wandb's choice: $WANDB_MODE, else online)
  return config
