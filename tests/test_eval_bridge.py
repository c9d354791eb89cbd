"""eval_bridge against PNG round trips, torchmetrics, closed forms and torch-fidelity, offline.

Inception runs with random weights written by the test (no download): about 5
images/s on a small CPU, so only one fixture (16 images) goes through it.
"""
import io
import runpy
import sys
import urllib.error

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import scipy.linalg
import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from eval_bridge import artefacts
from eval_bridge import convert
from eval_bridge import evaluator
from eval_bridge import fidelity
from eval_bridge import ms_ssim
from eval_bridge import reference
from eval_bridge import testing

NOISE_LEVELS = (0, 16, 48, 128)  # std of the Gaussian noise added to the base images, in uint8 units


def smooth_images(num: int, size: int, seed: int) -> np.ndarray:
  """Returns uint8 NHWC images: random 4x4 colour grids upsampled bilinearly (photo-like)."""
  grid = torch.from_numpy(np.random.default_rng(seed).uniform(0, 255, (num, 3, 4, 4)))
  images = torch.nn.functional.interpolate(grid, size=(size, size), mode='bilinear')
  return images.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def nchw(images: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def with_noise(images: np.ndarray, std: float, seed: int) -> np.ndarray:
  noisy = images + np.random.default_rng(seed).normal(0, std, images.shape)
  return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def weights_path(tmp_path_factory):
  return testing.write_random_inception_weights(str(tmp_path_factory.mktemp('w') / 'inception.pth'))


@pytest.fixture(scope='module')
def inception(weights_path):
  return fidelity.load_inception(weights_path)


@pytest.fixture(scope='module')
def noisy_features(inception):
  """Returns {noise std: features} of 4 base images with increasing noise, one Inception pass."""
  base = smooth_images(4, 32, seed=0)
  accumulator = fidelity.FeatureAccumulator(inception, batch_size=16, progress=False)
  accumulator.update(nchw(np.concatenate([with_noise(base, s, seed=1) for s in NOISE_LEVELS])))
  return dict(zip(NOISE_LEVELS, np.split(accumulator.features(), len(NOISE_LEVELS))))


class FakeExtractor(torch.nn.Module):
  """Cheap stand-in for Inception: features from channel means; counts its calls."""

  def __init__(self, dim: int = fidelity.FEATURE_DIM):
    super().__init__()
    self.project = torch.nn.Linear(3, dim)
    self.calls = 0

  def forward(self, images):
    assert images.dtype == torch.uint8 and images.shape[1] == 3
    self.calls += 1
    means = images.double().mean(dim=(2, 3)) / 255
    return (torch.tanh(self.project(means.float()) * 3),)


# Conversion.

def edge_values() -> np.ndarray:
  """Returns float32 values at the edges, around every rounding boundary, and out of range."""
  boundaries = ((np.arange(256) + 0.5) / 127.5 - 1).astype(np.float32)
  around = [np.nextafter(boundaries, np.float32(-2)), boundaries, np.nextafter(boundaries, np.float32(2))]
  special = np.array([-1, 1, 0, -1.5, 2, 1e9, -np.inf, np.inf, np.nan], np.float32)
  values = np.concatenate(around + [special, np.linspace(-1, 1, 3 * 64 - 9, dtype=np.float32)])
  return values.reshape(1, 16, -1, 3)


def png_round_trip(image_hwc: np.ndarray) -> np.ndarray:
  buffer = io.BytesIO()
  Image.fromarray(image_hwc).save(buffer, format='PNG')
  return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))


def test_to_uint8_values_and_png_round_trip():
  x = edge_values()
  saved = convert.to_uint8(x)
  assert saved.dtype == np.uint8 and saved.shape == x.shape
  np.testing.assert_array_equal(png_round_trip(saved[0]), saved[0])
  flat = saved.reshape(-1)[-(3 * 64):]
  assert list(flat[:9]) == [0, 255, 128, 0, 255, 255, 0, 255, 0]  # -1, 1, 0 (127.5 → even), clips, NaN
  # Away from the rounding boundaries, where float32 arithmetic decides, it is exact arithmetic.
  exact = (x.astype(np.float64) + 1) * 127.5
  with np.errstate(invalid='ignore'):  # inf - inf
    clear = np.isfinite(x) & (np.abs(exact - np.floor(exact) - 0.5) > 1e-3)
  np.testing.assert_array_equal(saved[clear], np.clip(np.round(exact), 0, 255)[clear])


@pytest.mark.parametrize('as_jax', [False, True])
def test_torch_tensor_equals_saved_png_bit_for_bit(as_jax):
  x = edge_values()
  images = jnp.asarray(x) if as_jax else x
  tensor = convert.to_torch_uint8_nchw(images)
  assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (1, 3, 16, x.shape[2])
  np.testing.assert_array_equal(tensor[0].permute(1, 2, 0).numpy(), png_round_trip(convert.to_uint8(x)[0]))


def test_device_quantisation_equals_host_quantisation():
  x = np.concatenate([edge_values(), np.random.default_rng(0).uniform(-1.2, 1.2, (1, 16, 20, 3))]).astype(np.float32)
  on_device = np.asarray(convert._quantise_nchw(jnp.asarray(x)))  # the GPU path's kernel, here on CPU
  np.testing.assert_array_equal(on_device, convert.to_uint8(x).transpose(0, 3, 1, 2))


# Start-up check of the Inception weights.

def assert_one_line_naming_fix(error, off='eval.every_steps=0'):
  """Asserts the error is one line naming both ways out (the real file, stand-in weights) and training's third."""
  message = str(error.value)
  assert '\n' not in message and 'eval.inception_weights' in message and off in message
  assert fidelity.INCEPTION_URL in message and 'python -m eval_bridge.testing' in message


def test_in_eval_mode_the_error_offers_no_training_switch(tmp_path):
  with pytest.raises(ValueError) as error:
    fidelity.check_inception_weights(str(tmp_path / 'nope.pth'), fidelity.EVAL_MODE_OFF)
  assert_one_line_naming_fix(error, off="eval.metrics=\"('ms_ssim', 'artefacts')\"")
  assert 'every_steps' not in str(error.value)


def test_the_standin_command_writes_weights_the_check_accepts_and_records_as_standin(tmp_path, monkeypatch, capsys):
  path = str(tmp_path / 'standin.pth')
  monkeypatch.setattr(sys, 'argv', ['eval_bridge.testing', path])
  monkeypatch.delitem(sys.modules, 'eval_bridge.testing')  # run afresh, as a new process would
  with pytest.raises(SystemExit) as exited:  # as `python -m eval_bridge.testing PATH` runs it
    runpy.run_module('eval_bridge.testing', run_name='__main__')
  assert exited.value.code == 0 and f'--config.eval.inception_weights={path}' in capsys.readouterr().out
  assert fidelity.check_inception_weights(path) is None
  record = fidelity.inception_record(path)
  assert record == {'inception_sha256': fidelity.file_sha256(path), 'standin_inception': True}
  # torch hub names the released file by its SHA-256's first digits: a file that has them is no stand-in.
  monkeypatch.setattr(fidelity, 'RELEASED_SHA256_PREFIX', record['inception_sha256'][:8])
  assert not fidelity.inception_record(path)['standin_inception']


@pytest.mark.parametrize('argv', [[], ['a.pth', 'b.pth'], ['--seed=x', 'a.pth'], ['/nowhere/at/all.pth']])
def test_the_standin_command_refuses_bad_arguments_in_one_line(argv, capsys):
  assert testing.main(argv) == 2
  error = capsys.readouterr().err
  assert error.count('\n') == 1 and error.startswith('python -m eval_bridge.testing: error:')


def test_missing_weights_path_fails_fast_naming_the_fix(tmp_path):
  with pytest.raises(ValueError) as error:
    fidelity.check_inception_weights(str(tmp_path / 'nope.pth'))
  assert_one_line_naming_fix(error)
  assert 'nope.pth' in str(error.value)


def test_unloadable_weights_file_fails_naming_the_fix(tmp_path):
  path = tmp_path / 'garbage.pth'
  path.write_bytes(b'not a state dict\nat all')
  with pytest.raises(RuntimeError) as error:
    fidelity.check_inception_weights(str(path))
  assert_one_line_naming_fix(error)


def test_failed_download_fails_naming_the_fix(tmp_path, monkeypatch):
  def offline(*args, **kwargs):
    raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
  monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))  # nothing cached
  monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', offline)
  with pytest.raises(RuntimeError) as error:
    fidelity.check_inception_weights('')
  assert_one_line_naming_fix(error)


def test_valid_weights_pass_the_check(weights_path):
  assert fidelity.check_inception_weights(weights_path) is None


# Inception features, FID and KID.

def test_random_inception_tells_images_apart(noisy_features):
  features = noisy_features[0]
  assert features.shape == (4, fidelity.FEATURE_DIM) and features.dtype == np.float64
  distances = np.linalg.norm(features[:, None] - features[None], axis=-1)[np.triu_indices(4, 1)]
  # Absolute: torch's default init gives distinct features too, but ~1e-9 apart.
  assert distances.min() > 0.1, distances


def in_their_span(*feature_sets: np.ndarray) -> list[np.ndarray]:
  """Returns the feature sets in an orthonormal basis of their span (<= 16 dims here).

  FID is invariant to an orthonormal change of basis and both Gaussian fits live
  in this span, so it is unchanged; but a 2048-d FID is an eigendecomposition of a
  2048x2048 matrix, ~10-30 s on a small CPU, and these tests need several.
  """
  basis, _ = np.linalg.qr(np.concatenate(feature_sets).T)
  return [features @ basis for features in feature_sets]


def test_projecting_onto_the_span_keeps_fid():
  a, b = gaussian_features(5, 64, 0.0, seed=5), gaussian_features(5, 64, 0.5, seed=6)
  np.testing.assert_allclose(fidelity.fid(*in_their_span(a, b)), fidelity.fid(a, b), rtol=1e-6)


def test_fid_and_kid_grow_with_noise_from_zero(noisy_features):
  clean = noisy_features[0]
  fids = [fidelity.fid(*in_their_span(noisy_features[s], clean)) for s in NOISE_LEVELS]
  kids = [fidelity.kid(noisy_features[s], clean, subsets=2)['kid_mean'] for s in NOISE_LEVELS]
  assert abs(fids[0]) < 1e-6 and fids[1] > 0.1, fids  # FID(x, x) ~ 0; the features are alive
  assert np.all(np.diff(fids) > 0), fids
  assert np.all(np.diff(kids) > 0), kids


def gaussian_features(num: int, dim: int, shift: float, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.normal(shift, 1.0, (num, dim)) @ rng.normal(0, 0.5, (dim, dim))


def test_fid_matches_the_closed_form_with_scipy_sqrtm():
  a, b = gaussian_features(300, 8, 0.0, seed=1), gaussian_features(200, 8, 0.3, seed=2)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  diff = a.mean(0) - b.mean(0)
  expected = diff @ diff + np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real)
  np.testing.assert_allclose(fidelity.fid(a, b), expected, rtol=1e-9)


def unbiased_poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  kernel = lambda p, q: (p @ q.T / p.shape[1] + 1) ** 3
  n = len(x)
  off_diagonal = lambda k: (k.sum() - np.trace(k)) / (n * (n - 1))
  return off_diagonal(kernel(x, x)) + off_diagonal(kernel(y, y)) - 2 * kernel(x, y).mean()


def test_kid_matches_the_unbiased_mmd_and_adapts_its_subset_size():
  a, b = gaussian_features(60, 8, 0.0, seed=3), gaussian_features(60, 8, 0.5, seed=4)
  result = fidelity.kid(a, b, subsets=3)
  assert result['kid_subset_size'] == 60  # min(1000, 60, 60): every subset is the whole set
  np.testing.assert_allclose(result['kid_mean'], unbiased_poly_mmd2(a, b), rtol=1e-9)
  assert fidelity.kid(a, b[:45], subsets=3)['kid_subset_size'] == 45
  assert fidelity.kid_subset_size(5000, 10000) == 1000


# MS-SSIM.

@pytest.mark.parametrize('size,scales,kernel', [(16, 2, 7), (32, 3, 7), (64, 4, 7), (28, 2, 11),
                                                (72, 3, 11), (256, 5, 11)])
def test_ms_ssim_settings_fit_the_image_size(size, scales, kernel):
  settings = ms_ssim.settings_for(size)
  assert (settings.num_scales, settings.kernel_size) == (scales, kernel)
  assert int(3.5 * settings.sigma + 0.5) * 2 + 1 == kernel  # torchmetrics' Gaussian window is this wide
  np.testing.assert_allclose(sum(settings.betas), 1.0)


def test_torchmetrics_defaults_fail_at_64px():
  images = torch.rand(2, 3, 64, 64)
  with pytest.raises(ValueError):
    multiscale_structural_similarity_index_measure(images, images, data_range=1.0)


@pytest.mark.parametrize('size', [16, 32, 64])
def test_ms_ssim_of_identical_pairs_is_one(size):
  images = nchw(smooth_images(3, size, seed=5))
  scores = ms_ssim.ms_ssim(images, images, ms_ssim.settings_for(size))
  np.testing.assert_allclose(scores.numpy(), 1.0, atol=1e-5)


def test_pairwise_ms_ssim_matches_a_direct_torchmetrics_call():
  images = nchw(smooth_images(6, 32, seed=6))
  first, second = ms_ssim.random_pairs(6, 20, seed=7)
  direct = multiscale_structural_similarity_index_measure(
      images[first].float(), images[second].float(), kernel_size=7, sigma=1.5 * 7 / 11,
      betas=tuple(float(b) for b in np.array([0.0448, 0.2856, 0.3001]) / 0.6305), data_range=255.0)
  # Near 0 for unrelated images (~0.06 here): 1e-6 absolute (~8 float32 ulps of its factors' scale, 1) as well.
  np.testing.assert_allclose(ms_ssim.pairwise_ms_ssim(images, 20, seed=7), direct.item(), rtol=1e-6, atol=1e-6)


def test_random_pairs_are_distinct_seeded_and_cover_all_images():
  first, second = ms_ssim.random_pairs(5, 1000, seed=0)
  assert np.all(first != second)
  assert set(first) == set(second) == set(range(5))
  np.testing.assert_array_equal(ms_ssim.random_pairs(5, 1000, seed=0)[1], second)


def test_ms_ssim_is_higher_for_a_collapsed_set():
  diverse = nchw(smooth_images(8, 32, seed=8))
  collapsed = nchw(with_noise(np.repeat(smooth_images(1, 32, seed=8), 8, axis=0), 4.0, seed=9))
  assert ms_ssim.pairwise_ms_ssim(collapsed, 50, 0) > ms_ssim.pairwise_ms_ssim(diverse, 50, 0) + 0.2


# Reference cache.

def batches_of(images: np.ndarray, size: int):
  return [images[i:i + size] for i in range(0, len(images), size)]


def test_reference_features_are_cached_and_loaded_without_the_extractor(tmp_path):
  images = smooth_images(9, 16, seed=10)
  key = dict(dataset='tfds:cifar10', split='test', image_size=16, count=7)
  extractor = FakeExtractor()
  first = reference.reference_features(lambda: iter(batches_of(images, 3)), str(tmp_path),
                                       extractor=extractor, progress=False, **key)
  assert first.shape == (7, fidelity.FEATURE_DIM) and extractor.calls == 3
  path = reference.cache_path(str(tmp_path), **key)
  assert path.endswith('tfds_cifar10-test-16px-7-inception-v3-compat-2048.npz')

  def not_again():
    raise AssertionError('the reference data was read again')
  second = reference.reference_features(not_again, str(tmp_path), extractor=extractor, **key)
  assert extractor.calls == 3
  np.testing.assert_array_equal(second, first)
  other_size = reference.reference_features(batches_of(images, 3), str(tmp_path), extractor=extractor,
                                            progress=False, **{**key, 'image_size': 32})
  assert extractor.calls == 6 and other_size.shape == first.shape


def test_reference_set_caches_image_statistics_beside_the_features_reading_the_split_once(tmp_path):
  images = smooth_images(9, 16, seed=13)
  key = dict(dataset='d', split='s', image_size=16, count=7)
  reads = []

  def batches():
    reads.append(1)
    return iter(batches_of(images, 3))
  extractor = FakeExtractor()
  alone = reference.reference_set(batches, str(tmp_path), image_statistics=True, progress=False, **key)
  assert alone.features is None and alone.count == 7 and extractor.calls == 0  # no extractor: no features
  np.testing.assert_array_equal(alone.image_statistics, artefacts.per_image(nchw(images[:7]).numpy()))
  assert reference.image_statistics_path(str(tmp_path), **key).endswith('d-s-16px-7-image-statistics.npz')
  both = reference.reference_set(batches, str(tmp_path), extractor=extractor, image_statistics=True, progress=False,
                                 **key)  # the statistics are cached: the one read computes the features alone
  assert both.features.shape == (7, fidelity.FEATURE_DIM) and extractor.calls == 3 and len(reads) == 2
  np.testing.assert_array_equal(both.image_statistics, alone.image_statistics)
  again = reference.reference_set(batches, str(tmp_path), extractor=extractor, image_statistics=True, **key)
  assert len(reads) == 2 and extractor.calls == 3  # both cached
  np.testing.assert_array_equal(again.features, both.features)
  fresh = reference.reference_set(batches, str(tmp_path / 'fresh'), extractor=extractor, image_statistics=True,
                                  progress=False, **key)
  assert len(reads) == 3 and extractor.calls == 6  # neither cached: one pass computes both
  np.testing.assert_array_equal(fresh.image_statistics, alone.image_statistics)


def test_reference_with_too_few_images_fails(tmp_path):
  with pytest.raises(ValueError, match='fewer than the 10'):
    reference.reference_features(batches_of(smooth_images(4, 16, 0), 2), str(tmp_path), dataset='d',
                                 split='s', image_size=16, count=10, extractor=FakeExtractor(),
                                 progress=False)


# The evaluator.

def test_evaluator_streams_samples_and_reports_named_scalars():
  images = nchw(smooth_images(12, 16, seed=11))
  extractor = FakeExtractor(dim=16)  # a 2048-d FID takes 10-30 s on a small CPU
  accumulator = fidelity.FeatureAccumulator(extractor, progress=False)
  accumulator.update(images)
  ref = reference.make_reference(accumulator.features())
  evaluation = evaluator.Evaluator(extractor, ref, ms_ssim_pairs=30, ms_ssim_images=5, kid_subsets=4,
                                   progress=False)
  for batch in torch.split(images, 4):
    evaluation.update(batch)
  result = evaluation.result()
  assert {'fid', 'kid_mean', 'kid_std', 'ms_ssim', 'num_samples', 'num_reference', 'kid_subset_size'} <= set(result)
  assert abs(result['fid']) < 1e-6  # the same images as the reference
  assert (result['num_samples'], result['num_reference'], result['kid_subset_size']) == (12, 12, 12)
  # MS-SSIM ran on the reservoir: the first 5 images only.
  np.testing.assert_allclose(result['ms_ssim'], ms_ssim.pairwise_ms_ssim(images[:5], 30, seed=0))


def test_evaluator_scores_grey_images_and_cross_ms_ssim():
  grey = nchw(smooth_images(6, 16, seed=12)[..., :1])
  extractor = FakeExtractor(dim=16)
  ref = reference.make_reference(gaussian_features(6, 16, 0, 0), images=grey)
  evaluation = evaluator.Evaluator(extractor, ref, ms_ssim_pairs=10, progress=False)
  evaluation.update(grey)
  result = evaluation.result()
  assert result['num_samples'] == 6 and 0 < result['ms_ssim_vs_reference'] <= 1
