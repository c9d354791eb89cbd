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


@pytest.mark.parametrize('prediction', diffusion.PREDICTIONS)
@pytest.mark.parametrize('gamma', [5.0, 1.0])
def test_min_snr_loss_matches_diffusers_train_text_to_image(prediction, gamma):
  ref = in_float64(diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=DIFFUSERS_PREDICTIONS[prediction]))
  x0, noise, _ = arrays(9)
  t = np.array([0, 40, 500, 999], np.int32)  # SNR from ~1e4 down to ~4e-5: both sides of gamma
  model = lambda x_t, tt: 0.5 * x_t + 0.1
  ours = diffusion.loss_fn(model, schedules.make_schedule('linear'), x0, t, noise, prediction=prediction,
                           loss_weighting='min_snr', min_snr_gamma=gamma)
  # diffusers' examples/text_to_image/train_text_to_image.py, --snr_gamma.
  timesteps = torch.from_numpy(t).long()
  noisy = ref.add_noise(nchw(x0), nchw(noise), timesteps)
  target = {'eps': nchw(noise), 'x0': nchw(x0), 'v': ref.get_velocity(nchw(x0), nchw(noise), timesteps)}[prediction]
  snr = diffusers.training_utils.compute_snr(ref, timesteps).double()
  weights = torch.stack([snr, gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
  if prediction == 'eps':
    weights = weights / snr
  elif prediction == 'v':
    weights = weights / (snr + 1)
  losses = torch.nn.functional.mse_loss(model(noisy, None), target, reduction='none').mean(dim=[1, 2, 3])
  np.testing.assert_allclose(float(ours), float((losses * weights).mean()), rtol=1e-5)


def test_loss_weighting_none_is_the_unweighted_loss_bit_for_bit():
  schedule = schedules.make_schedule('cosine', 1000)
  x0, noise, _ = arrays(10)
  t = jnp.array([0, 10, 500, 999])
  model = lambda x_t, tt: 0.5 * x_t
  unweighted = jnp.mean(diffusion.elementwise_loss(model(diffusion.q_sample(schedule, x0, t, noise), t), noise, 'mse'))
  for kwargs in ({}, {'loss_weighting': 'none', 'min_snr_gamma': 1.0}):
    np.testing.assert_array_equal(np.asarray(diffusion.loss_fn(model, schedule, x0, t, noise, **kwargs)),
                                  np.asarray(unweighted))


def test_min_snr_weights_are_finite_at_zero_snr():
  betas = diffusers.schedulers.scheduling_ddim.rescale_zero_terminal_snr(torch.linspace(2e-3, 0.4, 50)).numpy()
  schedule = schedules.schedule_from_betas(betas)
  weights = {p: np.asarray(diffusion.min_snr_weights(schedule, jnp.array([0, 49]), p)) for p in diffusion.PREDICTIONS}
  # At SNR = 0 eps's min(SNR, gamma) / SNR tends to 1, x0's and v's weights to 0; at t = 0 SNR > gamma.
  assert weights['eps'][1] == 1.0 and weights['x0'][1] == 0.0 and weights['v'][1] == 0.0
  np.testing.assert_allclose([weights['eps'][0], weights['x0'][0]], [5.0 / float(diffusion.signal_to_noise(
      schedule, 0)), 5.0], rtol=1e-6)


@pytest.mark.parametrize('kind,value', [('loss', 'l3'), ('prediction', 'score'), ('loss_weighting', 'snr')])
def test_unknown_loss_prediction_or_weighting_raises(kind, value):
  schedule = schedules.make_schedule('linear', 10 * 100)
  x0, noise, _ = arrays(6)
  kwargs = {kind: value}
  with pytest.raises(ValueError, match=f"unknown {kind} '{value}'; valid: "):
    diffusion.loss_fn(lambda x, t: x, schedule, x0, jnp.zeros(4, jnp.int32), noise, **kwargs)


def test_sampling_timesteps():
  ts, t_prev = diffusion.sampling_timesteps(1000, 'ddim', 50, 'linspace')
  assert ts[0] == 999 and ts[-1] == 0 and t_prev[-1] == -1 and len(ts) == 50
  assert np.all(np.isin(np.diff(np.asarray(ts)), [-20, -21]))
  np.testing.assert_array_equal(np.asarray(t_prev[:-1]), np.asarray(ts[1:]))
  ts, t_prev = diffusion.sampling_timesteps(1000, 'ddim', 50)  # leading, the default
  np.testing.assert_array_equal(np.asarray(ts), np.arange(980, -1, -20))
  np.testing.assert_array_equal(np.asarray(t_prev), np.arange(960, -21, -20).clip(-1))
  for spacing in diffusion.TIMESTEP_SPACINGS:
    ts, _ = diffusion.sampling_timesteps(1000, 'ddpm', spacing=spacing)
    np.testing.assert_array_equal(np.asarray(ts), np.arange(999, -1, -1))
  ts, t_prev = diffusion.sampling_timesteps(1000, 'dpmpp_2m', 20)
  assert ts[0] == 999 and ts[-1] == 50 and t_prev[-1] == -1 and len(ts) == 20
  with pytest.raises(ValueError, match='use sampler=ddim or dpmpp_2m for fewer steps'):
    diffusion.sampling_timesteps(1000, 'ddpm', 50)
  with pytest.raises(ValueError, match='num_steps=1000 is out of range for dpmpp_2m; valid: 1..999'):
    diffusion.sampling_timesteps(1000, 'dpmpp_2m', 1000)
  with pytest.raises(ValueError, match="unknown sampler 'euler'; valid: ddpm, ddim, dpmpp_2m"):
    diffusion.sampling_timesteps(1000, 'euler', 50)
  with pytest.raises(ValueError, match="unknown timestep_spacing 'even'; valid: leading, linspace, trailing"):
    diffusion.sampling_timesteps(1000, 'ddim', 50, 'even')


# (T, n): n dividing T, not dividing it, one diffusers' trailing arange runs one past, and a lone step.
SPACING_CASES = [(1000, 50), (1000, 30), (100, 7), (1000, 61), (250, 1)]


@pytest.mark.parametrize('spacing', diffusion.TIMESTEP_SPACINGS)
@pytest.mark.parametrize('num_timesteps,num_steps', SPACING_CASES)
def test_ddim_timesteps_match_diffusers(spacing, num_timesteps, num_steps):
  ref = diffusers.DDIMScheduler(num_train_timesteps=num_timesteps, timestep_spacing=spacing)
  ref.set_timesteps(num_steps)
  ts, _ = diffusion.sampling_timesteps(num_timesteps, 'ddim', num_steps, spacing)
  # Where diffusers' trailing np.arange yields n + 1 values, its extra one is t = -1 (it would
  # index alpha_bar[-1], the noisiest): we run the n it was asked for.
  theirs = ref.timesteps.numpy()
  assert len(theirs) == num_steps or (spacing == 'trailing' and list(theirs[num_steps:]) == [-1])
  np.testing.assert_array_equal(np.asarray(ts), theirs[:num_steps])


# diffusers' DPMSolverMultistepScheduler.set_timesteps calls np.array on a torch tensor, which numpy 2 warns about.
DPM_SOLVER_WARNING = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')


@DPM_SOLVER_WARNING
@pytest.mark.parametrize('num_steps', [1, 7, 20, 999])
def test_dpmpp_2m_timesteps_match_diffusers(num_steps):
  ref = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000)
  ref.set_timesteps(num_steps)
  np.testing.assert_array_equal(np.asarray(diffusion.sampling_timesteps(1000, 'dpmpp_2m', num_steps)[0]),
                                ref.timesteps.numpy())


def x0_model(schedule, prediction):
  """Returns a fixed model whose x0 prediction is a bounded nonlinear function of (x_t, t), as a `prediction` output."""
  def model(x_t, t):
    t = jnp.asarray(t)
    x0 = 0.8 * jnp.tanh(x_t) + 0.1 * jnp.sin(3.0 * x_t) * (t / schedule.num_timesteps)[:, None, None, None]
    a = schedule.sqrt_alphas_cumprod[t][:, None, None, None]
    s = schedule.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
    return diffusion.from_x0_eps(schedule, x0, (x_t - a * x0) / s, t, prediction)
  return model


def ours_and_theirs_step_by_step(ref, step, model, schedule, sampler, num_steps, spacing, x_T):
  """Returns the largest gap between our chain and diffusers' after any step, and diffusers' final sample.

  Both chains start from x_T and call the same model; `step(x_t, output, t, t_prev, history)`
  is ours, and returns (x_{t_prev}, history).
  """
  ts, t_prevs = diffusion.sampling_timesteps(schedule.num_timesteps, sampler, num_steps, spacing)
  np.testing.assert_array_equal(np.asarray(ts), ref.timesteps.numpy())
  model = jax.jit(model)
  ours_step = jax.jit(lambda x_t, t, t_prev, history: step(x_t, model(x_t, t), t, t_prev, history))
  batch = (x_T.shape[0],)
  ours, theirs, gap = jnp.asarray(x_T), nchw(x_T).to(torch.float32 if sampler == 'dpmpp_2m' else torch.float64), 0.0
  history = (jnp.zeros_like(ours), jnp.full(batch + (1, 1, 1), jnp.inf))
  for t, t_prev in zip(np.asarray(ts).tolist(), np.asarray(t_prevs).tolist()):
    ours, history = ours_step(ours, jnp.full(batch, t), jnp.full(batch, t_prev), history)
    output = nchw(np.asarray(model(jnp.asarray(nhwc(theirs), jnp.float32), jnp.full(batch, t)))).to(theirs.dtype)
    theirs = ref.step(output, t, theirs).prev_sample
    gap = max(gap, float(np.abs(np.asarray(ours) - nhwc(theirs)).max()))
  return gap, nhwc(theirs)


# Where diffusers' DDIMScheduler.step goes to t - T // n, the next timestep of its own list
# (leading always; trailing when n divides T; linspace only at n = T). For the others it steps
# to t - T // n all the same, while our chain goes to the next listed timestep (the DDIM
# paper's tau_{i-1}); the step itself is the same formula (test_ddim_step_matches_diffusers).
@pytest.mark.parametrize('spacing,num_timesteps,num_steps', [
    ('leading', 1000, 50), ('leading', 100, 7), ('trailing', 100, 10), ('linspace', 100, 100)])
def test_ddim_chain_matches_diffusers_step_by_step(spacing, num_timesteps, num_steps):
  schedule = schedules.make_schedule('linear', num_timesteps)
  model = x0_model(schedule, 'eps')
  ref = in_float64(diffusers.DDIMScheduler(num_train_timesteps=num_timesteps, beta_start=0.1 / num_timesteps,
                                           beta_end=20.0 / num_timesteps, clip_sample=False,
                                           timestep_spacing=spacing))
  ref.set_timesteps(num_steps)
  x_T, _, _ = arrays(7, shape=(2, 4, 4, 3))

  def step(x_t, output, t, t_prev, history):
    return diffusion.ddim_step(schedule, output, t, t_prev, x_t, jnp.zeros_like(x_t), clip_denoised=False), history
  gap, theirs = ours_and_theirs_step_by_step(ref, step, model, schedule, 'ddim', num_steps, spacing, x_T)
  assert gap < 1e-4
  if num_steps == 7:  # the scan runs the same steps (once: each step count compiles anew)
    scanned = diffusion.sample(model, schedule, jax.random.PRNGKey(0), x_T.shape, sampler='ddim',
                               num_steps=num_steps, timestep_spacing=spacing, clip_denoised=False, x_T=x_T)
    np.testing.assert_allclose(np.asarray(scanned), theirs, atol=1e-4)


@DPM_SOLVER_WARNING
@pytest.mark.parametrize('prediction,num_steps', [('eps', 20), ('eps', 7), ('x0', 7), ('v', 7)])
def test_dpmpp_2m_matches_diffusers_step_by_step(prediction, num_steps):
  schedule = schedules.make_schedule('linear', 1000)
  model = x0_model(schedule, prediction)
  ref = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type='dpmsolver++', solver_order=2,
                                              prediction_type=DIFFUSERS_PREDICTIONS[prediction])
  # The defaults we follow; under 15 steps lower_order_final changes nothing more for order 2.
  assert (ref.config.lower_order_final, ref.config.final_sigmas_type, ref.config.timestep_spacing) == \
      (True, 'zero', 'linspace')
  ref.set_timesteps(num_steps)
  x_T, _, _ = arrays(8, shape=(2, 4, 4, 3))

  def step(x_t, output, t, t_prev, history):
    x_prev, x0, h = diffusion.dpmpp_2m_step(schedule, output, t, t_prev, x_t, *history, clip_denoised=False,
                                            prediction=prediction)
    return x_prev, (x0, h)
  gap, theirs = ours_and_theirs_step_by_step(ref, step, model, schedule, 'dpmpp_2m', num_steps, 'leading', x_T)
  assert gap < 1e-4
  if prediction == 'v':  # the scan carries the same history
    scanned = diffusion.sample(model, schedule, jax.random.PRNGKey(0), x_T.shape, sampler='dpmpp_2m',
                               num_steps=num_steps, clip_denoised=False, prediction=prediction, x_T=x_T)
    np.testing.assert_allclose(np.asarray(scanned), theirs, atol=1e-4)


@pytest.mark.parametrize('sampler,num_steps,spacing', [
    ('ddpm', None, 'leading'), ('ddim', 10, 'trailing'), ('dpmpp_2m', 10, 'leading')])
def test_samplers_stay_finite_at_zero_terminal_snr(sampler, num_steps, spacing):
  # alpha_bar_T = 0: lambda_T = -inf, and the first step (at T-1 for each of these) sees no signal.
  betas = diffusers.schedulers.scheduling_ddim.rescale_zero_terminal_snr(torch.linspace(2e-3, 0.4, 50)).numpy()
  schedule = schedules.schedule_from_betas(betas)
  assert float(schedule.alphas_cumprod[-1]) == 0.0
  model = lambda x_t, t: 0.5 * jnp.tanh(x_t)  # a bounded v prediction
  x = diffusion.sample(model, schedule, jax.random.PRNGKey(0), (2, 4, 4, 3), sampler=sampler, num_steps=num_steps,
                       timestep_spacing=spacing, eta=1.0, clip_denoised=False, prediction='v')
  assert np.all(np.isfinite(np.asarray(x)))


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


def linear_sampler_moments(schedule, mu, sigma, **kwargs):
  """Returns the exact per-pixel mean and std of a deterministic sampler's output under the exact denoiser.

  Driven by it, each deterministic step (DDIM with eta = 0, DPM-Solver++) is affine in its
  inputs, so the output is A x_T + b per pixel: N(b, A^2) for x_T ~ N(0, 1). Two runs, from
  x_T = 0 and from x_T = 1, give b and A.
  """
  x_T = np.stack([np.zeros(IMAGE), np.ones(IMAGE)]).astype(np.float32)
  out = np.asarray(diffusion.sample(exact_denoiser(schedule, mu, sigma), schedule, jax.random.PRNGKey(0), x_T.shape,
                                    clip_denoised=False, x_T=x_T, **kwargs), np.float64)
  return out[0], np.abs(out[1] - out[0])


def test_dpmpp_2m_reproduces_gaussian_data_and_beats_ddim_at_10_steps():
  schedule = schedules.make_schedule('cosine', 1000)
  # Wider than gaussian_data(): the last step returns E[x0 | x_50] (diffusers' final_sigmas_type='zero'),
  # whose std falls short of a narrow pixel's by what x_50 still hides (14% at sigma = 0.15).
  rng = np.random.default_rng(42)
  mu, sigma = rng.uniform(-0.5, 0.5, IMAGE), rng.uniform(0.3, 0.6, IMAGE)
  mean, std = linear_sampler_moments(schedule, mu, sigma, sampler='dpmpp_2m', num_steps=20)
  np.testing.assert_allclose(mean, mu, atol=1e-3)
  np.testing.assert_allclose(std, sigma, rtol=0.05)
  # At 10 steps: the root-mean-square Wasserstein-2 distance per pixel between N(mean, std^2) and the data.
  distance = lambda m, s: np.sqrt(np.mean((m - mu) ** 2 + (s - sigma) ** 2))
  ours = distance(*linear_sampler_moments(schedule, mu, sigma, sampler='dpmpp_2m', num_steps=10))
  ddim = [distance(*linear_sampler_moments(schedule, mu, sigma, sampler='ddim', num_steps=10, timestep_spacing=spacing))
          for spacing in diffusion.TIMESTEP_SPACINGS]
  assert ours < 0.6 * min(ddim), (ours, ddim)  # 0.031 against 0.066 (leading) to 0.075 (linspace)


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


@pytest.mark.parametrize('prediction', diffusion.PREDICTIONS)
def test_edm_weighting_is_edms_loss_for_every_prediction(prediction):
  # NVlabs/edm training/loss.py EDMLoss: weight = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on the
  # squared error of the denoised image D(x / alpha; sigma), at sigma = sqrt(1 - alpha_bar) / sqrt(alpha_bar).
  ref = in_float64(diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule='squaredcos_cap_v2'))
  x0, noise, _ = arrays(9)
  t = np.array([0, 40, 500, 990], np.int32)
  model = lambda x_t, tt: 0.5 * x_t + 0.1
  ours = diffusion.loss_fn(model, schedules.make_schedule('cosine'), x0, t, noise, prediction=prediction,
                           loss_weighting='edm')
  alpha_bar = ref.alphas_cumprod.numpy()[t][:, None, None, None]
  alpha, sigma_vp = np.sqrt(alpha_bar), np.sqrt(1 - alpha_bar)
  x_t = alpha * np.float64(x0) + sigma_vp * np.float64(noise)
  output = 0.5 * x_t + 0.1
  denoised = {'eps': (x_t - sigma_vp * output) / alpha, 'x0': output, 'v': alpha * x_t - sigma_vp * output}[prediction]
  sigma = sigma_vp / alpha
  weight = (sigma**2 + 0.5**2) / (sigma * 0.5)**2
  expected = np.mean(weight * np.mean((denoised - np.float64(x0))**2, axis=(1, 2, 3), keepdims=True))
  np.testing.assert_allclose(float(ours), expected, rtol=1e-4)
