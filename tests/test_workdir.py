"""config.json: what may change between runs of one workdir, and what is refused."""
import glob
import importlib.util
import json
import os
import urllib.error
import urllib.request

import pytest

import runs
from ddpm_jax.config import checks, convert, schema
from ddpm_jax.run import workdir as workdir_lib


def config(**overrides):
  return convert.with_values(schema.Config(), {key.replace('__', '.'): value for key, value in overrides.items()})


def test_first_start_writes_config_json(tmp_path):
  assert workdir_lib.check_config(str(tmp_path), config(), has_checkpoints=False) == {}
  workdir_lib.record_config(str(tmp_path), config(), {})
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['model']['channel_mults'] == [1, 2, 3, 3]


@pytest.mark.parametrize('overrides', [
    {'model__base_channels': 64}, {'diffusion__schedule': 'linear'}, {'diffusion__loss': 'mae'},
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


# Failing before writing: a run that cannot start, or has nothing to do, leaves the workdir as it was.

def snapshot(root) -> dict:
  """Returns {path: (size, mtime)} of every file and folder under root."""
  return {path: (os.path.getsize(path), os.path.getmtime(path)) for path in glob.glob(f'{root}/**', recursive=True)}


def offline(request, timeout):
  raise urllib.error.URLError(OSError(-2, 'Name or service not known'))


@pytest.mark.parametrize('dataset', ['empty folder', 'folder without images', 'tfds offline'])
def test_a_dataset_that_cannot_open_fails_before_the_workdir_is_made(tmp_path, monkeypatch, dataset):
  folder = tmp_path / 'images'
  folder.mkdir()
  if dataset == 'folder without images':
    (folder / 'notes.txt').write_text('no images here')
  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  name = 'tfds:cifar10' if dataset == 'tfds offline' else f'folder:{folder}'
  with pytest.raises(ValueError, match='looks offline' if dataset == 'tfds offline' else 'holds no images'):
    runs.run(tmp_path / 'run', {'data.dataset': name, 'data.data_dir': str(tmp_path / 'data')})
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('mode', ['sample', 'eval'])
def test_sample_and_eval_create_no_workdir(tmp_path, mode):
  (tmp_path / 'empty').mkdir()
  for workdir, what in ((tmp_path / 'missing', 'does not exist'), (tmp_path / 'empty', 'holds no checkpoints')):
    with pytest.raises(FileNotFoundError, match=f'--workdir={workdir} {what}'):
      runs.run(workdir, mode=mode)
  assert not (tmp_path / 'missing').exists() and os.listdir(tmp_path / 'empty') == []


def test_a_finished_run_writes_nothing(trained, tmp_path, capsys):
  workdir = runs.copy_run(trained, tmp_path / 'run')
  before = snapshot(workdir)
  runs.run(workdir, {'training.log_every_steps': 1})  # a free change, which a run with steps left would record
  assert 'Run already finished at step 4' in capsys.readouterr().out
  assert snapshot(workdir) == before


def test_quickstart_eval_is_the_workdirs_config_with_a_small_evaluation(trained):
  spec = importlib.util.spec_from_file_location('quickstart_eval', os.path.join(runs.ROOT, 'configs',
                                                                                'quickstart_eval.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = convert.from_configdict(module.get_config(trained))
  checks.validate_config(config)
  changes = workdir_lib.check_config(trained, config, has_checkpoints=True)  # raises on a change of what is trained
  assert changes and all(key.startswith('eval.') for key in changes)
  assert (config.eval.num_samples, config.eval.num_reference) == (160, 160)


def test_class_names_are_recorded_by_label_id_and_read_back(tmp_path):
  assert workdir_lib.read_class_names(str(tmp_path)) == ()  # an unconditional run records none
  names = ('apple_pie', 'baby_back_ribs', 'crème brûlée')
  workdir_lib.write_class_names(str(tmp_path), list(names))
  with open(tmp_path / 'classes.json', encoding='utf-8') as f:
    assert json.load(f) == list(names)
  assert workdir_lib.read_class_names(str(tmp_path)) == names
  assert os.listdir(tmp_path) == ['classes.json']
  (tmp_path / 'classes.json').write_text('{"cat": 0}')
  with pytest.raises(ValueError, match='must hold a JSON list of class names') as raised:
    workdir_lib.read_class_names(str(tmp_path))
  assert '\n' not in str(raised.value)
