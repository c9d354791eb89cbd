"""A class-conditional run end to end: class names in the workdir, grids of one class per row, bit-exact resume
with labels, --mode=sample's labels, the guidance sweep's JSONs, and bad input as one line, exit 2, nothing written.

One conditional run of the tiny config on the shapes (3 classes) serves every test; tests change copies of it.
"""
import glob
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from clitools import error_line
from conftest import trained_once
from ddpm_jax import cli, paths
from ddpm_jax.data import shapes
from ddpm_jax.evaluation import guidance_sweep, scores
from ddpm_jax.run import grids
from ddpm_jax.run import workdir as workdir_lib
from runs import checkpoint_steps, copy_run, digest, restore_numpy, run, tiny_config

# 6 grid samples of 3 classes: a grid of 3 rows (circle, square, triangle) of 2.
CONDITIONAL = {'model.num_classes': 3, 'training.num_grid_samples': 6}
# No Inception (artefacts only), and sampling's sampler (ddim, 5 steps, batches of 4): w = 3 compiles once for both.
SWEEP = {'eval.metrics': ('artefacts',), 'eval.num_samples': 4, 'eval.batch_size': 4, 'eval.num_reference': 8,
         'eval.sampling.sampler': 'ddim', 'eval.sampling.timestep_spacing': 'leading', 'eval.sampling.num_steps': 5}


@pytest.fixture(scope='module')
def conditional(tmp_path_factory) -> str:
  """Returns a workdir the tiny config trained 4 steps on the shapes' 3 classes (checkpoints and grids at 2, 4)."""
  return trained_once(tmp_path_factory, 'conditional', CONDITIONAL)


def test_a_conditional_run_records_its_class_names_and_draws_one_class_per_row(conditional):
  assert workdir_lib.read_class_names(conditional) == shapes.SHAPE_KINDS == ('circle', 'square', 'triangle')
  assert os.path.isfile(paths.Workdir(conditional).classes_json)
  assert restore_numpy(conditional, 4)['params']['class_embed']['embedding'].shape == (4, 32)  # 3 classes + null
  assert checkpoint_steps(conditional) == [2, 4]
  for step in (2, 4):
    grid = np.asarray(Image.open(os.path.join(conditional, 'samples', f'step_{step}.png')))
    # 3 rows of 2 samples of 8 px x 32, after a legend of the class names.
    assert grid.shape[0] == 2 + 3 * 258 and grid.shape[1] > 2 + 2 * 258


@pytest.mark.parametrize('num_classes, num_grid_samples, classes, per_class, columns', [
    (3, 6, 3, 2, 2), (101, 64, 16, 4, 4), (20, 8, 16, 1, 1), (2, 5, 2, 2, 2), (3, 64, 3, 16, 8), (10, 64, 10, 6, 6)])
def test_grid_labels_are_the_first_16_classes_in_blocks_of_rows(num_classes, num_grid_samples, classes, per_class,
                                                                columns):
  np.testing.assert_array_equal(grids.grid_labels(num_classes, num_grid_samples),
                                np.repeat(np.arange(classes), per_class))
  assert grids.grid_layout(num_classes, num_grid_samples) == (classes, per_class, columns)
  assert grids.grid_labels(0, num_grid_samples) is None  # an unconditional grid: as many samples as asked


def test_resume_with_labels_is_bit_exact(conditional, tmp_path):
  resumed = copy_run(conditional, tmp_path / 'resumed')
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '4'))
  run(resumed, CONDITIONAL)
  assert checkpoint_steps(resumed) == [2, 4]
  assert digest(resumed, 4) == digest(conditional, 4)


def test_sample_mode_writes_the_labels_beside_the_images(conditional, tmp_path, capsys):
  workdir = copy_run(conditional, tmp_path / 'sampled')
  run(workdir, {**CONDITIONAL, 'sampling.labels': ('square', 0), 'sampling.guidance_scale': 3.0}, mode='sample')
  assert 'Wrote 6 samples of 2 classes of step 4' in capsys.readouterr().out
  npz = glob.glob(os.path.join(workdir, 'samples', 'sample_step_4_*.npz'))
  assert [os.path.basename(path) for path in npz] == ['sample_step_4_ddim5_cfg3.npz']  # w in the name
  with np.load(npz[0]) as arrays:
    assert sorted(arrays.files) == ['images', 'labels']
    assert arrays['images'].shape == (6, 8, 8, 3) and arrays['images'].dtype == np.uint8
    assert arrays['labels'].dtype == np.int32 and list(arrays['labels']) == [1, 0, 1, 0, 1, 0]  # cycled


def test_the_guidance_sweep_writes_one_json_per_w_each_recording_it(conditional, tmp_path, capsys):
  workdir = copy_run(conditional, tmp_path / 'swept')
  sweep = {**CONDITIONAL, **SWEEP, 'eval.reference_cache_dir': str(tmp_path / 'cache'),
           'eval.guidance_scales': (0.0, 3.0)}
  run(workdir, sweep, mode='eval', checkpoint_step=4)
  stdout = capsys.readouterr().out
  assert 'guidance w 0)' in stdout and 'guidance w 3)' in stdout
  assert not os.path.exists(paths.Workdir(workdir).eval_file(4))  # eval.guidance_scale's evaluation is another file
  written = sorted(os.listdir(os.path.join(workdir, 'eval', 'guidance')))
  assert written == ['step_4_w_0.json', 'step_4_w_3.json']
  residuals = set()
  for w in (0.0, 3.0):
    with open(guidance_sweep.guidance_eval_file(workdir, 4, w)) as f:
      result = json.load(f)
    assert (result['step'], result['guidance_scale'], result['guidance_interval']) == (4, w, [])
    assert (result['num_classes'], result['labels'], result['num_samples'], result['sampler']) == \
        (3, 'balanced', 4, 'ddim')
    residuals.add(result['noise_residual'])
  assert len(residuals) == 2  # each w sampled its own images


def test_only_conditional_evaluations_record_guidance_and_its_interval():
  unconditional = scores.settings(tiny_config())
  assert not {'guidance_scale', 'guidance_interval', 'num_classes', 'labels'} & set(unconditional)
  guided = scores.settings(tiny_config({**CONDITIONAL, 'eval.guidance_scale': 2.0, 'eval.guidance_interval': (10, 90)}))
  assert (guided['guidance_scale'], guided['guidance_interval'], guided['labels']) == (2.0, [10, 90], 'balanced')
  assert {k: v for k, v in guided.items() if k in unconditional} == unconditional
  assert scores.settings(tiny_config(CONDITIONAL), guidance_scale=4.0)['guidance_scale'] == 4.0
  assert scores.sampler_summary(guided) == 'dpmpp_2m 20 steps, logsnr, guidance w 2 at t 10-90'
  assert scores.sampler_summary(unconditional) == 'dpmpp_2m 20 steps, logsnr'


def files_and_times(root) -> dict:
  """Returns {path: mtime} of everything under root ({} if it does not exist)."""
  return {p: os.path.getmtime(p) for p in glob.glob(os.path.join(str(root), '**'), recursive=True)
          if os.path.exists(p)}


def unlabelled_folder(root) -> str:
  """Returns a folder of 4 PNGs directly in it: images without classes."""
  os.makedirs(root)
  for i in range(4):
    Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(os.path.join(root, f'{i}.png'))
  return str(root)


@pytest.mark.parametrize('mode, overrides, message', [
    ('train', {'sampling.guidance_scale': 3.0}, 'sampling.guidance_scale'),
    ('train', {**CONDITIONAL, 'training.label_dropout': 1.0}, 'training.label_dropout'),
    ('train', {'model.num_classes': 5}, 'model.num_classes=5'),
    ('train', {'model.num_classes': 2, 'data.dataset': 'folder:UNLABELLED'}, 'class subfolders'),
    ('train', {**CONDITIONAL, 'sampling.labels': ('hexagon',)}, "'hexagon'"),
    ('sample', {**CONDITIONAL, 'sampling.labels': ('square', 'hexagon')}, "'hexagon'"),
    ('sample', {**CONDITIONAL, 'sampling.labels': (1, 3)}, '3'),
    ('train', {'eval.guidance_scales': (1.0, 3.0)}, 'eval.guidance_scales'),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(conditional, tmp_path, capsys, mode, overrides, message):
  overrides = {k: v.replace('UNLABELLED', unlabelled_folder(tmp_path / 'unlabelled')) if k == 'data.dataset' else v
               for k, v in overrides.items()}
  # Training starts a new workdir (unconditional unless the overrides say otherwise); sample reads the conditional run.
  workdir = tmp_path / 'new' if mode == 'train' else conditional
  before = files_and_times(workdir) if mode == 'sample' else {}
  capsys.readouterr()
  with pytest.raises(SystemExit) as exited:
    with cli.one_line_errors('ddpm_jax'):
      run(workdir, overrides, mode=mode, checkpoint_step=None if mode == 'train' else 4)
  assert exited.value.code == 2
  stderr = capsys.readouterr().err
  assert message in error_line(stderr) and 'Traceback' not in stderr, stderr
  assert files_and_times(workdir) == before  # a new workdir is not even made
