"""One sampler builder: sampler settings (a config section) -> the jitted sampler and its batch loop.

Training's grids, --mode=sample and every evaluation build their sampler here, from
`config.sampling` or the evaluation's settings, so the mapping from config keys to the
reverse process exists once. Pure: imports only jax and numpy.

Class-conditional models sample the classes they are given (`labels`), with classifier-free
guidance (Ho & Salimans 2022) at scale w: every step runs the model once on the doubled batch
(each x_t with its class and with the null class, inside the reverse process's one `lax.scan`)
and combines the two outputs linearly, out = out_u + w (out_c - out_u). Guiding the output is
guiding eps, x0 and the score exactly, for eps, x0 and v models alike: at a fixed
x_t = alpha x0 + sigma eps, each prediction's eps and x0 are affine in the output with the same
coefficients for both passes (eps model: x0 = (x_t - sigma out) / alpha; x0 model:
eps = (x_t - alpha out) / sigma; v model: x0 = alpha x_t - sigma out, eps = sigma x_t + alpha out),
and an affine f commutes with the combination, f(u + w (c - u)) = f(u) + w (f(c) - f(u)), since
its weights 1 - w and w sum to 1. clip_denoised clips the guided x0. w = 1 is one plain
conditional pass, w = 0 one pass with the null class; a guidance interval (t_lo, t_hi)
(Kynkaanniemi et al. 2024) guides only the steps at t_lo <= t <= t_hi and makes one plain
conditional pass at the others (a `lax.cond`, so the interval saves those steps' second half).
"""
import dataclasses
import math
from typing import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.core import diffusion, sharding, timesteps
from ddpm_jax.core.options import option
from ddpm_jax.core.schedules import Schedule


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """How to run the reverse process: `config.sampling`'s (grids, --mode=sample) or `config.eval.sampling`'s."""
  sampler: str = option('ddpm', 'ddpm | ddim | dpmpp_2m (DPM-Solver++(2M)) | heun (Karras et al. 2022, 2 model calls '
                        'a step but the last)', choices=timesteps.SAMPLERS)
  num_steps: int = option(1000, 'reverse steps (ddpm takes all T; ddim and heun up to T; dpmpp_2m up to T-1, or T on '
                          'logsnr and karras)', low=1)
  variance: str = option('beta_tilde', "ddpm's variance: beta_tilde (posterior) | beta", choices=diffusion.VARIANCES)
  eta: float = option(0.0, "ddim's stochasticity (0 = deterministic, 1 = DDPM-like)", low=0.0, high=1.0)
  clip_denoised: bool = option(True, 'clip the predicted x0 to [-1, 1] at every step')
  timestep_spacing: str = option('leading', "ddim's and heun's timesteps: leading (DDIM paper, diffusers) | linspace "
                                 "(T-1..0) | trailing; or ddim's, dpmpp_2m's and heun's noise levels: logsnr (uniform "
                                 'in log-SNR) | karras (rho = 7)', choices=timesteps.SPACINGS)

  @classmethod
  def from_section(cls, section) -> 'SamplerSettings':
    """Returns the settings a section holds: itself, or the fields of a section with more (config.sampling)."""
    if type(section) is cls:  # pylint: disable=unidiomatic-typecheck
      return section
    return cls(**{field.name: getattr(section, field.name) for field in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class Guidance:
  """Classifier-free guidance: out_u + scale (out_c - out_u) at timesteps t_lo <= t <= t_hi of interval (() = all)."""
  scale: float = 1.0  # w: 1 = plain conditional, 0 = unconditional
  interval: tuple = ()  # () or (t_lo, t_hi), inclusive, in the schedule's timesteps

  def check(self, num_timesteps: int, prefix: str = 'sampling') -> None:
    """Returns None; raises a one-line ValueError naming `prefix`.guidance_* for a bad scale or interval."""
    if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale >= 0):
      raise ValueError(f'{prefix}.guidance_scale={self.scale!r} must be a finite number >= 0')
    interval = tuple(self.interval)
    if not interval:
      return
    if len(interval) != 2 or not all(isinstance(t, int) and not isinstance(t, bool) for t in interval):
      raise ValueError(f'{prefix}.guidance_interval={interval!r} must be () or two timesteps (t_lo, t_hi)')
    t_lo, t_hi = interval
    if not 0 <= t_lo <= t_hi < num_timesteps:
      raise ValueError(f'{prefix}.guidance_interval={interval!r} must have 0 <= t_lo <= t_hi < '
                       f'diffusion.num_timesteps={num_timesteps}')

  @property
  def suffix(self) -> str:
    """Returns '' without guidance (w = 1), else e.g. '_cfg3' or '_cfg3_t100-600' (for names of files)."""
    if self.scale == 1.0:
      return ''
    return f'_cfg{self.scale:g}' + (f'_t{self.interval[0]}-{self.interval[1]}' if self.interval else '')


def guided_output(model_fn: Callable, x_t, t, labels, scale: float, null_label: int):
  """Returns float32 out_u + scale (out_c - out_u) from one call of model_fn(x, t, labels) on the doubled batch."""
  batch = x_t.shape[0]
  # Rows interleaved (x_t[i] with its class at 2i, with the null class at 2i + 1): a device's rows of x_t become
  # its rows of the doubled batch, so splitting the batch across devices moves no data between them.
  doubled_labels = jnp.stack([labels, jnp.full_like(labels, null_label)], axis=1).reshape(2 * batch)
  output = model_fn(jnp.repeat(x_t, 2, axis=0), jnp.repeat(t, 2, axis=0), doubled_labels).astype(jnp.float32)
  output = output.reshape((batch, 2) + output.shape[1:])
  conditional, unconditional = output[:, 0], output[:, 1]
  return unconditional + scale * (conditional - unconditional)


def guided_denoiser(model_fn: Callable, guidance: Guidance, null_label: int) -> Callable:
  """Returns `(x_t, t, labels) -> output`: model_fn(x, t, labels) guided as `guidance` says (labels int32 [B])."""
  if guidance.scale == 1.0:
    return model_fn
  if guidance.scale == 0.0 and not guidance.interval:
    return lambda x_t, t, labels: model_fn(x_t, t, jnp.full_like(labels, null_label))
  guided = lambda x_t, t, labels: guided_output(model_fn, x_t, t, labels, guidance.scale, null_label)
  if not guidance.interval:
    return guided
  t_lo, t_hi = guidance.interval

  def denoise(x_t, t, labels):
    plain = lambda x_t, t, labels: model_fn(x_t, t, labels).astype(jnp.float32)
    # Every row of a reverse step has the same t.
    return jax.lax.cond((t_lo <= t[0]) & (t[0] <= t_hi), guided, plain, x_t, t, labels)
  return denoise


def make_sample_fn(apply_fn: Callable, schedule: Schedule, settings: SamplerSettings, *, prediction: str,
                   mesh=None, guidance: Guidance = Guidance(), null_label: int = 0) -> Callable:
  """Returns `(params, rng, shape, labels=None) -> images in [-1, 1]` sampled in eval mode (not jitted).

  labels (int32 [B]) are the classes to draw, guided by `guidance` with `null_label` as the
  null class; labels=None calls the model without labels, as before class conditioning.
  With a mesh, the batch is split across its devices at every reverse step (when the
  batch divides by the device count) and the images come back replicated, so every
  process can read them.
  """
  def split_batch(x):
    if mesh is None or x.shape[0] % mesh.size:
      return x
    return jax.lax.with_sharding_constraint(x, sharding.batch_sharded(mesh))

  def denoise(params, labels, x_t, t):
    if labels is None:
      return apply_fn({'params': params}, split_batch(x_t), t, train=False)
    model_fn = lambda x, tt, y: apply_fn({'params': params}, split_batch(x), tt, y, train=False)
    return guided_denoiser(model_fn, guidance, null_label)(x_t, t, labels)

  def sample(params, rng, shape, labels=None):
    images = diffusion.sample(jax.tree_util.Partial(denoise, params, labels), schedule, rng, shape,
                              sampler=settings.sampler, num_steps=settings.num_steps, eta=settings.eta,
                              variance=settings.variance, clip_denoised=settings.clip_denoised,
                              prediction=prediction, timestep_spacing=settings.timestep_spacing)
    return images if mesh is None else jax.lax.with_sharding_constraint(images, sharding.replicated(mesh))
  return sample


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A jitted sampler of square RGB images and the loop that draws many of them batch by batch."""
  settings: SamplerSettings
  num_timesteps: int
  image_size: int
  sample_fn: Callable  # jitted (params, rng, shape, labels=None) -> images
  guidance: Guidance = Guidance()

  @property
  def name(self) -> str:
    """Returns the sampler, its step count, any grid but the default and any guidance, e.g. 'ddim50', 'ddpm1000_cfg3'.

    Files named by it (--mode=sample's) then differ whenever the samples would.
    """
    s = self.settings
    if s.sampler == 'ddpm':
      return f'ddpm{self.num_timesteps}{self.guidance.suffix}'
    spacing = '' if s.timestep_spacing == 'leading' else f'_{s.timestep_spacing}'
    return f'{s.sampler}{s.num_steps}{spacing}{self.guidance.suffix}'

  def sample(self, params, rng, batch_size: int, labels=None) -> jax.Array:
    """Returns one batch of batch_size images in [-1, 1], NHWC, of the classes labels (int [batch_size]) if given."""
    shape = (batch_size, self.image_size, self.image_size, 3)
    if labels is None:
      return self.sample_fn(params, rng, shape)
    labels = np.asarray(labels)
    if labels.shape != (batch_size,):
      raise ValueError(f'labels of shape {labels.shape} for a batch of {batch_size}; give one label per image')
    return self.sample_fn(params, rng, shape, labels.astype(np.int32))

  def batches(self, params, key_of_batch: Callable[[int], jax.Array], num_samples: int,
              batch_size: int, labels=None) -> Iterator[jax.Array]:
    """Yields batches of images in [-1, 1], num_samples in all; batch i is drawn from key_of_batch(i).

    labels (int [num_samples]), if given, are the images' classes, cut per batch. Every batch is
    sampled at one compiled shape; the last is cut to what is left.
    """
    if labels is not None:
      labels = np.asarray(labels)
      if labels.shape != (num_samples,):
        raise ValueError(f'labels of shape {labels.shape} for {num_samples} samples; give one label per sample')
    for index, start in enumerate(range(0, num_samples, batch_size)):
      # The last batch's labels are padded (with its own) to the compiled shape; those rows are cut.
      batch_labels = None if labels is None else np.resize(labels[start:start + batch_size], batch_size)
      yield self.sample(params, key_of_batch(index), batch_size, batch_labels)[:min(batch_size, num_samples - start)]


def make_sampler(apply_fn: Callable, schedule: Schedule, section: Mapping, *, prediction: str, image_size: int,
                 mesh=None, guidance: Guidance = Guidance(), null_label: int = 0) -> Sampler:
  """Returns the Sampler that a config section (SamplerSettings' keys: sampler, num_steps, ...) describes.

  guidance applies to the samples drawn with labels; null_label is the model's null class (model.num_classes).
  """
  settings = SamplerSettings.from_section(section)
  guidance.check(schedule.num_timesteps)
  sample_fn = make_sample_fn(apply_fn, schedule, settings, prediction=prediction, mesh=mesh, guidance=guidance,
                             null_label=null_label)
  return Sampler(settings, schedule.num_timesteps, image_size, jax.jit(sample_fn, static_argnums=2), guidance)


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
  """Returns int32 [num_samples], sample i of class i mod num_classes (class-balanced, in order)."""
  if num_classes < 1:
    raise ValueError(f'class-balanced labels need model.num_classes >= 1, got {num_classes}')
  return (np.arange(num_samples) % num_classes).astype(np.int32)


def resolve_labels(labels, class_names, num_classes: int, num_samples: int, *,
                   key: str = 'sampling.labels') -> np.ndarray:
  """Returns int32 [num_samples]: labels (class ids or names) cycled over the samples, balanced when labels=().

  Raises a one-line ValueError naming `key` for an id outside [0, num_classes) or a name not in class_names.
  """
  if not len(labels):
    return balanced_labels(num_samples, num_classes)
  ids = []
  for label in labels:
    if isinstance(label, str):
      if label not in class_names:
        valid = (', '.join(class_names) if class_names
                 else f'none (the dataset names no classes; use ids 0..{num_classes - 1})')
        raise ValueError(f'{key}: {label!r} is not a class of the dataset; valid names: {valid}')
      label = list(class_names).index(label)
    elif isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
      raise ValueError(f'{key}: {label!r} is neither a class id nor a class name')
    if not 0 <= label < num_classes:
      raise ValueError(f'{key}: class {label} is out of range for model.num_classes={num_classes}; valid: 0..'
                       f'{num_classes - 1}')
    ids.append(int(label))
  return np.resize(np.asarray(ids, np.int32), num_samples)
