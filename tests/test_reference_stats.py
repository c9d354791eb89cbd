"""Reference statistics files (python -m ddpm_jax.stats, eval.reference_stats) and the protocol's seeds and variance.

Offline: stand-in Inception weights (eval_bridge.testing), 8 px images, a folder dataset of 6.
"""
import hashlib
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch_fidelity import metric_isc, metric_kid, metric_prc

from ddpm_jax import data, stats
from ddpm_jax.config import convert, schema
from ddpm_jax.evaluation import protocol, reference_stats, scores
from ddpm_jax.run import build as components
from eval_bridge import evaluator, fidelity, reference, testing
from runs import ROOT, tiny_config


def smooth_images(num: int, size: int, seed: int) -> np.ndarray:
  """Returns uint8 [num, size, size, 3] images, upsampled 2x2 noise: distinct, and alive through Inception."""
  grid = np.random.default_rng(seed).uniform(0, 255, (num, 2, 2, 3))
  return np.repeat(np.repeat(grid, size // 2, axis=1), size // 2, axis=2).round().astype(np.uint8)


def nchw(images: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  return testing.write_random_inception_weights(str(tmp_path_factory.mktemp('inception') / 'weights.pth'))


@pytest.fixture(scope='module')
def extractor(weights):
  return fidelity.load_inception(weights)


NUM = 6  # dataset images and samples: precision/recall's k = 3 needs 4


@pytest.fixture(scope='module')
def dataset(weights, tmp_path_factory):
  """Returns (config of a folder dataset of NUM images at 8 px scored against its train split, ours.npz, record)."""
  root = tmp_path_factory.mktemp('dataset')
  (root / 'images').mkdir()
  for index, image in enumerate(smooth_images(NUM, 8, seed=0)):
    Image.fromarray(image).save(root / 'images' / f'{index}.png')
  config = tiny_config({'data.dataset': f'folder:{root / "images"}', 'data.data_dir': str(root / 'data'),
                        'data.eval_split': 'train', 'eval.inception_weights': weights, 'eval.num_reference': 100,
                        'eval.reference_cache_dir': str(root / 'cache'), 'eval.metrics': ('fid', 'kid')})
  record = stats.run('compute', config, 'train', str(root / 'ours.npz'), progress=False)
  return config, str(root / 'ours.npz'), record


SAMPLES = nchw(smooth_images(NUM, 8, seed=1))


@pytest.fixture(scope='module')
def samples(extractor):
  """Returns the float64 Inception (features, logits) of SAMPLES, as the Evaluator computes them (one batch)."""
  with torch.inference_mode():
    return tuple(output.double() for output in extractor(SAMPLES))


def reference_of(config, extractor):
  """Returns the config's reference: eval.reference_stats's file, else its dataset's split (cached)."""
  path = config.eval.reference_stats
  return scores.load_reference(config, extractor, reference_stats.open_file(path) if path else None)


def with_file(config, path: str, metrics=None, **values):
  overrides = {'eval.reference_stats': path, **values}
  return convert.with_values(config, {**overrides, 'eval.metrics': metrics or config.eval.metrics})


def fid_in_span(generated: dict, statistics: dict, features: np.ndarray) -> float:
  """Returns torch-fidelity's FID of two Gaussian fits, computed in the span of `features` (rows).

  2048-d eigenvalues take 4-13 s each on the CI's 2 cores. Both fits' means and covariances lie in the
  span of the samples' and the dataset's features (asserted), and FID, invariant under rotations, is the
  same in those 2 * NUM dimensions.
  """
  basis = np.linalg.qr(features.T)[0]
  for fit in (generated, statistics):
    for part in ('mu', 'sigma'):
      np.testing.assert_allclose(basis @ (basis.T @ fit[part]), fit[part], rtol=0, atol=1e-9 * np.abs(fit[part]).max())
  project = lambda fit: {'mu': basis.T @ fit['mu'], 'sigma': basis.T @ fit['sigma'] @ basis}
  return fidelity.fid_from_statistics(project(generated), project(statistics))


def test_statistics_written_as_edms_give_the_fid_of_scoring_the_dataset(dataset, weights, extractor, samples,
                                                                         tmp_path):
  config, ours, record = dataset
  with open(weights, 'rb') as f:
    weights_sha256 = hashlib.sha256(f.read()).hexdigest()
  assert {key: record[key] for key in ('extractor', 'feature_layer', 'weights_sha256', 'image_size', 'split',
                                       'count')} == {'extractor': 'inception-v3-compat', 'feature_layer': '2048',
                                                     'weights_sha256': weights_sha256, 'image_size': 8,
                                                     'split': 'train', 'count': NUM}
  edm = str(tmp_path / 'edm.npz')
  with np.load(ours) as arrays:
    assert arrays['features'].dtype == np.float32 and arrays['features'].shape == (NUM, 2048)
    np.savez(edm, mu=arrays['mu'], sigma=arrays['sigma'])  # EDM's fid.py ref: these two alone
  imported = with_file(config, edm, ('fid',))
  scores.check_setup(imported, force=True)
  generated = fidelity.fid_statistics(samples[0].numpy())  # what the fid plug-in compares with the reference's
  dataset_reference = reference_of(config, extractor)
  span = np.concatenate([samples[0].numpy(), dataset_reference.features])
  direct = fid_in_span(generated, dataset_reference.statistics, span)
  assert direct > 1e-3  # the samples are not the reference: a relative comparison means something
  np.testing.assert_allclose(fid_in_span(generated, reference_of(imported, extractor).statistics, span), direct,
                             rtol=1e-4)
  kid = lambda ref: fidelity.kid(samples[0].numpy(), ref.features, seed=2020)['kid_mean']
  from_ours = reference_of(with_file(config, ours, ('kid',)), extractor)  # its mu and sigma are the EDM file's
  np.testing.assert_allclose(kid(from_ours), kid(reference_of(config, extractor)), rtol=1e-4)
  assert from_ours.count == NUM


def adm_file(path: str, images: np.ndarray, source: str) -> str:
  """Writes an ADM-format reference batch (arr_0 images, mu, sigma; ADM's spatial mu_s too) with source's mu, sigma."""
  with np.load(source) as arrays:
    np.savez(path, arr_0=images, mu=arrays['mu'] + 0.5, sigma=arrays['sigma'], mu_s=np.zeros(7))
  return path


def test_an_adm_file_gives_kid_and_precision_recall_from_its_images(dataset, extractor, samples, tmp_path, caplog):
  config, ours, _ = dataset
  images = np.concatenate(list(data.make_eval_iterator(config.data, 'train', batch_size=4, max_examples=None)))
  adm = with_file(config, adm_file(str(tmp_path / 'adm.npz'), images, ours), ('fid', 'kid', 'prc', 'artefacts'))
  with caplog.at_level(logging.WARNING):
    scores.check_setup(adm, force=True)
  assert f"ADM's reference batch ({NUM} images of 8 px)" in caplog.text
  ref = reference_of(adm, extractor)
  with np.load(ours) as arrays:  # FID reads the file's mu and sigma, not its images' fit
    np.testing.assert_array_equal(ref.statistics['mu'], arrays['mu'] + 0.5)
  direct = reference_of(config, extractor)  # the same images, read from the dataset
  np.testing.assert_allclose(ref.features, direct.features, rtol=1e-5, atol=1e-6)
  scorer = evaluator.Evaluator(extractor, ref, metrics=('kid', 'prc', 'artefacts'), progress=False)
  scorer.update(SAMPLES)
  result = scorer.result()
  expected = fidelity.precision_recall(samples[0].numpy(), direct.features)
  assert (result['precision'], result['recall']) == (expected['precision'], expected['recall'])
  assert np.isfinite(result['kid_mean']) and 'brightness_gap' in result and result['num_reference'] == NUM


def test_a_file_without_features_refuses_kid_in_one_line_before_sampling(dataset, tmp_path, caplog):
  config, ours, _ = dataset
  edm = str(tmp_path / 'edm.npz')
  with np.load(ours) as arrays:
    np.savez(edm, mu=arrays['mu'], sigma=arrays['sigma'])
  with pytest.raises(ValueError) as refused:
    scores.check_setup(with_file(config, edm, ('fid', 'kid', 'ms_ssim')), force=True)
  message = str(refused.value)
  assert '\n' not in message and "mu and sigma alone, which can't give kid" in message
  assert "set eval.metrics to ('fid', 'ms_ssim')" in message and 'python -m ddpm_jax.stats compute' in message
  with caplog.at_level(logging.WARNING):
    scores.check_setup(with_file(config, edm, ('fid',)), force=True)
  assert 'assuming the 2015-12-05 TensorFlow Inception-v3' in caplog.text and 'of 8 px images' in caplog.text


def test_another_image_size_or_extractor_is_refused(dataset, tmp_path):
  config, ours, record = dataset
  with pytest.raises(ValueError, match=r"holds statistics of 8 px images and the run's are 16 px"):
    scores.check_setup(with_file(config, ours, **{'data.image_size': 16}), force=True)
  adm = adm_file(str(tmp_path / 'adm.npz'), smooth_images(4, 16, seed=3), ours)
  with pytest.raises(ValueError, match=r"holds statistics of 16 px images and the run's are 8 px"):
    scores.check_setup(with_file(config, adm, ('fid',)), force=True)
  other = str(tmp_path / 'other_weights.npz')
  with np.load(ours) as arrays:
    np.savez(other, **{**arrays, 'record': np.array(json.dumps({**record, 'weights_sha256': '0' * 64}))})
  with pytest.raises(ValueError, match=r'weights sha256 0000000000000000, and the run\'s Inception is '):
    scores.check_setup(with_file(config, other), force=True)
  scores.check_setup(with_file(config, other, ('artefacts',)), force=True)  # no Inception: the weights don't matter


def test_the_paper_protocol_samples_with_eval_paper_variance():
  config = tiny_config({'eval.protocol': 'paper', 'eval.sampling.variance': 'beta_tilde'})
  assert schema.EvalConfig().paper_variance == 'beta'
  assert protocol.resolve(config).eval.sampling.variance == 'beta'
  changed = convert.with_values(config, {'eval.paper_variance': 'beta_tilde', 'eval.sampling.variance': 'beta'})
  assert protocol.resolve(changed).eval.sampling.variance == 'beta_tilde'


def test_is_and_kid_draw_from_eval_metric_seed_and_record_it(dataset, extractor, samples):
  config, _, _ = dataset
  config = convert.with_values(config, {'eval.metrics': ('kid', 'isc')})
  scorer = scores.Evaluation(config, components.build(config)).scorer()
  scorer.update(SAMPLES)
  result, settings = scorer.result(), scorer.settings()
  assert settings['kid']['seed'] == settings['isc']['seed'] == config.eval.metric_seed == 2020
  features, logits = samples
  ref_features = torch.from_numpy(reference_of(config, extractor).features)
  kid = metric_kid.kid_features_to_metric(features, ref_features, kid_subsets=100, kid_subset_size=NUM,
                                          rng_seed=2020, verbose=False)
  isc = metric_isc.isc_features_to_metric(logits, splits=NUM, shuffle=True, rng_seed=2020)
  assert result['kid_mean'] == pytest.approx(kid[metric_kid.KEY_METRIC_KID_MEAN], rel=1e-5, abs=1e-9)
  assert result['is_mean'] == pytest.approx(isc[metric_isc.KEY_METRIC_ISC_MEAN], rel=1e-5)


def test_precision_recall_subsamples_the_reference_to_the_samples_in_float32_blocks():
  rng = np.random.default_rng(0)
  generated, ref = rng.normal(0, 1, (30, 16)), rng.normal(0.2, 1, (50, 16))
  result = fidelity.precision_recall(generated, ref, batch_size=7)
  chosen = np.sort(np.random.default_rng(2020).choice(50, 30, replace=False))
  theirs = metric_prc.prc_features_to_metric(torch.from_numpy(generated).float(), torch.from_numpy(ref[chosen]).float(),
                                             prc_neighborhood=3, verbose=False)
  assert (result['precision'], result['recall'], result['prc_reference_size']) == (
      theirs['precision'], theirs['recall'], 30)
  assert 0 < result['precision'] < 1 and 0 < result['recall'] < 1


def test_the_cli_without_out_is_one_line_and_exit_2():
  result = subprocess.run([sys.executable, '-m', 'ddpm_jax.stats', 'compute', '--config=tests/configs/tiny.py'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and result.stderr.strip().splitlines() == [
      'ddpm_jax.stats: error: compute needs --config and --out (python -m ddpm_jax.stats compute --config=... '
      '--split=train --out=REF.npz)']
