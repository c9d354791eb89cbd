"""Evaluation in runs, offline: eval/* scalars in training, --mode=eval JSONs, fail-fast start-up."""
import glob
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_jax.config import convert
from ddpm_jax.evaluation import scores as evaluation
from ddpm_jax.reporting.runs import scalars
from ddpm_jax.run import build as components
from ddpm_jax.run import modes
from eval_bridge import testing
from runs import ROOT, run, tiny_config

# DDIM (not the default DPM-Solver++): its summary names eta and the spacing, which the tests check.
EVAL = {'eval.every_steps': 4, 'eval.num_samples': 8, 'eval.batch_size': 4, 'eval.num_reference': 8,
        'eval.sampling.sampler': 'ddim', 'eval.sampling.timestep_spacing': 'leading', 'eval.sampling.num_steps': 3,
        'eval.ms_ssim_pairs': 6}


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  return testing.write_random_inception_weights(str(tmp_path_factory.mktemp('inception') / 'weights.pth'))


@pytest.fixture(scope='module')
def evaluated(weights, tmp_path_factory):
  """Returns a workdir trained 4 steps with an evaluation at step 4, and the reference cache."""
  workdir = str(tmp_path_factory.mktemp('eval_run') / 'tiny')
  cache = str(tmp_path_factory.mktemp('reference_cache'))
  run(workdir, {**EVAL, 'eval.inception_weights': weights, 'eval.reference_cache_dir': cache})
  return workdir, cache


def test_training_writes_eval_scalars_and_json(evaluated, weights):
  workdir, cache = evaluated
  logged = scalars(workdir)
  # Stand-in Inception's scores are tagged apart from eval/, which keeps what Inception plays no part in.
  for key in ('eval_standin_inception/fid', 'eval_standin_inception/kid_mean', 'eval_standin_inception/kid_std',
              'eval/ms_ssim', 'eval/num_samples'):
    assert set(logged[key]) == {4}, key
  assert 'eval/fid' not in logged and logged['eval/num_samples'][4] == 8
  with open(os.path.join(workdir, 'eval', 'step_4.json')) as f:
    result = json.load(f)
  assert (result['inception_sha256'], result['standin_inception']) == (hashlib.sha256(open(weights, 'rb').read())
                                                                       .hexdigest(), True)
  assert result['fid'] == pytest.approx(logged['eval_standin_inception/fid'][4], rel=1e-6) and result['fid'] > 0
  assert 0 < result['ms_ssim'] <= 1
  assert (result['sampler'], result['sampling_steps'], result['variance'], result['num_samples']) == \
      ('ddim', 3, 'beta_tilde', 8)
  assert len(glob.glob(os.path.join(cache, '*.npz'))) == 2  # reference features and image statistics, cached once


def test_eval_mode_writes_one_json_per_checkpoint(evaluated, weights, capsys):
  workdir, cache = evaluated
  os.remove(os.path.join(workdir, 'eval', 'step_4.json'))
  run(workdir, {**EVAL, 'eval.inception_weights': weights, 'eval.reference_cache_dir': cache}, mode='eval',
      checkpoint_step=4)
  stdout = capsys.readouterr().out
  assert 'step 4: FID' in stdout and '(n=8, ddim 3 steps, eta 1, leading)' in stdout  # quickstart's sampling.eta
  assert evaluation.STANDIN_MARK in stdout
  with open(os.path.join(workdir, 'eval', 'step_4.json')) as f:
    assert json.load(f)['num_samples'] == 8


def test_missing_weights_fail_before_training(tmp_path):
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError) as failed:
    run(workdir, {**EVAL, 'eval.inception_weights': '/nowhere/weights.pth'})
  error = str(failed.value)
  assert "eval.inception_weights='/nowhere/weights.pth' does not exist" in error and 'eval.every_steps=0' in error
  assert '\n' not in error and 'python -m eval_bridge.testing' in error
  assert not workdir.exists()  # nothing was trained or written
  with pytest.raises(ValueError) as failed:  # --mode=eval's check: every_steps means nothing there
    evaluation.check_setup(tiny_config({'eval.inception_weights': '/nowhere/weights.pth'}), force=True)
  assert 'python -m eval_bridge.testing' in str(failed.value) and 'every_steps' not in str(failed.value)


@pytest.mark.parametrize('sampler,settings', [
    ('ddpm', 'ddpm 1000 steps, beta'), ('ddim', 'ddim 1000 steps, eta 0.5, trailing'),
    ('dpmpp_2m', 'dpmpp_2m 1000 steps, trailing'), ('heun', 'heun 1000 steps, trailing')])
def test_summary_names_only_the_settings_its_sampler_reads(sampler, settings):
  result = {'ms_ssim': 0.25, 'num_samples': 8, 'sampler': sampler, 'sampling_steps': 1000, 'variance': 'beta',
            'eta': 0.5, 'timestep_spacing': 'trailing'}
  assert evaluation.summary(4, result, ('ms_ssim',)) == f'step 4: MS-SSIM 0.2500  (n=8, {settings})'


def test_reference_features_are_cached_by_content_across_processes(env, weights, tmp_path):
  folder, cache = tmp_path / 'images', tmp_path / 'cache'
  folder.mkdir()
  for index in range(6):
    Image.fromarray(np.full((8, 8, 3), 40 * index, np.uint8)).save(folder / f'{index}.png')
  overrides = {'data.dataset': f'folder:{folder}', 'data.data_dir': str(tmp_path / 'data'),
               'eval.inception_weights': weights, 'eval.reference_cache_dir': str(cache), 'eval.num_reference': 6}

  def reference_in_a_new_process(**changes):
    # As a second evaluation would: a process of its own, with other string hashes.
    program = os.path.join(ROOT, 'tests', 'programs', 'reference_features.py')
    result = subprocess.run([sys.executable, program, json.dumps({**overrides, **changes})], cwd=ROOT,
                            env={**env, 'PYTHONHASHSEED': 'random'}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {path: os.path.getmtime(path) for path in glob.glob(os.path.join(cache, '*.npz'))}

  config = tiny_config(overrides)
  config = convert.with_values(config, {'eval.metrics': ('fid',)})
  evaluation.Evaluation(config, components.build(config)).reference()
  first = {path: os.path.getmtime(path) for path in glob.glob(os.path.join(cache, '*.npz'))}
  assert len(first) == 1
  assert reference_in_a_new_process() == first  # found by the other process, not recomputed
  other_weights = testing.write_random_inception_weights(str(tmp_path / 'other.pth'), seed=1)
  config = convert.with_values(config, {'eval.inception_weights': other_weights})
  evaluation.Evaluation(config, components.build(config)).reference()
  assert len(glob.glob(os.path.join(cache, '*.npz'))) == 2
  Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(folder / '0.png')  # the folder's content changes
  evaluation.Evaluation(config, components.build(config)).reference()
  assert len(glob.glob(os.path.join(cache, '*.npz'))) == 3


def test_the_paper_protocol_scores_ddpm_over_all_steps_against_the_whole_train_split(evaluated, weights, tmp_path):
  workdir, _ = evaluated
  folder = tmp_path / 'images'
  folder.mkdir()
  for index in range(6):
    Image.fromarray(np.full((8, 8, 3), 40 * index, np.uint8)).save(folder / f'{index}.png')
  config = tiny_config({**EVAL, 'data.dataset': f'folder:{folder}', 'data.data_dir': str(tmp_path / 'data'),
                        'eval.inception_weights': weights, 'eval.reference_cache_dir': str(tmp_path / 'cache'),
                        'eval.protocol': 'paper', 'eval.paper_num_samples': 4})
  config = convert.with_values(config, {'eval.metrics': ('fid', 'ms_ssim')})
  state = modes.open_trained_run(config, workdir, allow_config_change=True).restore()
  scoring = evaluation.Evaluation(config, components.build(config))
  tf32_during_inception = []
  scoring.extractor.register_forward_pre_hook(
      lambda *_: tf32_during_inception.append((torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())))
  before = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
  result = scoring.evaluate(state.ema_params, state.rng)
  assert (result['protocol'], result['reference_split'], result['num_reference']) == ('paper', 'train', 6)
  assert (result['num_samples'], result['sampler'], result['sampling_steps']) == (4, 'ddpm', 100)
  assert result['metric_settings']['ms_ssim']['pairs'] == 6
  assert tf32_during_inception and set(tf32_during_inception) == {(False, 'highest')}
  assert (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()) == before
  assert evaluation.summary(4, result, config.eval.metrics).endswith(
      f'vs train (6), paper protocol  {evaluation.STANDIN_MARK}')  # stand-in weights: marked
