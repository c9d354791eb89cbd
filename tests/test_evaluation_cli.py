"""Evaluation through the CLI, offline: eval/* scalars in training, --mode=eval JSONs, fail-fast start-up."""
import glob
import json
import os

import pytest

from eval_bridge import testing
from clitools import cli
from ddpm_jax.events import scalars

EVAL_OVERRIDES = ('--config.eval.every_steps=4', '--config.eval.num_samples=8', '--config.eval.batch_size=4',
                  '--config.eval.num_reference=8', '--config.eval.sampling_steps=3', '--config.eval.ms_ssim_pairs=6')


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  return testing.write_random_inception_weights(str(tmp_path_factory.mktemp('inception') / 'weights.pth'))


@pytest.fixture(scope='module')
def evaluated(env, weights, tmp_path_factory):
  """Returns a workdir trained 4 steps with an evaluation at step 4."""
  workdir = str(tmp_path_factory.mktemp('eval_run') / 'tiny')
  cache = str(tmp_path_factory.mktemp('reference_cache'))
  result = cli(env, f'--workdir={workdir}', f'--config.eval.inception_weights={weights}',
               f'--config.eval.reference_cache_dir={cache}', *EVAL_OVERRIDES)
  assert result.returncode == 0, result.stderr[-3000:]
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


def test_eval_mode_writes_one_json_per_checkpoint(env, evaluated, weights):
  workdir, cache = evaluated
  os.remove(os.path.join(workdir, 'eval', 'step_4.json'))
  result = cli(env, f'--workdir={workdir}', '--mode=eval', '--checkpoint_step=4',
               f'--config.eval.inception_weights={weights}', f'--config.eval.reference_cache_dir={cache}',
               *EVAL_OVERRIDES)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'step 4: FID' in result.stdout and '(n=8, ddim 3 steps, beta_tilde)' in result.stdout
  with open(os.path.join(workdir, 'eval', 'step_4.json')) as f:
    assert json.load(f)['num_samples'] == 8


def test_missing_weights_fail_before_training(env, tmp_path):
  workdir = tmp_path / 'run'
  result = cli(env, f'--workdir={workdir}', '--config.eval.inception_weights=/nowhere/weights.pth',
               *EVAL_OVERRIDES)
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith('ddpm_jax: error:')]
  assert len(errors) == 1 and "eval.inception_weights='/nowhere/weights.pth' does not exist" in errors[0]
  assert 'eval.every_steps=0' in errors[0]
  assert not workdir.exists()  # nothing was trained or written
