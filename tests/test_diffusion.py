"""The diffusion math against diffusers' PyTorch schedulers and against closed-form Gaussian data."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.core import diffusion, schedules

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')

DIFFUSERS_NAMES = {'linear': 'linear', 'cosine': 'squaredcos_cap_v2', 'sigmoid': 'sigmoid'}
DIFFUSERS_PREDICTIONS = {'eps': 'epsilon', 'x0': 'sample', 'v': 'v_prediction'}
SHAPE = (4, 8, 8, 3)


def arrays(seed, n=3, shape=SHAPE, scale=1.0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=shape).astype(np.float32) * scale for _ in range(n)]


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)), dtype=np.float64))


def nhwc(x):
  return np.transpose(x.numpy(), (0, 2, 3, 1))


def in_float64(ref):
  """Returns the diffusers scheduler with its coefficients recomputed in float64.

  diffusers keeps alpha_bar in float32 and forms 1 - alpha_bar there, which loses three
  digits near t = 0 (1 - 0.9999 in float32); we compute every coefficient in float64.
  Comparing the step formulas therefore needs the reference in float64 too.
  """
  ref.betas = ref.betas.double()
  ref.alphas = 1.0 - ref.betas
  ref.alphas_cumprod = torch.cumprod(ref.alphas, dim=0)
  return ref


@pytest.mark.parametrize('name', sorted(DIFFUSERS_NAMES))
def test_q_sample_matches_add_noise(name):
  ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name])
  x0, noise, _ = arrays(0)
  t = np.array([0, 17, 500, 999], np.int32)
  ours = diffusion.q_sample(schedules.make_schedule(name), x0, t, noise)
  theirs = ref.add_noise(nchw(x0), nchw(noise), torch.from_numpy(t).long())
  np.testing.assert_allclose(np.asarray(ours), nhwc(theirs), atol=1e-5)


@pytest.mark.parametrize('name', sorted(DIFFUSERS_NAMES))
@pytest.mark.parametrize('variance,ref_variance', [('beta_tilde', 'fixed_small'), ('beta', 'fixed_large')])
@pytest.mark.parametrize('prediction', ['eps', 'v'])
@pytest.mark.parametrize('t', [999, 500, 1, 0])
def test_ddpm_step_matches_diffusers(name, variance, ref_variance, prediction, t):
  ref = in_float64(diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name],
                                           variance_type=ref_variance, clip_sample=True,
                                           prediction_type=DIFFUSERS_PREDICTIONS[prediction]))
  schedule = schedules.make_schedule(name)
  x_t, model_output, _ = arrays(t)
  noise = torch.randn(nchw(x_t).shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
  # diffusers draws the same noise from a generator seeded the same way.
  theirs = ref.step(nchw(model_output), t, nchw(x_t), generator=torch.Generator().manual_seed(t)).prev_sample
  ours = diffusion.ddpm_step(schedule, model_output, jnp.full((4,), t), x_t, nhwc(noise),
                             variance=variance, clip_denoised=True, prediction=prediction)
  np.testing.assert_allclose(np.asarray(ours), nhwc(theirs), atol=2e-5)
  # The variance alone: zero-noise mean and the step's spread.
  mean = diffusion.ddpm_step(schedule, model_output, jnp.full((4,), t), x_t, np.zeros_like(x_t),
                             variance=variance, prediction=prediction)
  if t > 0:
    np.testing.assert_allclose(np.asarray(ours - mean), np.sqrt(float(ref._get_variance(t))) * nhwc(noise),
                               atol=1e-5)


@pytest.mark.parametrize('name', sorted(DIFFUSERS_NAMES))
@pytest.mark.parametrize('eta', [0.0, 0.5, 1.0])
@pytest.mark.parametrize('clip', [True, False])
@pytest.mark.parametrize('t_index', [0, 10, 49])
def test_ddim_step_matches_diffusers(name, eta, clip, t_index):
  # DDIMScheduler lacks the sigmoid schedule: hand it the betas of diffusers' own DDPMScheduler.
  betas = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name]).betas.numpy()
  ref = in_float64(diffusers.DDIMScheduler(num_train_timesteps=1000, trained_betas=betas, clip_sample=clip,
                                           set_alpha_to_one=True, timestep_spacing='leading'))
  ref.set_timesteps(50)
  t = int(ref.timesteps[t_index])
  t_prev = t - 1000 // 50
  x_t, model_output, noise = arrays(t_index + 100)
  theirs = ref.step(nchw(model_output), t, nchw(x_t), eta=eta, use_clipped_model_output=True,
                    variance_noise=nchw(noise)).prev_sample
  ours = diffusion.ddim_step(schedules.make_schedule(name), model_output, jnp.full((4,), t),
                             jnp.full((4,), t_prev), x_t, noise, eta=eta, clip_denoised=clip)
  np.testing.assert_allclose(np.asarray(ours), nhwc(theirs), atol=2e-5)


@pytest.mark.parametrize('prediction', diffusion.PREDICTIONS)
def test_predictions_round_trip(prediction):
  schedule = schedules.make_schedule('cosine', 100)
  x0, noise, _ = arrays(3)
  # Away from t = T-1, where the clipped cosine schedule leaves almost no signal to recover x0 from.
  t = jnp.array([0, 10, 50, 90])
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  target = diffusion.from_x0_eps(schedule, x0, noise, t, prediction)
  np.testing.assert_allclose(np.asarray(diffusion.to_x0(schedule, target, x_t, t, prediction)), x0, atol=2e-4)
  eps = diffusion.eps_from_x0(schedule, diffusion.to_x0(schedule, target, x_t, t, prediction), x_t, t)
  # eps from x0 divides by sqrt(1 - alpha_bar), tiny at t = 0: compare where it is well conditioned.
  np.testing.assert_allclose(np.asarray(eps)[1:], noise[1:], atol=2e-3)


def test_v_is_the_velocity():
  schedule = schedules.make_schedule('linear', 100)
  x0, noise, _ = arrays(4)
  t = jnp.array([5, 20, 60, 99])
  a = np.asarray(schedule.sqrt_alphas_cumprod)[np.asarray(t)][:, None, None, None]
  s = np.sqrt(1 - a ** 2)
  np.testing.assert_allclose(np.asarray(diffusion.v_from(schedule, x0, noise, t)), a * noise - s * x0, atol=1e-5)


@pytest.mark.parametrize('loss,expected', [
    ('mse', lambda d: d ** 2), ('mae', np.abs),
    ('huber', lambda d: np.where(np.abs(d) <= 1, 0.5 * d ** 2, np.abs(d) - 0.5))])
def test_elementwise_losses(loss, expected):
  d = np.linspace(-3, 3, 13).astype(np.float32)
  np.testing.assert_allclose(np.asarray(diffusion.elementwise_loss(d, np.zeros_like(d), loss)), expected(d), atol=1e-6)


def test_loss_fn_is_zero_for_the_exact_predictor_and_one_for_zero_output():
  schedule = schedules.make_schedule('linear', 1000)
  x0, noise, _ = arrays(5, shape=(64, 8, 8, 3))
  t = jnp.asarray(np.random.default_rng(0).integers(0, 1000, 64))
  oracle = lambda x_t, tt: jnp.asarray(noise)
  assert float(diffusion.loss_fn(oracle, schedule, x0, t, noise)) < 1e-10
  zero = lambda x_t, tt: jnp.zeros_like(x_t)
  np.testing.assert_allclose(float(diffusion.loss_fn(zero, schedule, x0, t, noise)), np.mean(noise ** 2), rtol=1e-5)


@pytest.mark.parametrize('kind,value', [('loss', 'l3'), ('prediction', 'score')])
def test_unknown_loss_or_prediction_raises(kind, value):
  schedule = schedules.make_schedule('linear', 10 * 100)
  x0, noise, _ = arrays(6)
  kwargs = {kind: value}
  with pytest.raises(ValueError, match=f"unknown {kind} '{value}'; valid: "):
    diffusion.loss_fn(lambda x, t: x, schedule, x0, jnp.zeros(4, jnp.int32), noise, **kwargs)


def test_sampling_timesteps():
  ts, t_prev = diffusion.sampling_timesteps(1000, 'ddim', 50)
  assert ts[0] == 999 and ts[-1] == 0 and t_prev[-1] == -1 and len(ts) == 50
  assert np.all(np.isin(np.diff(np.asarray(ts)), [-20, -21]))
  np.testing.assert_array_equal(np.asarray(t_prev[:-1]), np.asarray(ts[1:]))
  ts, _ = diffusion.sampling_timesteps(1000, 'ddpm')
  np.testing.assert_array_equal(np.asarray(ts), np.arange(999, -1, -1))
  with pytest.raises(ValueError, match='use sampler=ddim for fewer steps'):
    diffusion.sampling_timesteps(1000, 'ddpm', 50)
  with pytest.raises(ValueError, match="unknown sampler 'euler'; valid: ddpm, ddim"):
    diffusion.sampling_timesteps(1000, 'euler', 50)


# ---- The sampler against data with a known distribution -------------------------------------
# With x0 ~ N(mu, sigma^2) per pixel, x_t ~ N(a mu, a^2 sigma^2 + s^2) (a^2 = alpha_bar_t,
# s^2 = 1 - a^2) and the exact denoiser is E[eps | x_t] = s (x_t - a mu) / (a^2 sigma^2 + s^2).
# Driven by it, every reverse step is linear-Gaussian in x_t, so the mean and variance of
# what a sampler returns follow a scalar recursion we derive here from the closed form,
# independently of ddpm_jax's step code. DDPM's recursion lands on (mu, sigma); DDIM with
# 50 steps lands close to it, with its known discretisation shrinkage of the variance.

IMAGE = (4, 4, 3)
NUM_SAMPLES = 4000


def gaussian_data():
  rng = np.random.default_rng(42)
  return rng.uniform(-0.5, 0.5, IMAGE), rng.uniform(0.15, 0.5, IMAGE)


def exact_denoiser(schedule, mu, sigma, prediction='eps'):
  mu, sigma = jnp.float32(mu), jnp.float32(sigma)

  def denoise(x_t, t):
    a = schedule.sqrt_alphas_cumprod[t][:, None, None, None]
    s = schedule.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
    eps = s * (x_t - a * mu) / (a ** 2 * sigma ** 2 + s ** 2)
    return diffusion.from_x0_eps(schedule, (x_t - s * eps) / a, eps, t, prediction)
  return denoise


def closed_form_moments(alphas_cumprod, steps, mu, sigma, step_kind, variance='beta_tilde', eta=0.0):
  """Returns the exact mean and std of the sampler's output under the exact denoiser."""
  alphas_cumprod = np.asarray(alphas_cumprod, np.float64)
  mean, var = np.zeros_like(mu), np.ones_like(mu)
  for t, t_prev in steps:
    ab, ab_prev = alphas_cumprod[t], (alphas_cumprod[t_prev] if t_prev >= 0 else 1.0)
    a, s = np.sqrt(ab), np.sqrt(1 - ab)
    v = ab * sigma ** 2 + s ** 2
    gain = a * sigma ** 2 / v  # x0_hat = mu + gain (x_t - a mu)
    if step_kind == 'ddpm':
      beta = 1 - ab / ab_prev
      c1, c2 = beta * np.sqrt(ab_prev) / (1 - ab), (1 - ab_prev) * np.sqrt(1 - beta) / (1 - ab)
      scale, shift = c1 * gain + c2, c1 * (mu - gain * a * mu)
      noise_var = 0.0 if t == 0 else (beta * (1 - ab_prev) / (1 - ab) if variance == 'beta_tilde' else beta)
    else:
      noise_var = eta ** 2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
      d = np.sqrt(1 - ab_prev - noise_var)
      scale = np.sqrt(ab_prev) * gain + d * s / v
      shift = np.sqrt(ab_prev) * (mu - gain * a * mu) - d * s * a * mu / v
    mean, var = scale * mean + shift, scale ** 2 * var + noise_var
  return mean, np.sqrt(var)


@pytest.mark.parametrize('sampler,num_steps,variance,eta,prediction,discretisation', [
    # DDPM on a 250-step schedule keeps the test fast; its fixed variances are not the exact
    # reverse conditionals, which leaves a small shrinkage too.
    ('ddpm', None, 'beta_tilde', 0.0, 'eps', 0.05),
    ('ddpm', None, 'beta', 0.0, 'eps', 0.05),
    ('ddim', 50, 'beta_tilde', 0.0, 'eps', 0.12),
    ('ddim', 50, 'beta_tilde', 1.0, 'eps', 0.20),
    ('ddim', 50, 'beta_tilde', 0.0, 'v', 0.12),
])
def test_sampler_reproduces_gaussian_data(sampler, num_steps, variance, eta, prediction, discretisation):
  num_timesteps = 250 if sampler == 'ddpm' else 1000
  schedule = schedules.make_schedule('cosine', num_timesteps)
  mu, sigma = gaussian_data()
  samples = diffusion.sample(exact_denoiser(schedule, mu, sigma, prediction), schedule, jax.random.PRNGKey(0),
                             (NUM_SAMPLES,) + IMAGE, sampler=sampler, num_steps=num_steps, eta=eta,
                             variance=variance, clip_denoised=False, prediction=prediction)
  samples = np.asarray(samples, np.float64)
  ts, t_prevs = diffusion.sampling_timesteps(num_timesteps, sampler, num_steps)
  expected_mean, expected_std = closed_form_moments(
      schedule.alphas_cumprod, zip(np.asarray(ts).tolist(), np.asarray(t_prevs).tolist()), mu, sigma, sampler,
      variance, eta)
  # Within sampling error of the closed form: means within 5 standard errors at every
  # pixel, stds within 5% (the standard error of a std over 4000 samples is 1.1%).
  np.testing.assert_array_less(np.abs(samples.mean(0) - expected_mean), 5 * expected_std / np.sqrt(NUM_SAMPLES))
  np.testing.assert_allclose(samples.std(0), expected_std, rtol=0.05)
  # And the closed form itself recovers the data distribution up to the sampler's discretisation.
  np.testing.assert_allclose(expected_mean, mu, atol=discretisation * sigma.max())
  np.testing.assert_allclose(expected_std, sigma, rtol=discretisation)


def test_sample_starts_from_noise_and_is_deterministic_for_a_key():
  schedule = schedules.make_schedule('linear', 100)
  mu, sigma = gaussian_data()
  denoise = exact_denoiser(schedule, mu, sigma)
  a = diffusion.sample(denoise, schedule, jax.random.PRNGKey(1), (2,) + IMAGE, sampler='ddim', num_steps=10)
  b = diffusion.sample(denoise, schedule, jax.random.PRNGKey(1), (2,) + IMAGE, sampler='ddim', num_steps=10)
  c = diffusion.sample(denoise, schedule, jax.random.PRNGKey(2), (2,) + IMAGE, sampler='ddim', num_steps=10)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(c))


def test_sample_with_partial_params_does_not_recompile():
  schedule = schedules.make_schedule('linear', 100)
  apply = lambda scale, x_t, t: x_t * scale
  traces = []
  for scale in (0.1, 0.2, 0.3):
    diffusion.sample(jax.tree_util.Partial(apply, jnp.float32(scale)), schedule, jax.random.PRNGKey(0),
                     (2, 4, 4, 3), sampler='ddim', num_steps=5)
    traces.append(diffusion._sample_scan._cache_size())
  assert traces[0] == traces[-1]
