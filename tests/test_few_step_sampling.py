"""Few-step samplers on noise-level grids (logsnr, karras) and heun: against diffusers, a float64 reference, and the
exact probability-flow ODE of Gaussian data."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.core import diffusion, sampler as sampler_lib, schedules, solvers, timesteps

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')

DIFFUSERS_PREDICTIONS = {'eps': 'epsilon', 'x0': 'sample', 'v': 'v_prediction'}
DIFFUSERS_GRIDS = {'karras': 'use_karras_sigmas', 'logsnr': 'use_lu_lambdas'}  # DPMSolverMultistepScheduler's
EDM_GRIDS = {'karras': 'use_karras_sigmas', 'logsnr': 'use_exponential_sigmas'}  # Euler's and Heun's
BETAS = {'linear': schedules.linear_betas(1000), 'cosine': schedules.cosine_betas(1000)}
# diffusers' DPMSolverMultistepScheduler.set_timesteps calls np.array on a torch tensor, which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')


def float64_alphas_cumprod(name='linear'):
  return np.cumprod(1.0 - BETAS[name])


def in_float64(ref):
  """Returns the diffusers scheduler with alpha_bar in float64 (ours), so its noise levels are ours to float32."""
  ref.alphas_cumprod = torch.from_numpy(float64_alphas_cumprod())
  return ref


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)), dtype=np.float64))


def nhwc(x):
  return np.transpose(x.numpy(), (0, 2, 3, 1))


# ---- The grids ------------------------------------------------------------------------------

@pytest.mark.parametrize('spacing', timesteps.SIGMA_SPACINGS)
def test_noise_level_grids_match_diffusers(spacing):
  schedule = schedules.make_schedule('linear', 1000)
  for num_steps in (1, 10, 23):
    ts, sigmas = timesteps.sampling_grid(schedule, 'dpmpp_2m', num_steps, spacing)
    ref = in_float64(diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, final_sigmas_type='zero',
                                                           **{DIFFUSERS_GRIDS[spacing]: True}))
    ref.set_timesteps(num_steps)
    np.testing.assert_array_equal(np.asarray(ts), ref.timesteps.numpy())
    np.testing.assert_allclose(sigmas, ref.sigmas.numpy(), rtol=1e-6)
    if num_steps == 1:  # HeunDiscreteScheduler then takes both ends at sigma(0)
      continue
    heun = in_float64(diffusers.HeunDiscreteScheduler(num_train_timesteps=1000, **{EDM_GRIDS[spacing]: True}))
    heun.set_timesteps(num_steps)  # repeats every level but the first and the last, and keeps t fractional
    np.testing.assert_allclose(sigmas, heun.sigmas.numpy()[[0, *range(1, 2 * num_steps - 1, 2), -1]], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(ts), heun.timesteps.numpy()[[0, *range(1, 2 * num_steps - 1, 2)]].round())


def test_noise_level_grids_in_closed_form():
  schedule = schedules.make_schedule('cosine', 1000)
  sigma = np.sqrt((1 - float64_alphas_cumprod('cosine')) / float64_alphas_cumprod('cosine'))
  for spacing, warp in [('logsnr', np.log), ('karras', lambda s: s ** (1 / 7))]:
    ts, sigmas = timesteps.sampling_grid(schedule, 'heun', 12, spacing)
    assert sigmas[-1] == 0 and list(np.asarray(ts)[[0, -1]]) == [999, 0]
    np.testing.assert_allclose(sigmas[[0, -2]], sigma[[-1, 0]], rtol=1e-6)
    steps = np.diff(warp(sigmas[:-1]))
    np.testing.assert_allclose(steps, steps[0], rtol=1e-6)
    assert np.all(np.diff(np.asarray(ts)) <= 0)
  # heun on the timestep spacings visits ddim's timesteps, then the clean image.
  ts, sigmas = timesteps.sampling_grid(schedule, 'heun', 10, 'trailing')
  ddim_ts, _ = diffusion.sampling_timesteps(1000, 'ddim', 10, 'trailing')
  np.testing.assert_array_equal(np.asarray(ts), np.asarray(ddim_ts))
  np.testing.assert_allclose(sigmas, np.append(sigma[np.asarray(ts)], 0.0), rtol=1e-6)


def test_grids_that_cannot_run_are_one_line_errors():
  zero_snr = schedules.make_schedule('linear', 50, zero_terminal_snr=True)
  with pytest.raises(ValueError, match="sampler='dpmpp_2m' with timestep_spacing='karras' needs a finite noise level"):
    timesteps.sampling_grid(zero_snr, 'dpmpp_2m', 10, 'karras')
  with pytest.raises(ValueError, match="use sampler='ddim' or 'dpmpp_2m' with timestep_spacing='trailing'"):
    timesteps.sampling_grid(zero_snr, 'heun', 10, 'trailing')
  with pytest.raises(ValueError, match="timestep_spacing='logsnr' places noise levels of the schedule"):
    timesteps.sampling_timesteps(50, 'ddim', 10, 'logsnr')
  with pytest.raises(ValueError, match='num_steps=51 is out of range for heun; valid: 1..50'):
    timesteps.check_sampling(50, 'heun', 51, 'karras')
  assert timesteps.check_sampling(50, 'dpmpp_2m', 50, 'karras') == 50  # distinct levels: no repeated step


def test_the_sampler_builder_runs_heun_on_a_noise_level_grid():
  schedule = schedules.make_schedule('linear', 100)
  settings = sampler_lib.SamplerSettings(sampler='heun', num_steps=4, timestep_spacing='logsnr')
  built = sampler_lib.make_sampler(lambda variables, x_t, t, train: variables['params'] * x_t, schedule, settings,
                                   prediction='v', image_size=4)
  rng = jax.random.PRNGKey(3)
  expected = diffusion.sample(lambda x_t, t: 0.5 * x_t, schedule, rng, (2, 4, 4, 3), sampler='heun', num_steps=4,
                              prediction='v', timestep_spacing='logsnr')
  assert built.name == 'heun4_logsnr'
  np.testing.assert_allclose(np.asarray(built.sample(jnp.float32(0.5), rng, 2)), np.asarray(expected), atol=1e-5)


# ---- Step by step against diffusers ----------------------------------------------------------

def x0_model(schedule, prediction):
  """Returns a fixed model whose x0 prediction is a bounded nonlinear function of (x_t, t), as a `prediction` output."""
  def model(x_t, t):
    x0 = 0.8 * jnp.tanh(x_t) + 0.1 * jnp.sin(3.0 * x_t) * (t / schedule.num_timesteps)[:, None, None, None]
    a = schedule.sqrt_alphas_cumprod[t][:, None, None, None]
    s = schedule.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
    return diffusion.from_x0_eps(schedule, x0, (x_t - a * x0) / s, t, prediction)
  return model


def ours_and_theirs_step_by_step(ref, model, schedule, sampler, num_steps, spacing, prediction, x_T, their_scale):
  """Returns the largest gap between our chain and diffusers' after any model call, relative to the state's size.

  Both start from x_T and call the same model; our chain is `solvers.grid_step` over the rows the
  scan walks. their_scale(i) maps diffusers' state after call i to ours.
  """
  ts, sigmas = timesteps.sampling_grid(schedule, sampler, num_steps, spacing)
  rows = solvers.scan_inputs(ts, sigmas, sampler)
  step = jax.jit(lambda carry, row: solvers.grid_step(model, carry, row, jax.random.PRNGKey(0), 0.0, sampler=sampler,
                                                      clip_denoised=False, prediction=prediction))
  carry = solvers.initial_carry(jnp.asarray(x_T), rows, sampler)
  theirs, gap = nchw(x_T) * float(ref.init_noise_sigma), 0.0
  for index, t in enumerate(ref.timesteps):
    carry = step(carry, jax.tree_util.tree_map(lambda column: column[index], rows))
    model_input = ref.scale_model_input(theirs, t).to(torch.float32)
    output = model(jnp.asarray(nhwc(model_input)), jnp.full(x_T.shape[:1], round(float(t)), jnp.int32))
    theirs = ref.step(nchw(np.asarray(output)), t, theirs).prev_sample
    expected = nhwc(theirs) * their_scale(index)
    gap = max(gap, float(np.abs(np.asarray(carry[0]) - expected).max() / max(1.0, np.abs(expected).max())))
  scanned = diffusion.sample(model, schedule, jax.random.PRNGKey(0), x_T.shape, sampler=sampler, num_steps=num_steps,
                             clip_denoised=False, prediction=prediction, timestep_spacing=spacing, x_T=x_T)
  np.testing.assert_allclose(np.asarray(scanned), np.asarray(carry[0]), atol=1e-5)  # the scan runs these steps
  return gap


@pytest.mark.parametrize('spacing,prediction,num_steps', [('karras', 'eps', 10), ('logsnr', 'v', 7)])
def test_dpmpp_2m_on_noise_levels_matches_diffusers_step_by_step(spacing, prediction, num_steps):
  schedule = schedules.make_schedule('linear', 1000)
  ref = in_float64(diffusers.DPMSolverMultistepScheduler(
      num_train_timesteps=1000, algorithm_type='dpmsolver++', solver_order=2, final_sigmas_type='zero',
      prediction_type=DIFFUSERS_PREDICTIONS[prediction], **{DIFFUSERS_GRIDS[spacing]: True}))
  ref.set_timesteps(num_steps)
  x_T = np.random.default_rng(8).normal(size=(2, 4, 4, 3)).astype(np.float32)
  gap = ours_and_theirs_step_by_step(ref, x0_model(schedule, prediction), schedule, 'dpmpp_2m', num_steps, spacing,
                                     prediction, x_T, lambda index: 1.0)
  assert gap < 1e-4


# diffusers' Euler and Heun schedulers feed the model fractional timesteps, ours rounds them: a model
# that reads only x_t makes the two chains comparable, the levels and updates being what is checked.
@pytest.mark.parametrize('sampler,spacing,prediction', [('heun', 'karras', 'eps'), ('heun', 'logsnr', 'x0'),
                                                        ('ddim', 'karras', 'v')])
def test_heun_and_ddim_on_noise_levels_match_diffusers_step_by_step(sampler, spacing, prediction):
  schedule = schedules.make_schedule('linear', 1000)
  scheduler = diffusers.HeunDiscreteScheduler if sampler == 'heun' else diffusers.EulerDiscreteScheduler
  ref = in_float64(scheduler(num_train_timesteps=1000, prediction_type=DIFFUSERS_PREDICTIONS[prediction],
                             **{EDM_GRIDS[spacing]: True}))
  ref.set_timesteps(6)
  x_T = np.random.default_rng(9).normal(size=(2, 4, 4, 3)).astype(np.float32)
  model = lambda x_t, t: 0.5 * jnp.tanh(2.0 * x_t)
  # diffusers' Euler state is x / alpha; our ddim's is x, at the level the step ends on.
  alphas = solvers.signal_and_noise(ref.sigmas.numpy().astype(np.float64))[0]
  scale = (lambda index: 1.0) if sampler == 'heun' else (lambda index: alphas[index + 1])
  assert ours_and_theirs_step_by_step(ref, model, schedule, sampler, 6, spacing, prediction, x_T, scale) < 1e-4


# ---- The exact probability-flow ODE of Gaussian data, and a float64 reference ----------------
# x0 ~ N(mu, s^2) per pixel: x_t = a x0 + sigma eps is N(a mu, a^2 s^2 + sigma^2), the exact
# denoiser is linear in x_t, and the probability-flow ODE, the monotone map between these
# Gaussians, takes x_T at the grid's first level to x0 = mu + s (x_T - a mu) / sqrt(a^2 s^2 + sigma^2).

def gaussian_data(shape=(8, 4, 4, 3)):
  rng = np.random.default_rng(3)
  return rng.uniform(-0.5, 0.5, shape[1:]), rng.uniform(0.05, 0.25, shape[1:]), rng.normal(size=shape)


def exact_denoiser(schedule, mu, s, prediction):
  """Returns the model that outputs the exact E[eps | x_t] at its timestep t, as a `prediction` output."""
  mu, s = jnp.float32(mu), jnp.float32(s)

  def denoise(x_t, t):
    a = schedule.sqrt_alphas_cumprod[t][:, None, None, None]
    sigma = schedule.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
    eps = sigma * (x_t - a * mu) / (a ** 2 * s ** 2 + sigma ** 2)
    return diffusion.from_x0_eps(schedule, (x_t - sigma * eps) / a, eps, t, prediction)
  return denoise


def reference_grid(alphas_cumprod, num_steps, spacing):
  """Returns the model's rounded timesteps and the n + 1 levels: Karras et al.'s eq. 5, or uniform in log-SNR."""
  table = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
  ramp = np.arange(num_steps) / (num_steps - 1)
  if spacing == 'karras':
    levels = (table[-1] ** (1 / 7) + ramp * (table[0] ** (1 / 7) - table[-1] ** (1 / 7))) ** 7
  else:
    levels = table[-1] * (table[0] / table[-1]) ** ramp
  return np.round(np.interp(np.log(levels), np.log(table), np.arange(len(table)))).astype(int), np.append(levels, 0)


def reference_x0(x, t, level, alphas_cumprod, mu, s, prediction):
  """Returns, in float64, the x0 a sampler reads at level from the exact denoiser's output at timestep t."""
  a, sigma = np.sqrt(alphas_cumprod[t]), np.sqrt(1 - alphas_cumprod[t])
  eps = sigma * (x - a * mu) / (a ** 2 * s ** 2 + sigma ** 2)
  x0 = (x - sigma * eps) / a
  alpha, noise = 1 / np.sqrt(1 + level ** 2), level / np.sqrt(1 + level ** 2)
  if prediction == 'eps':
    return (x - noise * eps) / alpha
  if prediction == 'v':
    return alpha * x - noise * (a * eps - sigma * x0)
  return x0


def reference_sample(sampler, ts, levels, x_T, denoise):
  """Returns x0 from x_T by DDIM (Song et al. 2021, eta = 0), DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2, the
  last step first-order) or Heun (Karras et al. 2022, Algorithm 1, S_churn = 0) on the levels, in float64."""
  alpha = 1 / np.sqrt(1 + levels ** 2)
  with np.errstate(divide='ignore'):  # lambda = log(alpha / noise) = -log(level), +inf at the end
    noise, lam = levels * alpha, -np.log(levels)
  x, x0_last, h_last = x_T, None, None
  for i, t in enumerate(ts):
    if sampler == 'heun':
      slope = (x / alpha[i] - denoise(x, t, levels[i])) / levels[i]
      x_scaled = x / alpha[i] + (levels[i + 1] - levels[i]) * slope
      if levels[i + 1] > 0:
        corrected = (x_scaled - denoise(alpha[i + 1] * x_scaled, ts[i + 1], levels[i + 1])) / levels[i + 1]
        x_scaled = x / alpha[i] + (levels[i + 1] - levels[i]) * (slope + corrected) / 2
      x = alpha[i + 1] * x_scaled
      continue
    x0 = denoise(x, t, levels[i])
    if levels[i + 1] == 0:
      return x0
    if sampler == 'ddim':
      x = alpha[i + 1] * x0 + noise[i + 1] * (x - alpha[i] * x0) / noise[i]
      continue
    h = lam[i + 1] - lam[i]
    data = x0 if x0_last is None else (1 + h / (2 * h_last)) * x0 - h / (2 * h_last) * x0_last
    x = noise[i + 1] / noise[i] * x - alpha[i + 1] * np.expm1(-h) * data
    x0_last, h_last = x0, h
  return x


# (sampler, spacing, schedule, steps, prediction, the RMS error to the exact ODE solution it must meet: about 1.5
# times what it makes, benchmarks/ode_accuracy.py's table; the goal is dpmpp_2m at 10 steps <= 0.01)
ACCURACY_CASES = [
    ('dpmpp_2m', 'logsnr', 'linear', 10, 'eps', 0.004),
    ('dpmpp_2m', 'karras', 'linear', 10, 'v', 0.008),
    ('dpmpp_2m', 'logsnr', 'cosine', 10, 'x0', 0.008),
    ('heun', 'logsnr', 'linear', 20, 'eps', 0.008),
    ('heun', 'karras', 'cosine', 50, 'v', 0.012),
    ('ddim', 'logsnr', 'linear', 20, 'eps', 0.03),
]


@pytest.mark.parametrize('sampler,spacing,name,num_steps,prediction,bound', ACCURACY_CASES)
def test_samplers_match_the_float64_reference_and_solve_the_gaussian_ode(sampler, spacing, name, num_steps,
                                                                         prediction, bound):
  schedule, alphas_cumprod = schedules.make_schedule(name, 1000), float64_alphas_cumprod(name)
  mu, s, x_T = gaussian_data()
  ours = np.asarray(diffusion.sample(exact_denoiser(schedule, mu, s, prediction), schedule, jax.random.PRNGKey(0),
                                     x_T.shape, sampler=sampler, num_steps=num_steps, timestep_spacing=spacing,
                                     clip_denoised=False, prediction=prediction, x_T=x_T), np.float64)
  ts, levels = reference_grid(alphas_cumprod, num_steps, spacing)
  denoise = lambda x, t, level: reference_x0(x, t, level, alphas_cumprod, mu, s, prediction)
  reference = reference_sample(sampler, ts, levels, x_T, denoise)
  np.testing.assert_allclose(ours, reference, atol=1e-4)
  alpha_T, sigma_T = 1 / np.sqrt(1 + levels[0] ** 2), levels[0] / np.sqrt(1 + levels[0] ** 2)
  exact = mu + s * (x_T - alpha_T * mu) / np.sqrt(alpha_T ** 2 * s ** 2 + sigma_T ** 2)
  assert np.sqrt(np.mean((ours - exact) ** 2)) < bound
