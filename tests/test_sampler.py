"""The sampler builder: sections (sampling.*, eval.*) → SamplerSettings → a jitted sampler; and their validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import runs
from ddpm_jax import evaluation, validation
from ddpm_jax.core import diffusion, sampler, schedules


def shrink(variables, x_t, t, train):
  """Returns a stand-in model's output: x_t scaled by the one param."""
  del t, train
  return variables['params'] * x_t


def test_sampling_and_eval_sections_each_bring_their_own_timestep_spacing():
  config = runs.tiny_config({'sampling.timestep_spacing': 'linspace', 'eval.timestep_spacing': 'trailing'})
  assert sampler.SamplerSettings.from_section(config.sampling).timestep_spacing == 'linspace'
  settings = sampler.SamplerSettings.from_section(evaluation.sampler_section(config))
  assert (settings.sampler, settings.timestep_spacing) == (config.eval.sampler, 'trailing')


def test_the_built_sampler_runs_the_spacing_it_was_given(spacing='trailing'):
  schedule = schedules.make_schedule('linear', 100)
  section = {'sampler': 'ddim', 'num_steps': 7, 'variance': 'beta_tilde', 'eta': 0.0, 'clip_denoised': False,
             'timestep_spacing': spacing}
  built = sampler.make_sampler(shrink, schedule, section, prediction='x0', image_size=4)
  rng = jax.random.PRNGKey(3)
  expected = diffusion.sample(lambda x_t, t: 0.5 * x_t, schedule, rng, (2, 4, 4, 3), sampler='ddim', num_steps=7,
                              clip_denoised=False, prediction='x0', timestep_spacing=spacing)
  np.testing.assert_allclose(np.asarray(built.sample(jnp.float32(0.5), rng, 2)), np.asarray(expected), atol=1e-6)


def test_dpmpp_2m_sampler_builds_and_names_itself():
  section = {'sampler': 'dpmpp_2m', 'num_steps': 5, 'variance': 'beta_tilde', 'eta': 0.0, 'clip_denoised': True,
             'timestep_spacing': 'leading'}
  built = sampler.make_sampler(shrink, schedules.make_schedule('linear', 100), section, prediction='v', image_size=4)
  images = np.asarray(built.sample(jnp.float32(0.5), jax.random.PRNGKey(0), 3))
  assert built.name == 'dpmpp_2m5' and images.shape == (3, 4, 4, 3)
  assert np.all(np.abs(images) <= 1.0)  # clip_denoised clips each x0; the last step returns one


@pytest.mark.parametrize('overrides,message', [
    ({'sampling.timestep_spacing': 'even'},
     "unknown sampling.timestep_spacing 'even'; valid: leading, linspace, trailing"),
    ({'eval.every_steps': 2, 'eval.timestep_spacing': 'uniform'},
     "unknown eval.timestep_spacing 'uniform'; valid: leading, linspace, trailing"),
    ({'sampling.sampler': 'dpmpp_2m', 'sampling.num_steps': 100},
     'sampling.num_steps: num_steps=100 is out of range for dpmpp_2m; valid: 1..99'),
    ({'diffusion.loss_weighting': 'snr'}, "unknown diffusion.loss_weighting 'snr'; valid: none, min_snr"),
    ({'diffusion.min_snr_gamma': 0.0}, 'diffusion.min_snr_gamma=0.0 must be a finite number > 0'),
])
def test_bad_sampler_or_weighting_settings_are_one_line_errors(overrides, message):
  with pytest.raises(ValueError) as error:
    validation.check_diffusion(runs.tiny_config(overrides))
  assert str(error.value).startswith(message) and '\n' not in str(error.value)


def test_new_sampler_settings_validate():
  validation.check_diffusion(runs.tiny_config({'sampling.sampler': 'dpmpp_2m', 'sampling.num_steps': 20,
                                               'eval.every_steps': 2, 'eval.timestep_spacing': 'trailing',
                                               'diffusion.loss_weighting': 'min_snr'}))
