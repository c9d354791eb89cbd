"""Evaluation in runs, offline: eval/* scalars in training, --mode=eval JSONs, fail-fast start-up."""
import glob
import json
import os

import pytest

from ddpm_jax.events import scalars
from eval_bridge import testing
from runs import run

EVAL = {'eval.every_steps': 4, 'eval.num_samples': 8, 'eval.batch_size': 4, 'eval.num_reference': 8,
        'eval.sampling_steps': 3, 'eval.ms_ssim_pairs': 6}


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


def test_training_writes_eval_scalars_and_json(evaluated):
  workdir, cache = evaluated
  logged = scalars(workdir)
  for key in ('eval/fid', 'eval/kid_mean', 'eval/kid_std', 'eval/ms_ssim', 'eval/num_samples'):
    assert set(logged[key]) == {4}, key
  assert logged['eval/num_samples'][4] == 8
  with open(os.path.join(workdir, 'eval', 'step_4.json')) as f:
    result = json.load(f)
  assert result['fid'] == pytest.approx(logged['eval/fid'][4], rel=1e-6) and result['fid'] > 0
  assert 0 < result['ms_ssim'] <= 1
  assert (result['sampler'], result['sampling_steps'], result['variance'], result['num_samples']) == \
      ('ddim', 3, 'beta_tilde', 8)
  assert len(glob.glob(os.path.join(cache, '*', '*.npz'))) == 1  # reference features cached once


def test_eval_mode_writes_one_json_per_checkpoint(evaluated, weights, capsys):
  workdir, cache = evaluated
  os.remove(os.path.join(workdir, 'eval', 'step_4.json'))
  run(workdir, {**EVAL, 'eval.inception_weights': weights, 'eval.reference_cache_dir': cache}, mode='eval',
      checkpoint_step=4)
  stdout = capsys.readouterr().out
  assert 'step 4: FID' in stdout and '(n=8, ddim 3 steps, beta_tilde)' in stdout
  with open(os.path.join(workdir, 'eval', 'step_4.json')) as f:
    assert json.load(f)['num_samples'] == 8


def test_missing_weights_fail_before_training(tmp_path):
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError) as failed:
    run(workdir, {**EVAL, 'eval.inception_weights': '/nowhere/weights.pth'})
  error = str(failed.value)
  assert "eval.inception_weights='/nowhere/weights.pth' does not exist" in error and 'eval.every_steps=0' in error
  assert '\n' not in error
  assert not workdir.exists()  # nothing was trained or written
