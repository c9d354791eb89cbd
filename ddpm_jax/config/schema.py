"""The typed config: one frozen dataclass per section, each key with its type, default, allowed values and doc.

This is the one place a key is declared (the model's and the samplers' sections are the core's own
UNetConfig and SamplerSettings, declared the same way). `configs/*.py` start from `defaults.get_config()`,
a ConfigDict made from these; `convert.from_mapping` turns a ConfigDict (or a workdir's config.json)
into a `Config`, checking every key on the way.
"""
import dataclasses

from ddpm_jax.core import diffusion, phema, schedules
from ddpm_jax.core.models.unet import UNetConfig
from ddpm_jax.core.options import option
from ddpm_jax.core.sampler import SamplerSettings
from eval_bridge import metrics  # the registry alone: no torch

SCHEDULES = tuple(schedules.SCHEDULE_NAMES) + ('trained',)
PROTOCOLS = ('fast', 'paper')
WANDB_MODES = ('', 'online', 'offline', 'disabled')  # '' = wandb's own choice: $WANDB_MODE, else online
SPLITS = ('train', 'test')
PHEMA_DTYPES = ('float32', 'float16')


def check_metric_names(key: str, names: tuple) -> None:
  """Raises ValueError unless names choose at least one registered metric (plug-ins may register at run time)."""
  try:
    metrics.select(names)
  except ValueError as e:
    comma = next((name for name in names if ',' in name), None)
    hint = f' (a tuple on the command line: --config.{key}="{tuple(comma.split(","))}")' if comma else ''
    raise ValueError(f'{key}: {e}{hint}') from None


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What the run trains on and how it is read."""
  dataset: str = option('tfds:food101', "'shapes', 'tfds:NAME' (food101 uses the study's split) or 'folder:PATH'")
  data_dir: str = option('', "TFDS data_dir / where the resized cache lives ('' = TFDS default, "
                         '~/tensorflow_datasets)', free=True)
  image_size: int = option(64, 'square side in pixels; a multiple of 2**(len(model.channel_mults)-1)', low=8)
  eval_split: str = option('test', 'split used as the reference for FID/KID', choices=SPLITS, free=True)
  split_seed: int = option(0, "which images the hold-out splits hold (Food-101's study test split), whatever "
                           'seed is', low=0)
  random_flip: bool = option(True, 'random horizontal flip at train time, per example')
  strict: bool = option(False, 'folder datasets: fail on an unreadable image instead of skipping it', free=True)
  num_workers: int = option(0, 'grain worker processes (0 = read in the main process)', low=0, free=True)
  on_device: bool = option(False, 'keep the whole train split in device memory and draw batches inside the '
                           'train step')


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """The forward process and the training objective."""
  # Cosine: the study's best schedule, and the one benchmarks/learning_efficiency.py measured v on; the study's
  # configs (and cifar10_ddpm, DDPM's) pin their own.
  schedule: str = option('cosine', 'noise schedule (trained: diffusion.trained_betas)', choices=SCHEDULES)
  trained_betas: tuple[float, ...] = option((), "schedule='trained': the T betas themselves (what an import of "
                                            'other betas sets)', low=0.0, high=1.0, low_open=True)
  num_timesteps: int = option(1000, 'T, the number of diffusion steps', low=2)
  loss: str = option('mse', 'elementwise loss', choices=diffusion.LOSSES)
  huber_delta: float = option(1.0, "loss='huber': where it turns from quadratic to linear", low=0.0, low_open=True)
  # v learns real photographs ~2x closer to their statistics than eps at equal steps, and closer than v with Min-SNR
  # (benchmarks/learning_efficiency.py); the study's configs (configs/study.py) pin eps, as the study trained.
  prediction: str = option('v', 'what the network predicts', choices=diffusion.PREDICTIONS)
  loss_weighting: str = option('none', "per-example loss weight (min_snr: Hang et al. 2023's Min-SNR-gamma; edm: Karras et al. "
                               "2022's lambda(sigma), sigma_data 0.5)",
                               choices=diffusion.LOSS_WEIGHTINGS)
  min_snr_gamma: float = option(5.0, "min_snr's gamma: SNR clipped at gamma", low=0.0, low_open=True)
  offset_noise: float = option(0.0, 'std of a per-image, per-channel constant added to the training noise '
                               '(0 = off; 0.1 is common)', low=0.0)
  logsnr_shift: float = option(0.0, "add this to the schedule's log-SNR at every timestep (> 0 = less noise; "
                               "simple diffusion's 2 ln(64 / image_size) for small images: +2.77 at 16 px)")
  zero_terminal_snr: bool = option(False, 'rescale the schedule so alpha_bar_T = 0 (Lin et al. 2023); needs '
                                   'prediction v or x0')

  def build_schedule(self) -> schedules.Schedule:
    """Returns the noise schedule: a named one, or schedule='trained''s own betas (what imports set)."""
    if self.schedule != 'trained':
      return schedules.make_schedule(self.schedule, self.num_timesteps, zero_terminal_snr=self.zero_terminal_snr,
                                     logsnr_shift=self.logsnr_shift)
    if len(self.trained_betas) != self.num_timesteps:
      raise ValueError(f"diffusion.schedule='trained' needs diffusion.trained_betas of diffusion.num_timesteps="
                       f'{self.num_timesteps} values; it has {len(self.trained_betas)}')
    betas = schedules.shift_logsnr(self.trained_betas, self.logsnr_shift) if self.logsnr_shift else self.trained_betas
    return schedules.schedule_from_betas(schedules.rescale_zero_terminal_snr(betas) if self.zero_terminal_snr
                                         else betas)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """The optimizer, the EMA and the loop's periods."""
  batch_size: int = option(64, 'global batch, split over all devices', low=1)
  grad_accum_steps: int = option(1, 'microbatches per optimizer step (batch_size / this at a time in memory)',
                                 low=1)
  num_steps: int = option(300_000, 'total optimizer steps', low=1, free=True)
  learning_rate: float = option(2e-4, 'peak Adam learning rate', low=0.0, low_open=True)
  warmup_steps: int = option(5000, 'linear learning-rate warm-up', low=0)
  grad_clip: float = option(1.0, 'global-norm gradient clipping (0 = off)', low=0.0)
  ema_decay: float = option(0.9999, 'EMA decay of the params used for sampling and evaluation', low=0.0, high=1.0,
                            high_open=True)
  ema_warmup: bool = option(True, 'EMA decay min(ema_decay, (1 + step) / (10 + step)); False = constant '
                            'ema_decay (DDPM)')
  log_every_steps: int = option(200, 'scalars to TensorBoard and console', low=1, free=True)
  checkpoint_every_steps: int = option(15_000, 'Orbax checkpoint period', low=1, free=True)
  sample_every_steps: int = option(15_000, 'sample-grid period', low=1, free=True)
  keep_checkpoints: int = option(3, 'checkpoints kept on disk', low=1, free=True)
  num_grid_samples: int = option(64, 'images in the periodic sample grid', low=1, free=True)
  max_nonfinite_steps: int = option(20, 'stop after this many NaN/Inf steps in a row (they are skipped, not '
                                    'applied)', low=1, free=True)
  phema_sigma_rels: tuple[float, ...] = option((), 'post-hoc EMA: one power-function EMA tracked per relative '
                                               "width sigma_rel (EDM2's (0.05, 0.1)); () = off", low=0.0,
                                               high=phema.MAX_SIGMA_REL, low_open=True, high_open=True)
  phema_every_steps: int = option(15_000, 'post-hoc EMA: period of the snapshots of each profile in '
                                  '<workdir>/phema/', low=1, free=True)
  phema_dtype: str = option('float32', 'post-hoc EMA: dtype of the snapshots (float16 halves the disk)',
                            choices=PHEMA_DTYPES, free=True)
  label_dropout: float = option(0.1, 'class-conditional models (model.num_classes > 0): the fraction of examples '
                                'trained with the null class, which classifier-free guidance needs', low=0.0,
                                high=1.0, high_open=True)


@dataclasses.dataclass(frozen=True)
class SamplingConfig(SamplerSettings):
  """The sampler of the training grids and --mode=sample, and how many images --mode=sample writes."""
  num_samples: int = option(64, 'images written by --mode=sample', low=1)
  batch_size: int = option(64, 'images per sampling batch', low=1)
  guidance_scale: float = option(1.0, 'classifier-free guidance w: prediction = uncond + w (cond - uncond); 1 = '
                                 'plain conditional, 0 = unconditional (class-conditional models only)', low=0.0)
  guidance_interval: tuple[int, ...] = option((), 'guide only at timesteps t_lo <= t <= t_hi, given as (t_lo, '
                                              't_hi) (Kynkaanniemi et al. 2024); () = every step', low=0)
  labels: tuple[int | str, ...] = option((), 'class-conditional models: the classes to draw, as ids or names, cycled over the '
                         'samples; () = balanced (sample i gets class i mod num_classes)')


# The fast protocol's sampler: DPM-Solver++(2M) on a log-SNR grid solves the probability-flow ODE of Gaussian data
# to 0.002-0.005 RMS in 20 steps, where DDIM-100 'leading' is 0.006-0.012 off (BENCHMARKS.md, ode_accuracy): as
# accurate as 5x the model calls.
EVAL_SAMPLER = SamplerSettings(sampler='dpmpp_2m', num_steps=20, timestep_spacing='logsnr')


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """The metrics of EMA samples, in training (every_steps) and under --mode=eval."""
  protocol: str = option('fast', "fast: the settings below (in-loop, cheap) | paper: as papers score "
                         "(eval.paper_*, the whole 'train' split as the reference, Inception in full float32)",
                         choices=PROTOCOLS)
  paper_num_samples: int = option(50_000, 'paper protocol: generated images', low=2)
  paper_sampler: str = option('ddpm', "paper protocol: sampler (with eval.paper_variance and eval.sampling's eta)",
                              choices=diffusion.SAMPLERS)
  paper_sampling_steps: int = option(0, 'paper protocol: reverse steps (0 = all T)', low=0)
  paper_variance: str = option('beta', "paper protocol: ddpm's variance (DDPM's FID 3.17 is sigma^2 = beta)",
                               choices=diffusion.VARIANCES)
  every_steps: int = option(15_000, 'FID/KID/MS-SSIM period in training (0 = off)', low=0)
  num_samples: int = option(2000, 'generated images per evaluation', low=2)
  sampling: SamplerSettings = option(EVAL_SAMPLER, "the evaluation's sampler (eval.sampling.sampler, .num_steps, "
                                     '.variance, .eta, .clip_denoised, .timestep_spacing)')
  batch_size: int = option(250, 'images per sampling batch during evaluation', low=1)
  inception_weights: str = option('', "path to torch-fidelity Inception weights for offline machines ('' = "
                                  'download)')
  metrics: tuple[str, ...] = option(('fid', 'kid', 'ms_ssim', 'artefacts'), 'evaluator plug-ins to run, by name '
                                    f'(eval_bridge/metrics/: {", ".join(sorted(metrics.REGISTRY))})',
                                    check=check_metric_names)
  ms_ssim_pairs: int = option(500, 'random generated pairs averaged for MS-SSIM', low=1)
  num_reference: int = option(2020, "reference images (at most the split's size; Food-101's study test split has "
                              '2020)', low=2)
  reference_cache_dir: str = option('', "where reference features are cached ('' = "
                                    '~/.cache/ddpm_jax/reference_features)')
  reference_stats: str = option('', "an .npz of reference statistics to score against instead of reading "
                                "data.eval_split: python -m ddpm_jax.stats compute's, or EDM's, ADM's or clean-fid's "
                                "('' = read the dataset)")
  metric_seed: int = option(2020, "seed of IS's shuffle, KID's subsets and precision/recall's reference subsample "
                            "(torch-fidelity's 2020)", low=0)
  guidance_scale: float = option(1.0, "class-conditional models: the evaluation's classifier-free guidance w "
                                 '(samples are class-balanced)', low=0.0)
  guidance_interval: tuple[int, ...] = option((), "the evaluation's guidance interval (t_lo, t_hi); () = every "
                                              'step', low=0)
  guidance_scales: tuple[float, ...] = option((), '--mode=eval: score each of these guidance scales w instead of '
                                              'eval.guidance_scale (one JSON per w)', low=0.0)
  phema_sigma_rels: tuple[float, ...] = option((), '--mode=eval: evaluate the post-hoc EMA reconstructed at each '
                                               "of these sigma_rel from the run's snapshots instead of the EMA "
                                               '(needs training.phema_sigma_rels)', low=0.0,
                                               high=phema.MAX_SIGMA_REL, low_open=True, high_open=True)


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
  """Where the run's scalars and grids go besides TensorBoard."""
  wandb: bool = option(False, "also log scalars, sample grids and the config to Weights & Biases (pip install "
                       "'ddpm_jax[wandb]')")
  wandb_project: str = option('ddpm_jax', 'wandb project')
  wandb_entity: str = option('', "wandb user or team ('' = your default entity)")
  wandb_run_name: str = option('', "run name shown in wandb ('' = the workdir's name)")
  wandb_mode: str = option('', "online | offline | disabled ('' = wandb's choice: $WANDB_MODE, else online)",
                           choices=WANDB_MODES)


@dataclasses.dataclass(frozen=True)
class Config:
  """A whole run's config: the seed and one typed section per concern."""
  seed: int = option(0, 'base PRNG seed: params, timesteps, noise, data order and flips derive from it', low=0)
  data: DataConfig = option(DataConfig(), 'the dataset')
  model: UNetConfig = option(UNetConfig(), 'the U-Net')
  diffusion: DiffusionConfig = option(DiffusionConfig(), 'the forward process and the loss')
  training: TrainingConfig = option(TrainingConfig(), 'the optimizer, the EMA and the periods')
  sampling: SamplingConfig = option(SamplingConfig(), 'grids and --mode=sample', free=True)
  eval: EvalConfig = option(EvalConfig(), 'the metrics', free=True)
  logging: LoggingConfig = option(LoggingConfig(), 'W&B', free=True)
