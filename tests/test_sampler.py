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
    ({'diffusion.loss_weighting': 'snr'}, "diffusion.loss_weighting='snr' is not one of {'none', 'min_snr', 'edm'}"),
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


# --- classifier-free guidance (sampling.guidance_scale, guidance_interval, labels) ---

SCHEDULE = schedules.make_schedule('linear', 100)
NULL = 2  # two classes and the null class


def counting_model(calls: list):
  """Returns a stand-in class-conditional model (output nonlinear in x_t, its class and t) that logs its batch sizes.

  The calls are logged as traced: the number of model calls one reverse step makes, whatever the step count.
  """
  def model(variables, x_t, t, labels, train):
    del train
    calls.append(x_t.shape[0])
    offset = variables['params'][labels][:, None, None, None]
    return jnp.tanh(0.8 * x_t + offset * (1.0 + t[:, None, None, None] / 100.0))
  return model


PARAMS = jnp.asarray([0.3, -0.4, 0.05])  # each class's offset, the null class's last
LABELS = np.array([0, 1, 1, 0, 2])


def reference_sample(settings, prediction, denoise, rng, batch=5):
  return np.asarray(diffusion.sample(denoise, SCHEDULE, rng, (batch, 4, 4, 3), sampler=settings.sampler,
                                     num_steps=settings.num_steps, eta=settings.eta, clip_denoised=True,
                                     prediction=prediction, timestep_spacing=settings.timestep_spacing))


@pytest.mark.parametrize('name, prediction', [('ddpm', 'eps'), ('ddim', 'x0'), ('dpmpp_2m', 'v'), ('heun', 'eps')])
def test_guided_sampling_combines_conditional_and_null_outputs_in_one_doubled_call_per_step(name, prediction):
  settings = sampler.SamplerSettings(sampler=name, num_steps=100 if name == 'ddpm' else 6, eta=0.5,
                                     timestep_spacing='leading' if name == 'ddim' else 'logsnr')
  calls = []
  guided = sampler.make_sampler(counting_model(calls), SCHEDULE, settings, prediction=prediction, image_size=4,
                                guidance=sampler.Guidance(3.0), null_label=NULL)
  rng = jax.random.PRNGKey(4)
  images = np.asarray(guided.sample(PARAMS, rng, 5, LABELS))
  assert calls == [10]  # one call a step (heun: a stage), on the batch and its null-class copy
  model = counting_model([])
  output = lambda x_t, t, labels: model({'params': PARAMS}, x_t, t, labels, False)
  null = np.full_like(LABELS, NULL)
  denoise = lambda x_t, t: output(x_t, t, null) + 3.0 * (output(x_t, t, LABELS) - output(x_t, t, null))
  np.testing.assert_allclose(images, reference_sample(settings, prediction, denoise, rng), atol=2e-5)


def test_guidance_scale_one_is_the_plain_conditional_sampler_and_zero_the_null_class_bit_for_bit():
  settings = sampler.SamplerSettings(sampler='ddim', num_steps=6)
  rng, model = jax.random.PRNGKey(5), counting_model([])
  output = lambda labels: lambda x_t, t: model({'params': PARAMS}, x_t, t, labels, False)
  for scale, labels in ((1.0, LABELS), (0.0, np.full_like(LABELS, NULL))):
    calls = []
    built = sampler.make_sampler(counting_model(calls), SCHEDULE, settings, prediction='eps', image_size=4,
                                 guidance=sampler.Guidance(scale), null_label=NULL)
    images = np.asarray(built.sample(PARAMS, rng, 5, LABELS))
    np.testing.assert_array_equal(images, reference_sample(settings, 'eps', output(labels), rng))
    assert calls == [5]  # one plain pass


def test_a_guidance_interval_guides_only_its_timesteps():
  settings = sampler.SamplerSettings(sampler='ddim', num_steps=10)  # t = 90, 80, ..., 0
  calls = []
  built = sampler.make_sampler(counting_model(calls), SCHEDULE, settings, prediction='eps', image_size=4,
                               guidance=sampler.Guidance(2.0, (30, 60)), null_label=NULL)
  rng, model = jax.random.PRNGKey(6), counting_model([])
  images = np.asarray(built.sample(PARAMS, rng, 5, LABELS))
  assert sorted(calls) == [5, 10]  # lax.cond's two branches: plain outside the interval, doubled inside
  output = lambda x_t, t, labels: model({'params': PARAMS}, x_t, t, labels, False)
  null = np.full_like(LABELS, NULL)

  def denoise(x_t, t, lo=30, hi=60):
    conditional, unconditional = output(x_t, t, LABELS), output(x_t, t, null)
    inside = ((lo <= t) & (t <= hi))[:, None, None, None]
    return jnp.where(inside, unconditional + 2.0 * (conditional - unconditional), conditional)
  np.testing.assert_allclose(images, reference_sample(settings, 'eps', denoise, rng), atol=2e-5)
  everywhere = reference_sample(settings, 'eps', lambda x_t, t: denoise(x_t, t, 0, 99), rng)
  assert np.abs(images - everywhere).max() > 1e-3  # the steps outside the interval matter
  assert built.name == 'ddim10_cfg2_t30-60'


# A two-class Gaussian: x0 ~ N(mu_c, S^2 I) for c = 0, 1 with equal priors. At x_t = a x0 + s eps the
# class-conditional eps is s (x_t - a mu_c) / (a^2 S^2 + s^2), the unconditional one the same averaged over the
# classes' posterior responsibilities at x_t: the exact predictors, written out here in float32 (the model) and
# float64 (the reference).
S = 0.3
MU = np.stack([np.linspace(-0.6, 0.3, 12), np.linspace(0.5, -0.2, 12)]).reshape(2, 2, 2, 3)


def exact_eps(x_t, a, s, labels, xp):
  """Returns the exact eps of the two-class Gaussian at x_t: each row's class, the mixture for the null class."""
  v = a ** 2 * S ** 2 + s ** 2
  per_class = [s * (x_t - a * mu) / v for mu in MU]  # [B, 2, 2, 3] each
  logits = xp.stack([-xp.sum((x_t - a * mu) ** 2 / (2 * v), axis=(1, 2, 3)) for mu in MU], axis=1)
  weights = xp.exp(logits - logits.max(axis=1, keepdims=True))
  weights = weights / weights.sum(axis=1, keepdims=True)
  mixture = sum(weights[:, c, None, None, None] * per_class[c] for c in range(2))
  chosen = xp.where((labels == 0)[:, None, None, None], per_class[0], per_class[1])
  return xp.where((labels == NULL)[:, None, None, None], mixture, chosen)


def exact_model(prediction):
  """Returns the exact two-class predictor as a model of the given prediction type (x0 = (x_t - s eps) / a)."""
  def model(variables, x_t, t, labels, train):
    del variables, train
    a = SCHEDULE.sqrt_alphas_cumprod[t][:, None, None, None]
    s = SCHEDULE.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
    eps = exact_eps(x_t, a, s, labels, jnp)
    return {'eps': eps, 'x0': (x_t - s * eps) / a, 'v': a * eps - s * (x_t - s * eps) / a}[prediction]
  return model


@pytest.mark.parametrize('prediction, interval', [('eps', ()), ('x0', ()), ('v', (20, 60))])
def test_guided_ddim_on_a_two_class_gaussian_follows_the_float64_guided_chain(prediction, interval, w=3.0):
  settings = sampler.SamplerSettings(sampler='ddim', num_steps=10, eta=0.0, clip_denoised=False)
  built = sampler.make_sampler(exact_model(prediction), SCHEDULE, settings, prediction=prediction, image_size=2,
                               guidance=sampler.Guidance(w, interval), null_label=NULL)
  rng, labels = jax.random.PRNGKey(7), np.arange(32) % 2
  images = np.asarray(built.sample(None, rng, 32, labels))
  # The reference: DDIM (eta = 0) of the guided eps in float64, from diffusion.sample's starting noise.
  x = np.asarray(jax.random.normal(jax.random.split(rng)[0], (32, 2, 2, 3)), np.float64)
  alphas_cumprod = np.append(np.asarray(SCHEDULE.alphas_cumprod, np.float64), 1.0)  # [-1]: the clean image
  for t in range(90, -1, -10):
    a, s = np.sqrt(alphas_cumprod[t]), np.sqrt(1.0 - alphas_cumprod[t])
    conditional, unconditional = exact_eps(x, a, s, labels, np), exact_eps(x, a, s, np.full(32, NULL), np)
    guide = not interval or interval[0] <= t <= interval[1]
    eps = unconditional + w * (conditional - unconditional) if guide else conditional
    x0 = (x - s * eps) / a
    previous = alphas_cumprod[max(t - 10, -1)]
    x = np.sqrt(previous) * x0 + np.sqrt(1.0 - previous) * eps
  np.testing.assert_allclose(images, x, atol=2e-4)
  # Guidance pushes each class away from the other: the class means move past mu_c, away from mu_{1-c}.
  for c in range(2):
    along = np.sum((images[labels == c].mean(axis=0) - MU[c]) * (MU[c] - MU[1 - c]))
    assert along > 0.2  # w = 1: |along| < 0.03


def test_guided_ddim_of_gaussian_predictors_moves_the_mean_to_the_guided_gaussians():
  # With Gaussian predictors of equal variance, N(mu_c, S^2) for the class and N(mu_u, S^2) for the null class,
  # the guided eps is exactly that of N(mu_u + w (mu_c - mu_u), S^2); DDIM (eta = 0) of an exact Gaussian eps is
  # affine, x_0 = (1 - K a_first) mu_w + K x_T, K the product over steps of (a' a S^2 + s' s) / (a^2 S^2 + s^2).
  mu_c, mu_u, w = MU[1], MU[0], 2.5

  def model(variables, x_t, t, labels, train):
    del variables, train
    a = SCHEDULE.sqrt_alphas_cumprod[t][:, None, None, None]
    s = SCHEDULE.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
    mu = jnp.where((labels == NULL)[:, None, None, None], mu_u, mu_c)
    return s * (x_t - a * mu) / (a ** 2 * S ** 2 + s ** 2)

  settings = sampler.SamplerSettings(sampler='ddim', num_steps=10, eta=0.0, clip_denoised=False)
  built = sampler.make_sampler(model, SCHEDULE, settings, prediction='eps', image_size=2,
                               guidance=sampler.Guidance(w), null_label=NULL)
  rng = jax.random.PRNGKey(8)
  images = np.asarray(built.sample(None, rng, 16, np.ones(16, np.int32)))
  x_T = np.asarray(jax.random.normal(jax.random.split(rng)[0], (16, 2, 2, 3)), np.float64)
  alphas_cumprod = np.append(np.asarray(SCHEDULE.alphas_cumprod, np.float64), 1.0)
  signal, noise = np.sqrt(alphas_cumprod), np.sqrt(1.0 - alphas_cumprod)
  steps = [(t, max(t - 10, -1)) for t in range(90, -1, -10)]  # the last to alpha_bar = 1, the clean image
  gain = np.prod([(signal[prev] * signal[t] * S ** 2 + noise[prev] * noise[t]) / (signal[t] ** 2 * S ** 2 + noise[t] ** 2)
                  for t, prev in steps])
  mu_w = mu_u + w * (mu_c - mu_u)
  np.testing.assert_allclose(images, (1.0 - gain * signal[90]) * mu_w + gain * x_T, atol=1e-5)


def test_guided_sampler_names_batches_and_labels():
  calls = []
  built = sampler.make_sampler(counting_model(calls), SCHEDULE, sampler.SamplerSettings(sampler='ddim', num_steps=3),
                               prediction='eps', image_size=4, guidance=sampler.Guidance(3.0), null_label=NULL)
  assert built.name == 'ddim3_cfg3'
  labels = np.array([0, 1, 1, 0, 1, 0, 0])
  key_of = lambda i: jax.random.PRNGKey(i)
  batches = list(built.batches(PARAMS, key_of, 7, 3, labels))
  assert [len(b) for b in batches] == [3, 3, 1]
  np.testing.assert_array_equal(batches[1], built.sample(PARAMS, key_of(1), 3, labels[3:6]))
  np.testing.assert_array_equal(batches[2], built.sample(PARAMS, key_of(2), 3, [0, 0, 0])[:1])
  with pytest.raises(ValueError, match=r'labels of shape \(6,\) for 7 samples'):
    next(built.batches(PARAMS, key_of, 7, 3, labels[:6]))
  np.testing.assert_array_equal(sampler.balanced_labels(7, 3), [0, 1, 2, 0, 1, 2, 0])


def test_labels_resolve_from_ids_and_names_and_bad_ones_are_one_line_errors():
  names = ('apple_pie', 'bibimbap', 'churros')
  np.testing.assert_array_equal(sampler.resolve_labels(('churros', 0), names, 3, 5), [2, 0, 2, 0, 2])
  np.testing.assert_array_equal(sampler.resolve_labels((), names, 3, 4), [0, 1, 2, 0])
  for labels, message in [
      (('pizza',), "sampling.labels: 'pizza' is not a class of the dataset; valid names: apple_pie, bibimbap, churros"),
      ((3,), 'sampling.labels: class 3 is out of range for model.num_classes=3; valid: 0..2'),
      ((True,), 'sampling.labels: True is neither a class id nor a class name')]:
    with pytest.raises(ValueError) as error:
      sampler.resolve_labels(labels, names, 3, 4)
    assert str(error.value) == message
  with pytest.raises(ValueError, match=r"'pizza' is not a class of the dataset; valid names: none \(the dataset"):
    sampler.resolve_labels(('pizza',), (), 3, 4)
