"""The metric plug-ins (eval_bridge/metrics/) against torch-fidelity, torchmetrics and closed forms; the registry's reach.

Inception runs with random weights written by the test (no download); its 2048-d
features are projected onto 6 fixed directions, because a 2048-d FID is an
eigendecomposition of a 2048x2048 matrix (~10-30 s on a small CPU). Where the
answer is known only for chosen features or logits, an `Oracle` stands in for it.
"""
import json
import os
import pkgutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch_fidelity import metric_fid, metric_isc, metric_kid, metric_prc
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

import runs
from ddpm_jax import report
from ddpm_jax.config import checks
from ddpm_jax.evaluation import scores as evaluation
from ddpm_jax.reporting import figures
from ddpm_jax.reporting import runs as events
from ddpm_jax.run import workdir as workdir_lib
from eval_bridge import artefacts, evaluator, fidelity, metrics, ms_ssim, reference, testing

NUM_FEATURES = 6  # fewer than the samples: full-rank covariances, so FID is well conditioned


def uint8_images(num: int, size: int, seed: int) -> torch.Tensor:
  """Returns uint8 NCHW images: random 4x4 colour grids upsampled bilinearly (photo-like)."""
  grid = torch.from_numpy(np.random.default_rng(seed).uniform(0, 255, (num, 3, 4, 4)))
  return torch.nn.functional.interpolate(grid, size=(size, size), mode='bilinear').round().clamp(0, 255).byte()


class Projected(torch.nn.Module):
  """torch-fidelity's Inception, its 2048-d features projected onto NUM_FEATURES orthonormal directions."""

  def __init__(self, inception):
    super().__init__()
    self.inception = inception
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(fidelity.FEATURE_DIM, NUM_FEATURES, generator=generator))
    self.register_buffer('basis', basis)

  def forward(self, images):
    features, logits = self.inception(images)
    return features @ self.basis, logits


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  return testing.write_random_inception_weights(str(tmp_path_factory.mktemp('w') / 'inception.pth'))


@pytest.fixture(scope='module')
def extractor(weights):
  return Projected(fidelity.load_inception(weights)).eval()


@pytest.fixture
def inception_calls(extractor):
  """Returns a list that gains one entry per forward call of the Inception network (a torch forward hook)."""
  calls = []
  hook = extractor.inception.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
  yield calls
  hook.remove()


def direct_features(extractor, images: torch.Tensor, output: int = 0) -> torch.Tensor:
  """Returns the extractor's float64 features (output 0; 1: logits) of the images, in one call."""
  with torch.inference_mode():
    return extractor(images)[output].double()


@pytest.fixture(scope='module')
def reference_set(extractor):
  """Returns (the reference set of 10 images' features, those features as a tensor)."""
  features = direct_features(extractor, uint8_images(10, 16, seed=1))
  return reference.make_reference(features.numpy()), features


def evaluate(extractor, ref, images: torch.Tensor, names, batch: int = 4, **options) -> dict:
  """Returns the Evaluator's result for the images, streamed in batches."""
  scorer = evaluator.Evaluator(extractor, ref, metrics=names, progress=False, **options)
  for chunk in torch.split(images, batch):
    scorer.update(chunk)
  return scorer.result()


KNOWN = 'fid, kid, ms_ssim, artefacts, isc, prc'


# The registry.

def test_registry_holds_every_plugin_module_of_the_package():
  assert list(metrics.REGISTRY) == ['fid', 'kid', 'ms_ssim', 'artefacts', 'isc', 'prc']  # the default ones first
  assert metrics.DEFAULT == ('fid', 'kid', 'ms_ssim')  # what runs evaluated before config.eval.metrics: fixed
  modules = {m.name for m in pkgutil.iter_modules(metrics.__path__) if not m.name.startswith('_')}
  assert {cls.__module__.rsplit('.', 1)[1] for cls in metrics.REGISTRY.values()} == modules
  assert metrics.required_keys(metrics.DEFAULT) == ('fid', 'kid_mean', 'kid_std', 'ms_ssim')


def test_unknown_metric_is_one_line_listing_the_known():
  with pytest.raises(ValueError) as error:
    metrics.get('fdi')
  assert str(error.value) == f"unknown metric 'fdi'; known: {KNOWN}"
  with pytest.raises(ValueError, match='^unknown metric'):
    evaluator.Evaluator(None, None, metrics=('ms_ssim', 'fdi'))


def test_the_registry_imports_without_torch():
  program = os.path.join(runs.ROOT, 'tests', 'programs', 'registry_without_torch.py')
  result = subprocess.run([sys.executable, program], cwd=runs.ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == '[]'


# Each plug-in against torch-fidelity and torchmetrics.

def test_fid_kid_is_and_pr_equal_torch_fidelitys_on_the_same_features(extractor, reference_set):
  ref, ref_features = reference_set
  # 12 samples in IS's 10 splits: two splits hold 2 samples, so IS > 1 and its std > 0 (9 samples in 9 splits
  # scored 1 ± 0 whatever the logits: a comparison of numerical zeros).
  images = uint8_images(12, 16, seed=2)
  scorer = evaluator.Evaluator(extractor, ref, metrics=('fid', 'kid', 'isc', 'prc'), kid_subsets=5, seed=3,
                               progress=False)
  for chunk in torch.split(images, 4):
    scorer.update(chunk)
  result = scorer.result()
  with torch.inference_mode():  # one pass of all 12: Inception's float32 output may differ by an ulp from batches of 4
    features, logits = (output.double() for output in extractor(images))
  isc = metric_isc.isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=3)
  theirs = np.array([isc[metric_isc.KEY_METRIC_ISC_MEAN] - 1, isc[metric_isc.KEY_METRIC_ISC_STD]])
  assert theirs.min() > 1e-5, theirs  # IS - 1 and its std are ~1e-4 here: not numerical zero
  # Both are quadratic in the logits' differences within a split (~1e-2): an ulp of the logits (~6e-8) moves them
  # by ~1e-5 of themselves at most; the wrong shuffle or split moves them by ~50%.
  np.testing.assert_allclose([result['is_mean'] - 1, result['is_std']], theirs, rtol=1e-5)
  prc = metric_prc.prc_features_to_metric(features, ref_features, prc_neighborhood=3, verbose=False)
  assert (result['precision'], result['recall']) == (prc['precision'], prc['recall'])
  fid = metric_fid.fid_statistics_to_metric(metric_fid.fid_features_to_statistics(features),
                                            metric_fid.fid_features_to_statistics(ref_features), verbose=False)
  kid = metric_kid.kid_features_to_metric(features, ref_features, kid_subsets=5, kid_subset_size=10, rng_seed=3,
                                          verbose=False)
  # FID and KID (~1e-4; KID's mean may be 0) are quadratic in the features: an ulp of each (eps32 * scale) moves them
  # by ~NUM_FEATURES * scale * eps32 * scale (~5e-8) at most, an absolute bound.
  atol = NUM_FEATURES * np.finfo(np.float32).eps * float(features.abs().max()) ** 2
  np.testing.assert_allclose(result['fid'], fid[metric_fid.KEY_METRIC_FID], rtol=1e-6, atol=atol)
  np.testing.assert_allclose(result['kid_mean'], kid[metric_kid.KEY_METRIC_KID_MEAN], rtol=1e-6, atol=atol)
  np.testing.assert_allclose(result['kid_std'], kid[metric_kid.KEY_METRIC_KID_STD], rtol=1e-6, atol=atol)
  assert (result['kid_subset_size'], result['num_samples'], result['num_reference']) == (10, 12, 10)
  assert 'ms_ssim' not in result
  settings = scorer.settings()
  assert settings['kid'] | settings['isc'] | settings['prc'] == {
      'subsets': 5, 'subset_size': 10, 'seed': 3, 'kernel': 'poly', 'degree': 3, 'gamma': '1 / feature dim',
      'coef0': 1, 'splits': 10, 'layer': 'logits_unbiased', 'neighborhood': 3, 'feature_layer': '2048',
      'feature_dtype': 'float32', 'reference_used': 10, 'reference_available': 10, 'subsample_seed': 3,
      'distance_rows_per_block': 5000}
  json.dumps(settings)  # evaluations record them in their JSON


def torchmetrics_ms_ssim(images: torch.Tensor, others: torch.Tensor, first, second) -> float:
  """Returns torchmetrics' mean MS-SSIM of the pairs (images[first[k]], others[second[k]]) at 32 px."""
  settings = ms_ssim.settings_for(32)
  return multiscale_structural_similarity_index_measure(
      images[first].float(), others[second].float(), kernel_size=settings.kernel_size, sigma=settings.sigma,
      betas=settings.betas, data_range=255.0).item()


def test_ms_ssim_equals_torchmetrics_on_the_reservoir_and_against_reference_images():
  images, ref_images = uint8_images(10, 32, seed=4), uint8_images(5, 32, seed=5)
  ref = reference.make_reference(np.random.default_rng(0).normal(size=(5, NUM_FEATURES)), images=ref_images)
  result = evaluate(None, ref, images, ('ms_ssim',), batch=4, ms_ssim_pairs=40, ms_ssim_images=6, seed=7)
  first, second = ms_ssim.random_pairs(6, 40, seed=7)  # the reservoir: the first 6 samples
  # MS-SSIM of unrelated images is near 0 (~0.08 here), a product of float32 factors of scale 1 that batches of
  # other sizes may round apart: an absolute floor of 1e-6 (~8 ulps of 1) beside the relative tolerance.
  np.testing.assert_allclose(result['ms_ssim'], torchmetrics_ms_ssim(images, images, first, second), rtol=1e-6,
                             atol=1e-6)
  rng = np.random.default_rng(7)
  first, second = rng.integers(0, 6, 40), rng.integers(0, 5, 40)
  np.testing.assert_allclose(result['ms_ssim_vs_reference'], torchmetrics_ms_ssim(images, ref_images, first, second),
                             rtol=1e-6, atol=1e-6)
  assert (result['num_samples'], result['num_reference']) == (10, 5)


# What the plug-ins share, and what they leave alone.

def test_fid_kid_is_and_pr_run_inception_once_per_batch(extractor, reference_set, inception_calls):
  images = uint8_images(6, 16, seed=6)
  scorer = evaluator.Evaluator(extractor, reference_set[0], metrics=('fid', 'kid', 'isc', 'prc'), progress=False)
  for chunk in torch.split(images, 3):
    scorer.update(chunk)
  assert inception_calls == [3, 3]
  again = images[:3]
  scorer.update(again)
  scorer.update(again)  # the same tensor object again is a new batch: counted, not skipped
  assert inception_calls == [3, 3, 3, 3]
  np.testing.assert_allclose(scorer.context.features(), direct_features(extractor, torch.cat([images, again, again])),
                             rtol=1e-5, atol=1e-6)


def test_ms_ssim_alone_neither_needs_inception_nor_computes_the_reference():
  def no_reference():
    raise AssertionError('the reference was computed')
  result = evaluate(None, no_reference, uint8_images(4, 16, seed=8), ('ms_ssim',), ms_ssim_pairs=6)
  assert set(result) == {'ms_ssim', 'num_samples'}


def tiny_config(**eval_overrides):
  """Returns tests/configs/tiny.py's config with the given eval.* values."""
  return runs.tiny_config({f'eval.{key}': value for key, value in eval_overrides.items()})


def test_evaluation_with_ms_ssim_alone_loads_no_inception():
  from ddpm_jax.run import build as components_lib  # pylint: disable=g-import-not-at-top  # only this test builds
  config = runs.tiny_config({'eval.every_steps': 4, 'eval.metrics': ('ms_ssim',), 'eval.num_samples': 4,
                             'eval.inception_weights': '/nowhere/weights.pth', 'eval.batch_size': 4,
                             'eval.sampling.num_steps': 3, 'eval.ms_ssim_pairs': 6})
  evaluation.check_setup(config)  # the weights don't exist, and needn't
  components = components_lib.build(config)
  run = evaluation.Evaluation(config, components)  # loading Inception from /nowhere would fail
  state = components_lib.initial_state(config, components)
  result = run.evaluate(state.ema_params, state.rng)  # the reference needs Inception: it was not computed
  assert run.extractor is None and set(metrics.required_keys(('ms_ssim',))) <= set(result)
  # The sampler's settings after the count are evaluation's (tests/test_evaluation.py); the metrics' part is ours.
  assert run.summary(4, result).startswith(f'step 4: MS-SSIM {result["ms_ssim"]:.4f}  (n=4, dpmpp_2m 3 steps')
  with pytest.raises(ValueError, match="eval.inception_weights='/nowhere/weights.pth' does not exist"):
    evaluation.check_setup(tiny_config(every_steps=4, metrics=('kid',), inception_weights='/nowhere/weights.pth'))


# The rest of the project reads the registry.

def test_summary_line_of_the_default_metrics():
  result = {'fid': 12.3449, 'kid_mean': 0.01234, 'kid_std': 0.001, 'ms_ssim': 0.12341, 'num_samples': 8,
            'sampler': 'ddim', 'sampling_steps': 5, 'variance': 'beta_tilde'}
  assert evaluation.summary(4, result).startswith(
      'step 4: FID 12.34  KID 0.0123 ± 0.0010  MS-SSIM 0.1234  (n=8, ddim 5 steps')
  # KID at small n, where every subset holds every sample: no '± 0.0000'.
  assert 'KID 0.01234 (no spread at this n)  MS-SSIM' in evaluation.summary(4, {**result, 'kid_std': 0.0})
  # KID's std when every subset holds every sample, as torch-fidelity computes it: rounding, not spread.
  assert 'KID 0.01234 (no spread at this n)  MS-SSIM' in evaluation.summary(4, {**result, 'kid_std': 3.7e-16})


@pytest.mark.parametrize('names, message', [
    (('fdi',), f"eval.metrics: unknown metric 'fdi'; known: {KNOWN}"),
    ((), f'eval.metrics: no metric chosen; known: {KNOWN}'),
    ('fid,kid', "eval.metrics='fid,kid' must be a tuple of strings (a tuple on the command line: "
                "--config.eval.metrics=\"('fid', 'kid')\")"),
    (('fid,kid',), f"eval.metrics: unknown metric 'fid,kid'; known: {KNOWN} (a tuple on the command line: "
                   "--config.eval.metrics=\"('fid', 'kid')\")"),
])
def test_config_with_a_bad_metric_choice_is_a_one_line_error(names, message):
  with pytest.raises(ValueError) as error:
    tiny_config(every_steps=4, metrics=names)
  assert str(error.value) == message


def test_config_with_known_metrics_validates():
  checks.validate_config(tiny_config(every_steps=4, metrics=('ms_ssim', 'kid')))


class Brightness(metrics.Metric):
  """A throwaway plug-in: the mean pixel value of the samples."""
  name = 'brightness'
  keys = ('brightness',)
  columns = (metrics.Column('Bright', '{brightness:.1f}'),)
  panels = (metrics.Panel('brightness', 'Brightness ↑'),)
  summary = 'bright {brightness:.1f}'
  lower_is_better = False

  def __init__(self, context):
    super().__init__(context)
    self.batches = []

  def update(self, images):
    self.batches.append(images.double())

  def result(self):
    return {'brightness': float(torch.cat(self.batches).mean())}


@pytest.fixture
def brightness():
  """Returns the registered Brightness plug-in; unregisters it afterwards."""
  yield metrics.register(Brightness)
  del metrics.REGISTRY[Brightness.name]


def run_of(name: str, names, evals) -> events.Run:
  """Returns a Run of the tiny config that evaluated `names` at `evals`."""
  config = workdir_lib.as_json(tiny_config(metrics=names))
  return events.Run(name, config, {'loss': {1: 1.0, 2: 0.5}}, evals, None, None)


def test_a_registered_metric_reaches_evaluator_summary_events_and_report(brightness, tmp_path):
  images = uint8_images(6, 16, seed=9)
  result = evaluate(None, None, images, ('brightness', 'ms_ssim'), ms_ssim_pairs=6)
  assert result['brightness'] == pytest.approx(images.numpy().mean())
  settings = {'sampler': 'ddim', 'sampling_steps': 5, 'variance': 'beta_tilde'}
  assert evaluation.summary(2, {**result, **settings}, ('brightness', 'ms_ssim')).startswith(
      f'step 2: MS-SSIM {result["ms_ssim"]:.4f}  bright {result["brightness"]:.1f}  (n=6, ddim 5 steps')

  (tmp_path / 'eval').mkdir()
  (tmp_path / 'eval' / 'step_2.json').write_text(json.dumps({'ms_ssim': 0.5}))
  with pytest.raises(ValueError, match=r'step_2.json lacks num_samples; an evaluation holds ms_ssim, brightness, '
                                       r'num_samples \(or all keys of some of these metrics\)$'):
    events.read_evals(str(tmp_path), {'eval': {'metrics': ['brightness', 'ms_ssim']}})
  # An evaluation from before brightness joined eval.metrics (a resumed run) is read; it lacks that metric alone.
  (tmp_path / 'eval' / 'step_2.json').write_text(json.dumps({'ms_ssim': 0.5, 'num_samples': 6}))
  assert 'brightness' not in events.read_evals(str(tmp_path), {'eval': {'metrics': ['brightness', 'ms_ssim']}})[0]

  bright = run_of('bright', ('brightness',), [{'step': s, 'brightness': b, 'num_samples': 6} for s, b in
                                               ((2, 90.0), (4, 120.0), (6, 100.0))])
  table = report.table_markdown([bright, run_of('default', metrics.DEFAULT, [])])
  header, _, bright_row, default_row = (line.strip('|').split(' | ') for line in table.splitlines()[:4])
  assert [h.strip() for h in header[6:]] == ['last eval step', 'n', 'FID', 'KID', 'MS-SSIM', 'Bright',
                                             'best-FID step', 'n', 'FID', 'KID', 'MS-SSIM', 'Bright']
  assert [c.strip() for c in bright_row[6:12]] == ['6', '6', '—', '—', '—', '100.0']
  assert [c.strip() for c in bright_row[12:]] == ['—'] * 6  # ranked by FID, which this run lacks
  assert all(c.strip() == '—' for c in default_row[6:])
  solo = report.table_markdown([bright])
  assert 'best-Bright step' in solo and '| 4 | 6 | 120.0 |' in solo and 'highest Bright' in solo  # higher is better

  figures.plot_metrics([bright, run_of('default', metrics.DEFAULT, [])], str(tmp_path / 'metrics.png'))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(tmp_path / 'metrics.png') as image:
    assert image.size[0] == 4 * 600  # four panels: FID, KID, MS-SSIM and Brightness


def test_events_require_the_keys_of_the_runs_metrics(tmp_path):
  (tmp_path / 'eval').mkdir()
  (tmp_path / 'eval' / 'step_2.json').write_text(json.dumps({'ms_ssim': 0.5, 'num_samples': 6}))
  assert events.read_evals(str(tmp_path), {'eval': {'metrics': ['ms_ssim']}})[0]['step'] == 2
  assert events.read_evals(str(tmp_path), {'eval': {}})[0]['ms_ssim'] == 0.5  # older than eval.metrics: the default
  (tmp_path / 'eval' / 'step_2.json').write_text(json.dumps({'fid': 3.0, 'kid_mean': 0.1, 'num_samples': 6}))
  with pytest.raises(ValueError, match='lacks kid_std; an evaluation holds fid, kid_mean, kid_std, '
                                       'ms_ssim, num_samples'):
    events.read_evals(str(tmp_path), {'eval': {}})  # KID in part: a damaged evaluation
  (tmp_path / 'eval' / 'step_2.json').write_text(json.dumps({'loss': 3.0, 'num_samples': 6}))
  with pytest.raises(ValueError, match='lacks fid, kid_mean, kid_std, ms_ssim; '):
    events.read_evals(str(tmp_path), {'eval': {}})  # none of the run's metrics
  with pytest.raises(ValueError, match=r"config.json: eval.metrics: unknown metric 'gone'"):
    events.read_evals(str(tmp_path), {'eval': {'metrics': ['gone']}})


# Inception Score and precision/recall on inputs whose answer is known.

class Oracle(torch.nn.Module):
  """Stands in for Inception with chosen outputs: features = channel means, logits = confidence × one-hot(pixel 0)."""

  def __init__(self, confidence: float):
    super().__init__()
    self.confidence = confidence
    self.anchor = torch.nn.Parameter(torch.zeros(1))  # unused: the Evaluator finds the device from a parameter

  def forward(self, images):
    logits = torch.nn.functional.one_hot(images[:, 0, 0, 0].long(), 1008).float() * self.confidence
    return images.float().mean(dim=(2, 3)), logits


def class_images(num: int) -> torch.Tensor:
  """Returns uint8 NCHW 8 px images whose first pixel (the Oracle's class) is their index, the rest random."""
  images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (num, 3, 8, 8), dtype=np.uint8))
  images[:, 0, 0, 0] = torch.arange(num)
  return images


def test_inception_score_of_uniform_predictions_is_one_and_of_distinct_confident_classes_their_count():
  uniform = evaluate(Oracle(confidence=0.0), None, class_images(40), ('isc',), batch=16)
  assert (uniform['is_mean'], uniform['is_std']) == (pytest.approx(1.0, abs=1e-12), pytest.approx(0.0, abs=1e-12))
  # 40 distinct classes in torch-fidelity's 10 splits: 4 distinct one-hot predictions per split, IS = 4 in each.
  images = class_images(40)
  confident = evaluate(Oracle(confidence=60.0), None, images, ('isc',), batch=16, seed=5)
  assert (confident['is_mean'], confident['is_std']) == (pytest.approx(4.0, rel=1e-9), pytest.approx(0.0, abs=1e-9))
  theirs = metric_isc.isc_features_to_metric(Oracle(60.0)(images)[1], splits=10, shuffle=True, rng_seed=5)
  assert confident['is_mean'] == pytest.approx(theirs[metric_isc.KEY_METRIC_ISC_MEAN], rel=1e-12)
  assert 'num_reference' not in confident  # IS needs no reference set


def oracle_reference(images: torch.Tensor, shift: float = 0.0) -> reference.Reference:
  """Returns a reference set of the Oracle's features of the images, shifted by `shift` in every dimension."""
  return reference.make_reference(Oracle(0.0)(images)[0].double().numpy() + shift)


def test_precision_and_recall_of_a_set_against_itself_are_one_and_against_a_far_set_zero():
  images = class_images(12)
  same = evaluate(Oracle(0.0), oracle_reference(images), images, ('prc',))
  far = evaluate(Oracle(0.0), oracle_reference(images, shift=1e4), images, ('prc',))
  assert (same['precision'], same['recall'], far['precision'], far['recall']) == (1.0, 1.0, 0.0, 0.0)
  with pytest.raises(ValueError, match=r'^generated features have shape \(3, 3\); precision and recall \(k=3\) need '
                                       r'at least 4 rows of features$'):
    evaluate(Oracle(0.0), oracle_reference(images), images[:3], ('prc',))


# The artefact metrics on constructed inputs.

def artefact_reference(images: torch.Tensor) -> reference.Reference:
  """Returns a reference set of the images' per-image statistics alone (no features: no Inception)."""
  return reference.make_reference(None, image_statistics=artefacts.per_image(images.numpy()))


def artefact_gaps(samples: torch.Tensor, ref: torch.Tensor) -> dict:
  """Returns the artefacts plug-in's result for the samples against the reference images, via the Evaluator."""
  result = evaluate(None, artefact_reference(ref), samples, ('artefacts',))
  return {key: result[key] for key in artefacts.KEYS}


def mean_luminance(images: torch.Tensor) -> float:
  """Returns the mean BT.601 luminance of uint8 NCHW RGB images."""
  return float((images.double() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1).mean())


def test_artefacts_of_the_reference_against_itself_are_none():
  images = uint8_images(8, 16, seed=20)
  assert artefact_gaps(images, images) == {'brightness_gap': 0.0, 'color_shift': 0.0, 'dark_fraction_gap': 0.0,
                                           'noise_residual': pytest.approx(1.0, rel=1e-12)}


def test_a_darkened_copy_has_the_closed_form_brightness_gap_and_only_dark_images():
  images = uint8_images(8, 16, seed=21)
  darker = (images.double() * 0.15).round().byte()  # every pixel <= 38: every image's luminance under 40
  assert min(artefacts.per_image(images.numpy())[:, 0]) >= 40  # none of the originals is dark
  gaps = artefact_gaps(darker, images)
  assert gaps['brightness_gap'] == pytest.approx(-0.85 * mean_luminance(images), abs=0.5)  # 0.5: uint8 rounding
  assert gaps['dark_fraction_gap'] == 1.0


def test_a_colour_cast_shifts_the_mean_rgb_by_the_cast_and_leaves_the_grain():
  images = (uint8_images(8, 16, seed=22).double() * 0.8 + 20).round().byte()  # 20..224: no clipping below
  cast = torch.tensor([12.0, -7.0, 4.0])
  gaps = artefact_gaps((images.double() + cast.view(1, 3, 1, 1)).byte(), images)
  assert gaps['color_shift'] == pytest.approx(np.sqrt(12 ** 2 + 7 ** 2 + 4 ** 2), rel=1e-12)
  assert gaps['brightness_gap'] == pytest.approx(0.299 * 12 - 0.587 * 7 + 0.114 * 4, rel=1e-9)
  assert gaps['noise_residual'] == pytest.approx(1.0, rel=1e-12) and gaps['dark_fraction_gap'] == 0.0


def test_added_gaussian_noise_raises_the_noise_residual():
  images = uint8_images(8, 16, seed=23)
  noise = torch.from_numpy(np.random.default_rng(0).normal(0, 12, images.shape))
  gaps = artefact_gaps((images.double() + noise).round().clamp(0, 255).byte(), images)
  assert gaps['noise_residual'] > 2 and abs(gaps['brightness_gap']) < 1
  half = images // 2  # doubling it is exact in uint8: the Laplacian doubles, its variance is 4 times the reference's
  assert artefact_gaps(half * 2, half)['noise_residual'] == pytest.approx(4.0, rel=1e-12)


def test_laplacian_variance_and_grey_images_closed_forms():
  checkerboard = (np.indices((1, 1, 6, 6)).sum(axis=0) % 2 * 255).astype(np.uint8)  # grey: the channel is the luma
  ramp = np.broadcast_to(np.arange(0, 60, 10, dtype=np.uint8), (1, 3, 6, 6))
  # Every interior pixel v of a 0/255 checkerboard has 4 neighbours 255 - v: the Laplacian is ±1020.
  np.testing.assert_allclose(artefacts.per_image(checkerboard)[0], [127.5, 127.5, 127.5, 127.5, 1020.0 ** 2])
  assert artefacts.per_image(ramp)[0, 4] == 0.0  # a linear ramp has no second derivative
  rows = lambda *luma: np.array([[value, value, value, value, 1.0] for value in luma])
  assert artefacts.gaps(rows(39.9, 40.0), rows(40.0, 41.0))['dark_fraction_gap'] == 0.5  # dark: under 40


def test_artefacts_need_no_inception_but_the_references_image_statistics():
  assert not metrics.needs_inception(('artefacts', 'ms_ssim')) and metrics.needs_image_statistics(('artefacts',))
  assert metrics.needs_reference_features(('prc',)) and not metrics.needs_reference_features(('isc', 'artefacts'))
  images = uint8_images(4, 16, seed=24)
  with pytest.raises(ValueError, match=r"^the artefacts metric needs the reference set's image statistics"):
    evaluate(None, reference.make_reference(None, images=images), images, ('artefacts',))


def test_new_metrics_reach_tensorboard_and_the_reports_table(tmp_path):
  names = ('fid', 'artefacts', 'isc', 'prc')
  result = {'fid': 9.0, 'brightness_gap': -3.25, 'color_shift': 4.5, 'dark_fraction_gap': 0.125,
            'noise_residual': 1.5, 'is_mean': 2.5, 'is_std': 0.25, 'precision': 0.75, 'recall': 0.5,
            'num_samples': 6, 'sampler': 'ddim', 'sampling_steps': 5, 'variance': 'beta_tilde'}

  class Writer:
    def write_scalars(self, step, scalars):
      self.scalars = scalars
  writer = Writer()
  evaluation.write_results(str(tmp_path), 2, result, writer, names)
  assert set(writer.scalars) == {f'eval/{key}' for key in metrics.required_keys(names) + ('num_samples',)}
  assert {'eval/brightness_gap', 'eval/is_std', 'eval/recall'} <= set(writer.scalars)
  evals = events.read_evals(str(tmp_path), {'eval': {'metrics': list(names)}})
  header, _, row = (line.strip('|').split(' | ') for line in report.table_markdown([run_of('r', names, evals)])
                    .splitlines()[:3])
  assert [h.strip() for h in header[8:16]] == ['FID', 'Δbright', 'colour', 'Δdark', 'noise', 'IS', 'Precision',
                                               'Recall']
  assert [c.strip() for c in row[8:16]] == ['9.00', '-3.2', '4.5', '+0.125', '1.50', '2.50 ± 0.25', '0.750', '0.500']
  figures.plot_metrics([run_of('r', names, evals)], str(tmp_path / 'metrics.png'))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(tmp_path / 'metrics.png') as image:
    assert image.size == (4 * 600, 2 * 450)  # 8 panels, 4 a row


def test_standin_scores_are_marked_in_tensorboard_the_summary_and_the_table(tmp_path):
  names = ('fid', 'kid', 'ms_ssim')
  result = {'fid': 1.24, 'kid_mean': 0.01, 'kid_std': 0.002, 'ms_ssim': 0.25, 'num_samples': 8, 'sampler': 'ddim',
            'sampling_steps': 5, 'variance': 'beta_tilde', 'inception_sha256': 'ab' * 32, 'standin_inception': True}
  real = {**result, 'standin_inception': False}
  assert set(evaluation.scalar_tags(result, names)) == {
      'eval_standin_inception/fid', 'eval_standin_inception/kid_mean', 'eval_standin_inception/kid_std',
      'eval/ms_ssim', 'eval/num_samples'}  # MS-SSIM needs no Inception: its tag stays
  assert set(evaluation.scalar_tags(real, names)) == {'eval/fid', 'eval/kid_mean', 'eval/kid_std', 'eval/ms_ssim',
                                                      'eval/num_samples'}
  assert evaluation.summary(2, result, names).endswith(evaluation.STANDIN_MARK)
  assert evaluation.STANDIN_MARK not in evaluation.summary(2, real, names)
  assert evaluation.STANDIN_MARK not in evaluation.summary(2, result, ('ms_ssim',))
  standin_run, real_run = (run_of(name, names, [{**evaluated, 'step': 2}])
                           for name, evaluated in (('standin', result), ('real', real)))
  lines = report.table_markdown([standin_run, real_run]).splitlines()
  standin_row, real_row = ([cell.strip() for cell in line.strip('|').split(' | ')] for line in lines[2:4])
  assert standin_row[8:11] == ['1.24†', '0.0100 ± 0.0020†', '0.2500']
  assert real_row[8:11] == ['1.24', '0.0100 ± 0.0020', '0.2500']
  assert any(line.startswith('† = scored with stand-in Inception weights') for line in lines)
  assert not any(line.startswith('†') for line in report.table_markdown([real_run]).splitlines())
