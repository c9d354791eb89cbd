"""The sampler builder: sections (sampling.*, eval.*) → SamplerSettings → a jitted sampler; and their validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import runs
from ddpm_jax.config import checks
from ddpm_jax.core import diffusion, sampler, schedules


def shrink(variables, x_t, t, train):
  """Returns a stand-in model's output: x_t scaled by the one param."""
  del t, train
  return variables['params'] * x_t


def test_sampling_and_eval_sections_each_bring_their_own_timestep_spacing():
  config = runs.tiny_config({'sampling.timestep_spacing': 'linspace', 'eval.sampling.timestep_spacing': 'trailing'})
  assert sampler.SamplerSettings.from_section(config.sampling).timestep_spacing == 'linspace'
  settings = sampler.SamplerSettings.from_section(config.eval.sampling)
  assert (settings.sampler, settings.timestep_spacing) == ('dpmpp_2m', 'trailing')


def test_the_built_sampler_runs_the_spacing_it_was_given(spacing='trailing'):
  schedule = schedules.make_schedule('linear', 100)
  section = sampler.SamplerSettings(sampler='ddim', num_steps=7, variance='beta_tilde', eta=0.0, clip_denoised=False,
                                    timestep_spacing=spacing)
  built = sampler.make_sampler(shrink, schedule, section, prediction='x0', image_size=4)
  rng = jax.random.PRNGKey(3)
  expected = diffusion.sample(lambda x_t, t: 0.5 * x_t, schedule, rng, (2, 4, 4, 3), sampler='ddim', num_steps=7,
                              clip_denoised=False, prediction='x0', timestep_spacing=spacing)
  np.testing.assert_allclose(np.asarray(built.sample(jnp.float32(0.5), rng, 2)), np.asarray(expected), atol=1e-6)


def test_dpmpp_2m_sampler_builds_and_names_itself():
  section = sampler.SamplerSettings(sampler='dpmpp_2m', num_steps=5)
  built = sampler.make_sampler(shrink, schedules.make_schedule('linear', 100), section, prediction='v', image_size=4)
  images = np.asarray(built.sample(jnp.float32(0.5), jax.random.PRNGKey(0), 3))
  assert built.name == 'dpmpp_2m5' and images.shape == (3, 4, 4, 3)
  assert np.all(np.abs(images) <= 1.0)  # clip_denoised clips each x0; the last step returns one


@pytest.mark.parametrize('overrides,message', [
    ({'sampling.timestep_spacing': 'even'},
     "sampling.timestep_spacing='even' is not one of {'leading', 'linspace', 'trailing', 'logsnr', 'karras'}"),
    ({'eval.every_steps': 2, 'eval.sampling.timestep_spacing': 'uniform'},
     "eval.sampling.timestep_spacing='uniform' is not one of {'leading', 'linspace', 'trailing', 'logsnr', 'karras'}"),
    ({'eval.timestep_spacing': 'trailing'}, 'eval.timestep_spacing was renamed eval.sampling.timestep_spacing'),
    ({'sampling.sampler': 'dpmpp_2m', 'sampling.num_steps': 100},
     "sampling.num_steps=100 with sampling.sampler='dpmpp_2m', sampling.timestep_spacing='leading' and "
     'diffusion.num_timesteps=100: num_steps=100 is out of range for dpmpp_2m; valid: 1..99'),
    ({'eval.sampling.sampler': 'ddpm', 'eval.sampling.num_steps': 20},
     "eval.sampling.num_steps=20 with eval.sampling.sampler='ddpm', eval.sampling.timestep_spacing='logsnr' and "
     'diffusion.num_timesteps=100: the ddpm sampler runs all 100 steps'),
    ({'diffusion.loss_weighting': 'snr'}, "diffusion.loss_weighting='snr' is not one of {'none', 'min_snr'}"),
    ({'diffusion.min_snr_gamma': 0.0}, 'diffusion.min_snr_gamma=0.0 must be > 0'),
])
def test_bad_sampler_or_weighting_settings_are_one_line_errors(overrides, message):
  with pytest.raises(ValueError) as error:
    checks.check_diffusion(runs.tiny_config(overrides))
  assert str(error.value).startswith(message) and '\n' not in str(error.value)


def test_new_sampler_settings_validate():
  checks.check_diffusion(runs.tiny_config({'sampling.sampler': 'dpmpp_2m', 'sampling.num_steps': 20,
                                           'eval.every_steps': 2, 'eval.sampling.timestep_spacing': 'trailing',
                                           'diffusion.loss_weighting': 'min_snr'}))
