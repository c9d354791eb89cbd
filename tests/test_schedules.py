"""Schedules against their closed forms, Chen 2023's formula and diffusers' PyTorch schedulers."""
import math

import numpy as np
import pytest

from ddpm_jax.core import schedules

diffusers = pytest.importorskip('diffusers')

DIFFUSERS_NAMES = {'linear': 'linear', 'cosine': 'squaredcos_cap_v2', 'sigmoid': 'sigmoid'}


def diffusers_scheduler(name, num_timesteps=1000):
  return diffusers.DDPMScheduler(num_train_timesteps=num_timesteps, beta_schedule=DIFFUSERS_NAMES[name])


@pytest.mark.parametrize('name', sorted(DIFFUSERS_NAMES))
def test_betas_and_alphas_cumprod_match_diffusers(name):
  ours = schedules.make_schedule(name, 1000)
  ref = diffusers_scheduler(name)
  np.testing.assert_allclose(np.asarray(ours.betas), ref.betas.numpy(), rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy(), rtol=0, atol=1e-6)


def test_linear_is_ho_et_al_and_rescales_with_t():
  s = schedules.make_schedule('linear', 1000)
  np.testing.assert_allclose(np.asarray(s.betas), np.linspace(1e-4, 0.02, 1000), rtol=1e-6)
  s250 = schedules.make_schedule('linear', 250)
  np.testing.assert_allclose(np.asarray(s250.betas)[[0, -1]], [4e-4, 0.08], rtol=1e-6)


def test_cosine_alphas_cumprod_closed_form():
  s = schedules.make_schedule('cosine', 1000)
  t = np.arange(1, 1001) / 1000
  f = lambda u: np.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
  expected = f(t) / f(0)
  # Equal wherever no beta was clipped at 0.999 (only the very last ones are).
  unclipped = np.asarray(s.betas) < 0.999
  assert unclipped[:-1].all() and not unclipped[-1]
  np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[unclipped], expected[unclipped], rtol=1e-5, atol=1e-7)


def test_sigmoid_betas_closed_form():
  s = schedules.make_schedule('sigmoid', 100, beta_start=1e-4, beta_end=0.02)
  x = np.linspace(-6, 6, 100)
  np.testing.assert_allclose(np.asarray(s.betas), 1 / (1 + np.exp(-x)) * (0.02 - 1e-4) + 1e-4, rtol=1e-6)


def chen_sigmoid_schedule(t, start=-3, end=3, tau=1.0, clip_min=1e-9):
  """Chen 2023, 'On the Importance of Noise Scheduling for Diffusion Models', Algorithm 1, verbatim."""
  sigmoid = lambda x: 1 / (1 + np.exp(-x))
  v_start = sigmoid(start / tau)
  v_end = sigmoid(end / tau)
  output = sigmoid((t * (end - start) + start) / tau)
  output = (v_end - output) / (v_end - v_start)
  return np.clip(output, clip_min, 1.)


@pytest.mark.parametrize('params', [{}, {'start': 0.0, 'end': 3.0, 'tau': 0.7}, {'start': -3.0, 'end': 3.0, 'tau': 1.1}])
def test_sigmoid_gamma_follows_chen_2023(params):
  s = schedules.make_schedule('sigmoid_gamma', 1000, **params)
  gamma = chen_sigmoid_schedule(np.arange(1, 1001) / 1000, **params)
  unclipped = np.asarray(s.betas) < 0.999
  np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[unclipped], gamma[unclipped], rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(s.betas) <= 0.999 + 1e-7)


@pytest.mark.parametrize('name', schedules.SCHEDULE_NAMES)
def test_derived_coefficients_are_consistent(name):
  s = schedules.make_schedule(name, 200)
  betas = np.asarray(s.betas, np.float64)
  ac = np.cumprod(1 - betas)
  ac_prev = np.append(1.0, ac[:-1])
  np.testing.assert_allclose(np.asarray(s.alphas_cumprod_prev), ac_prev, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(s.posterior_variance), betas * (1 - ac_prev) / (1 - ac), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(s.sqrt_one_minus_alphas_cumprod) ** 2 + np.asarray(s.sqrt_alphas_cumprod) ** 2,
                             1.0, rtol=1e-6)
  assert s.num_timesteps == 200
  for field in ('betas', 'posterior_mean_coef1', 'posterior_log_variance_clipped'):
    assert getattr(s, field).dtype == np.float32 and getattr(s, field).shape == (200,)


def test_schedule_is_an_immutable_pytree():
  import dataclasses
  import jax
  s = schedules.make_schedule('linear', 100)
  assert len(jax.tree_util.tree_leaves(s)) == 10
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.betas = None


@pytest.mark.parametrize('name,params,match', [
    ('quadratic', {}, "unknown schedule 'quadratic'; valid schedules: linear, cosine, sigmoid, sigmoid_gamma"),
    ('linear', {'beta_end': 2.0}, 'beta_end=2.0 is out of range'),
    ('linear', {'beta_start': -1.0}, 'beta_start=-1.0 is out of range'),
    ('cosine', {'s': 0.0}, 's=0.0 is out of range'),
    ('sigmoid_gamma', {'tau': 0.0}, 'tau=0.0 is out of range'),
    ('sigmoid_gamma', {'start': 3.0, 'end': -3.0}, 'start < end'),
    ('cosine', {'beta_end': 0.02}, r"unknown parameter\(s\) \['beta_end'\] for schedule 'cosine'"),
])
def test_bad_names_and_parameters_raise(name, params, match):
  with pytest.raises(ValueError, match=match):
    schedules.make_schedule(name, 1000, **params)


def test_linear_betas_beyond_one_after_rescaling_raise():
  # beta_end = 0.02 scaled by 1000/T reaches 1 at T = 20.
  with pytest.raises(ValueError, match=r'beta_end=0.02 is out of range; valid: \(0.0001, 0.01\)'):
    schedules.make_schedule('linear', 10)


def test_bad_num_timesteps_raises():
  with pytest.raises(ValueError, match='num_timesteps must be an integer >= 2, got 0'):
    schedules.make_schedule('linear', 0)


# Zero terminal SNR (Lin et al. 2023): against diffusers' rescale_zero_terminal_snr.

RAW_BETAS = {'linear': schedules.linear_betas, 'cosine': schedules.cosine_betas, 'sigmoid': schedules.sigmoid_betas}


@pytest.mark.parametrize('name', sorted(RAW_BETAS))
def test_zero_terminal_snr_matches_diffusers(name):
  import torch  # pylint: disable=g-import-not-at-top  # diffusers' function takes a tensor
  from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr  # pylint: disable=g-import-not-at-top
  ours = schedules.make_schedule(name, 1000, zero_terminal_snr=True)
  theirs = rescale_zero_terminal_snr(torch.from_numpy(RAW_BETAS[name](1000))).numpy()  # float64 in, float64 out
  np.testing.assert_allclose(np.asarray(ours.betas), theirs, rtol=1e-6, atol=1e-7)
  # diffusers' own scheduler rescales its float32 betas: the same curve to float32 precision.
  scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name],
                                      rescale_betas_zero_snr=True)
  np.testing.assert_allclose(np.asarray(ours.alphas_cumprod), scheduler.alphas_cumprod.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize('name', schedules.SCHEDULE_NAMES)
def test_zero_terminal_snr_ends_in_pure_noise_and_keeps_every_field_finite(name):
  plain, zero = schedules.make_schedule(name, 100), schedules.make_schedule(name, 100, zero_terminal_snr=True)
  assert float(zero.alphas_cumprod[-1]) == 0.0 and float(zero.betas[-1]) == 1.0
  assert float(zero.sqrt_one_minus_alphas_cumprod[-1]) == 1.0
  np.testing.assert_allclose(float(zero.alphas_cumprod[0]), float(plain.alphas_cumprod[0]), rtol=1e-6)
  assert np.all(np.diff(np.asarray(zero.alphas_cumprod)) < 0)
  for field, values in vars(zero).items():
    assert np.all(np.isfinite(np.asarray(values))), field


def test_zero_terminal_snr_with_eps_prediction_is_a_one_line_config_error():
  from ddpm_jax.config import checks, convert, schema  # pylint: disable=g-import-not-at-top
  config = convert.with_values(schema.Config(), {'diffusion.zero_terminal_snr': True, 'diffusion.prediction': 'eps',
                                                 'eval.sampling.timestep_spacing': 'trailing'})
  with pytest.raises(ValueError) as error:
    checks.check_diffusion(config)
  assert str(error.value) == ("diffusion.zero_terminal_snr=True with diffusion.prediction='eps': at alpha_bar_T = 0 "
                              "the noise carries no information about the image; use diffusion.prediction='v' or 'x0'")
  for prediction in ('v', 'x0'):
    checks.check_diffusion(convert.with_values(config, {'diffusion.prediction': prediction}))


@pytest.mark.parametrize('shift', [2 * math.log(64 / 16), -1.5])
def test_logsnr_shift_moves_every_timesteps_log_snr_by_the_shift(shift):
  # Simple diffusion's shifted cosine (Hoogeboom et al. 2023): log-SNR_shifted(t) = log-SNR(t) + shift,
  # checked on the iDDPM closed form alpha_bar(t) = cos^2((t/T + s) / (1 + s) pi / 2) / that at 0, in float64.
  T, s = 1000, 0.008
  steps = np.arange(1, T + 1) / T
  f = lambda u: np.cos((u + s) / (1 + s) * math.pi / 2) ** 2
  alpha_bar = np.clip(f(steps) / f(0.0), 1e-12, None)
  expected = np.log(alpha_bar) - np.log1p(-alpha_bar) + shift
  betas = schedules.shift_logsnr(schedules.cosine_betas(T), shift)
  got_bar = np.cumprod(1.0 - betas)
  got = np.log(got_bar) - np.log1p(-got_bar)
  # The cosine betas are capped at 0.999 near t = T, where alpha_bar leaves the closed form: compare before.
  np.testing.assert_allclose(got[:990], expected[:990], rtol=0, atol=1e-9)
  shifted = schedules.make_schedule('cosine', T, logsnr_shift=shift)
  np.testing.assert_allclose(np.asarray(shifted.betas, np.float64), betas, rtol=1e-6)


def test_logsnr_shift_zero_is_the_schedule_itself_and_zero_terminal_snr_stays_pure_noise():
  for name in schedules.SCHEDULE_NAMES:
    np.testing.assert_array_equal(schedules.make_schedule(name, 100, logsnr_shift=0.0).betas,
                                  schedules.make_schedule(name, 100).betas)
  shifted = schedules.make_schedule('cosine', 100, zero_terminal_snr=True, logsnr_shift=2.0)
  assert float(shifted.alphas_cumprod[-1]) == 0.0 and np.all(np.isfinite(np.asarray(shifted.posterior_mean_coef1)))
