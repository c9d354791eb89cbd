"""Weights & Biases logging, offline: what the writer sends, resuming the workdir's run, process 0 alone, no package.

Each check reads back the offline run's transaction log (run-<id>.wandb), the file `wandb sync` uploads.
"""
import glob
import json
import os
import struct
import sys
import time

import numpy as np
import pytest
from PIL import Image

from ddpm_jax import cli, main, paths
from ddpm_jax.config import checks
from ddpm_jax.run import writers as wandb_writer

import runs

pytest.importorskip('wandb')  # an optional extra; CI installs it with .[test]


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
  """Keeps wandb offline, quiet and inside tmp_path; any attempt at the network would hit a closed local port."""
  for name in ('WANDB_API_KEY', 'WANDB_ENTITY', 'WANDB_PROJECT', 'WANDB_RUN_ID', 'WANDB_RESUME', 'WANDB_NAME'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_BASE_URL', 'http://127.0.0.1:9')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  monkeypatch.setenv('WANDB_CONSOLE', 'off')  # leave pytest's capture of stdout alone
  monkeypatch.setenv('WANDB_X_DISABLE_STATS', 'true')  # no system-metrics sampler to start and stop
  for name in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR', 'WANDB_ARTIFACT_DIR'):
    monkeypatch.setenv(name, str(tmp_path / 'wandb_home' / name.lower()))


# wandb's log is LevelDB's log format: 32 KiB blocks of chunks, each with a 7-byte header (CRC, length, type);
# wandb 0.2x dropped its Python reader (wandb.sdk.internal.datastore), so the tests read it themselves.
_BLOCK, _HEADER = 32 * 1024, 7
_FULL, _LAST = 1, 4


def read_records(path: str) -> list:
  """Returns the wandb_internal_pb2.Records in the offline run's transaction log, in order."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    data = f.read()
  assert data[:4] == b':W&B', f'{path} is not a wandb log'
  records, chunks, pos = [], [], _HEADER
  while pos + _HEADER <= len(data):
    if _BLOCK - pos % _BLOCK < _HEADER:  # a block's tail too short for a header is padding
      pos += _BLOCK - pos % _BLOCK
      continue
    _, length, kind = struct.unpack('<IHB', data[pos:pos + _HEADER])
    if kind == 0:
      break
    chunks.append(data[pos + _HEADER:pos + _HEADER + length])
    pos += _HEADER + length
    if kind in (_FULL, _LAST):
      records.append(wandb_internal_pb2.Record.FromString(b''.join(chunks)))
      chunks = []
  return records


def finished_log(run_dir: str, timeout_s: float = 120.0) -> list:
  """Returns the records of run_dir's log once they end with the run's exit record.

  run.finish() returns before wandb's service has flushed an offline run's log to disk. The deadline only bounds a
  failing test: a loaded 2-core machine may take far longer to flush than an idle one.
  """
  deadline = time.monotonic() + timeout_s
  while True:
    logs = glob.glob(os.path.join(run_dir, 'run-*.wandb'))
    records = read_records(logs[0]) if logs else []
    if any(record.WhichOneof('record_type') == 'exit' for record in records) or time.monotonic() > deadline:
      return records
    time.sleep(0.05)


def _items(items) -> dict:
  return {item.key or '/'.join(item.nested_key): json.loads(item.value_json) for item in items}


def offline_runs(workdir: str) -> list:
  """Returns each offline run under workdir/wandb: {'dir', 'id', 'name', 'project', 'config', 'summary', 'history'}."""
  found = []
  for run_dir in sorted(glob.glob(os.path.join(workdir, 'wandb', 'offline-run-*'))):
    run = {'dir': run_dir, 'config': {}, 'summary': {}, 'history': []}
    for record in finished_log(run_dir):
      kind = record.WhichOneof('record_type')
      if kind == 'run':
        run.update(id=record.run.run_id, name=record.run.display_name, project=record.run.project)
        run['config'].update(_items(record.run.config.update))
      elif kind == 'config':
        run['config'].update(_items(record.config.update))
      elif kind == 'summary':
        run['summary'].update(_items(record.summary.update))
      elif kind == 'history':
        run['history'].append(_items(record.history.item))
    found.append(run)
  return found


def offline_config(**logging_overrides):
  return runs.tiny_config({'logging.wandb': True, 'logging.wandb_mode': 'offline',
                          **{f'logging.{key}': value for key, value in logging_overrides.items()}})


def test_the_writer_sends_scalars_sample_grids_and_hparams_to_the_run(tmp_path):
  workdir = str(tmp_path / 'my_run')
  rgb = np.random.default_rng(0).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
  gray = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
  writer = wandb_writer.create_writer(offline_config(wandb_project='proj'), workdir, process_index=0)
  writer.write_hparams({'training.num_steps': 4, 'diffusion.schedule': 'cosine'})
  writer.write_scalars(2, {'loss': np.float32(0.5), 'learning_rate': 1e-3})
  writer.write_images(2, {'samples': rgb, 'pair': gray})
  writer.write_scalars(4, {'loss': 0.25})
  writer.close()

  [run] = offline_runs(workdir)
  assert (run['project'], run['name']) == ('proj', 'my_run')
  assert run['config']['training.num_steps'] == 4 and run['config']['diffusion.schedule'] == 'cosine'
  assert run['summary']['loss'] == 0.25 and run['summary']['step'] == 4
  rows = {(row['step'], key): row[key] for row in run['history'] for key in ('loss', 'learning_rate') if key in row}
  assert rows == {(2, 'loss'): 0.5, (2, 'learning_rate'): 1e-3, (4, 'loss'): 0.25}
  [image_row] = [row for row in run['history'] if 'samples/path' in row]
  assert image_row['step'] == 2 and len(image_row['pair/filenames']) == 2
  files = os.path.join(run['dir'], 'files')
  np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(files, image_row['samples/path']))), rgb[0])
  for name, expected in zip(image_row['pair/filenames'], gray):
    np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(files, name))), expected[..., 0])
  # The TensorBoard writer is still there.
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))


def test_a_resumed_workdir_logs_to_the_same_run(tmp_path):
  workdir = str(tmp_path / 'run')
  for step in (1, 2):
    writer = wandb_writer.create_writer(offline_config(), workdir, process_index=0)
    writer.write_scalars(step, {'loss': float(step)})
    writer.close()
  with open(paths.Workdir(workdir).wandb_run_id) as f:
    saved_id = f.read().strip()
  first, second = offline_runs(workdir)
  assert first['id'] == second['id'] == saved_id
  assert (first['summary']['loss'], second['summary']['loss']) == (1.0, 2.0)


def test_only_process_0_starts_a_run(tmp_path):
  workdir = str(tmp_path / 'run')
  writer = wandb_writer.create_writer(offline_config(), workdir, process_index=1)
  writer.write_scalars(1, {'loss': 1.0})
  writer.close()
  assert not os.path.exists(os.path.join(workdir, 'wandb'))
  assert not os.path.exists(paths.Workdir(workdir).wandb_run_id)


def test_a_tiny_training_run_leaves_an_offline_run_beside_its_event_files(tmp_path):
  workdir = str(tmp_path / 'tiny')
  runs.run(workdir, {'logging.wandb': True, 'logging.wandb_mode': 'offline'})
  [run] = offline_runs(workdir)
  assert run['summary']['step'] == 4 and np.isfinite(run['summary']['loss'])
  assert [row['step'] for row in run['history'] if 'loss' in row] == [2, 4]
  assert run['config']['model.base_channels'] == 8
  assert sum('samples/path' in row for row in run['history']) == 2  # the grids at steps 2 and 4
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))


def test_asking_for_wandb_without_the_package_is_a_one_line_user_error(monkeypatch):
  monkeypatch.setitem(sys.modules, 'wandb', None)  # what importlib sees when the package is absent
  with pytest.raises(ValueError) as raised:
    checks.validate_config(runs.tiny_config({'logging.wandb': True}))
  message = str(raised.value)
  assert 'logging.wandb' in message and "pip install -e '.[wandb]'" in message and '\n' not in message
  assert isinstance(raised.value, cli.USER_ERRORS)  # the CLI prints it on one line and exits 2
  checks.validate_config(runs.tiny_config())  # without wandb asked for, its absence doesn't matter


def test_an_unknown_wandb_mode_names_the_valid_ones():
  with pytest.raises(ValueError, match=r"logging.wandb_mode='ofline' is not one of .*'offline'"):
    runs.tiny_config({'logging.wandb_mode': 'ofline'})
