"""config.json: what may change between runs of one workdir, and what is refused."""
import glob
import json
import os

import pytest

from ddpm_jax.config import convert, schema
from ddpm_jax.run import workdir as workdir_lib


def config(**overrides):
  return convert.with_values(schema.Config(), {key.replace('__', '.'): value for key, value in overrides.items()})


def test_first_start_writes_config_json(tmp_path):
  assert workdir_lib.check_config(str(tmp_path), config(), has_checkpoints=False) == {}
  workdir_lib.record_config(str(tmp_path), config(), {})
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['model']['channel_mults'] == [1, 2, 3, 3]


@pytest.mark.parametrize('overrides', [
    {'model__base_channels': 64}, {'diffusion__schedule': 'cosine'}, {'diffusion__loss': 'mae'},
    {'data__image_size': 32}, {'training__learning_rate': 1e-4}, {'training__batch_size': 128}])
def test_a_change_to_what_is_trained_is_refused_with_the_differences(tmp_path, overrides):
  workdir_lib.record_config(str(tmp_path), config(), {})
  before = (tmp_path / 'config.json').read_text()
  key, value = next(iter(overrides.items()))
  name = key.replace('__', '.')
  old = getattr(getattr(schema.Config(), key.split('__')[0]), key.split('__')[1])
  with pytest.raises(ValueError, match='in what it trains') as error:
    workdir_lib.check_config(str(tmp_path), config(**overrides), has_checkpoints=True)
  assert f'{name}: {old!r} -> {value!r}' in str(error.value) and '--allow_config_change' in str(error.value)
  assert (tmp_path / 'config.json').read_text() == before
  assert glob.glob(str(tmp_path / '*')) == [str(tmp_path / 'config.json')]


def test_allowed_or_free_changes_go_through_and_keep_the_old_config(tmp_path):
  workdir_lib.record_config(str(tmp_path), config(), {})
  before = (tmp_path / 'config.json').read_text()
  free = config(training__num_steps=10, eval__every_steps=0, sampling__sampler='ddim')
  changes = workdir_lib.check_config(str(tmp_path), free, has_checkpoints=True)
  assert set(changes) == {'training.num_steps', 'eval.every_steps', 'sampling.sampler'}
  workdir_lib.record_config(str(tmp_path), free, changes)
  assert json.loads((tmp_path / 'config.json').read_text())['training']['num_steps'] == 10
  kept = glob.glob(str(tmp_path / 'config.*Z.json'))
  assert len(kept) == 1 and open(kept[0]).read() == before
  trained = config(training__num_steps=10, eval__every_steps=0, sampling__sampler='ddim', model__dropout=0.0)
  assert set(workdir_lib.check_config(str(tmp_path), trained, has_checkpoints=True, allow_change=True)) == {
      'model.dropout'}


def test_without_checkpoints_any_change_is_allowed(tmp_path):
  workdir_lib.record_config(str(tmp_path), config(), {})
  assert 'model.base_channels' in workdir_lib.check_config(str(tmp_path), config(model__base_channels=64),
                                                           has_checkpoints=False)


def test_config_changes_sees_added_and_removed_keys():
  changes = workdir_lib.config_changes({'a': {'b': 1, 'gone': 2}}, {'a': {'b': 1, 'new': 3}})
  assert changes == {'a.gone': (2, '<absent>'), 'a.new': ('<absent>', 3)}
  assert workdir_lib.is_free('eval.num_samples') and workdir_lib.is_free('training.num_steps')
  assert not workdir_lib.is_free('training.num_steps_extra') and not workdir_lib.is_free('seed')


def test_unwritable_workdir_is_one_line(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(PermissionError, match=f"workdir '{blocker}/run' is not writable"):
    workdir_lib.check_writable(str(blocker / 'run'))
  assert os.path.isfile(blocker)


def test_a_key_added_by_a_newer_version_does_not_block_resuming(tmp_path):
  old = workdir_lib.as_json(config())
  del old['data']['on_device']
  with open(os.path.join(tmp_path, 'config.json'), 'w') as f:
    json.dump(old, f)
  changes = workdir_lib.check_config(str(tmp_path), config(), has_checkpoints=True)
  assert changes == {'data.on_device': ('<absent>', False)}
