"""One sampler builder: sampler settings (a config section) -> the jitted sampler and its batch loop.

Training's grids, --mode=sample and every evaluation build their sampler here, from
`config.sampling` or the evaluation's settings, so the mapping from config keys to the
reverse process exists once. Pure: imports only jax and numpy.
"""
import dataclasses
from typing import Callable, Iterator, Mapping

import jax

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


def make_sample_fn(apply_fn: Callable, schedule: Schedule, settings: SamplerSettings, *, prediction: str,
                   mesh=None) -> Callable:
  """Returns `(params, rng, shape) -> images in [-1, 1]` that samples with the model in eval mode (not jitted).

  With a mesh, the batch is split across its devices at every reverse step (when the
  batch divides by the device count) and the images come back replicated, so every
  process can read them.
  """
  def split_batch(x):
    if mesh is None or x.shape[0] % mesh.size:
      return x
    return jax.lax.with_sharding_constraint(x, sharding.batch_sharded(mesh))

  def denoise(params, x_t, t):
    return apply_fn({'params': params}, split_batch(x_t), t, train=False)

  def sample(params, rng, shape):
    images = diffusion.sample(jax.tree_util.Partial(denoise, params), schedule, rng, shape,
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
  sample_fn: Callable  # jitted (params, rng, shape) -> images

  @property
  def name(self) -> str:
    """Returns the sampler, its step count and any grid but the default, e.g. 'ddim50', 'dpmpp_2m20_logsnr'.

    Files named by it (--mode=sample's) then differ whenever the samples would.
    """
    s = self.settings
    if s.sampler == 'ddpm':
      return f'ddpm{self.num_timesteps}'
    return f'{s.sampler}{s.num_steps}' + ('' if s.timestep_spacing == 'leading' else f'_{s.timestep_spacing}')

  def sample(self, params, rng, batch_size: int) -> jax.Array:
    """Returns one batch of batch_size images in [-1, 1], NHWC."""
    return self.sample_fn(params, rng, (batch_size, self.image_size, self.image_size, 3))

  def batches(self, params, key_of_batch: Callable[[int], jax.Array], num_samples: int,
              batch_size: int) -> Iterator[jax.Array]:
    """Yields batches of images in [-1, 1], num_samples in all; batch i is drawn from key_of_batch(i).

    Every batch is sampled at one compiled shape; the last is cut to what is left.
    """
    for index, start in enumerate(range(0, num_samples, batch_size)):
      yield self.sample(params, key_of_batch(index), batch_size)[:min(batch_size, num_samples - start)]


def make_sampler(apply_fn: Callable, schedule: Schedule, section: Mapping, *, prediction: str, image_size: int,
                 mesh=None) -> Sampler:
  """Returns the Sampler that a config section (SamplerSettings' keys: sampler, num_steps, ...) describes."""
  settings = SamplerSettings.from_section(section)
  sample_fn = make_sample_fn(apply_fn, schedule, settings, prediction=prediction, mesh=mesh)
  return Sampler(settings, schedule.num_timesteps, image_size, jax.jit(sample_fn, static_argnums=2))
