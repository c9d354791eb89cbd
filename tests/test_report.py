"""End to end: two tiny runs → the report → table.md and four figures; and the report CLI's one-line errors."""
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from clitools import ROOT
from runs import copy_run, run, tiny_config
from ddpm_jax import evaluation, figures, report
from ddpm_jax.core.models.unet import UNet, UNetConfig, count_params

# Two runs that differ in schedule, loss and model size, so a row that mixed them up would show.
RUNS = {
    'cosine_mse_tiny': {'diffusion.schedule': 'cosine', 'diffusion.loss': 'mse'},  # the tiny config's: the shared run
    'linear_mae_tiny': {'diffusion.schedule': 'linear', 'diffusion.loss': 'mae', 'model.base_channels': 12},
}
# Hand-written evaluations of the first run (Inception is too slow for this test): the best FID is not the last.
EVALS = {
    2: {'fid': 41.23456, 'kid_mean': 0.03127, 'kid_std': 0.00412, 'ms_ssim': 0.23456, 'num_samples': 24},
    4: {'fid': 55.55555, 'kid_mean': 0.04444, 'kid_std': 0.00333, 'ms_ssim': 0.31234, 'num_samples': 32},
}


def expected_params(overrides: dict) -> int:
  """Returns count_params of the run's U-Net, from its shapes."""
  config = tiny_config(overrides)
  size = config.data.image_size
  init = functools.partial(UNet(UNetConfig(**config.model)).init, train=False)
  shapes = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1,), jnp.int32))
  return count_params(shapes['params'])


@pytest.fixture(scope='module')
def workdirs(trained, tmp_path_factory):
  """Returns the workdirs of the two runs, trained 4 steps (the first is the session's shared run) and the first
  with evaluations."""
  root = tmp_path_factory.mktemp('runs')
  paths = {name: str(root / name) for name in RUNS}
  copy_run(trained, paths['cosine_mse_tiny'])
  run(paths['linear_mae_tiny'], RUNS['linear_mae_tiny'])
  settings = evaluation.settings(tiny_config(RUNS['cosine_mse_tiny']))
  for step, metrics in EVALS.items():
    evaluation.write_results(paths['cosine_mse_tiny'], step, {**settings, **metrics})
  return paths


def run_report(env, workdirs, out):
  """Returns the finished `python -m ddpm_jax.report` process."""
  return subprocess.run([sys.executable, '-m', 'ddpm_jax.report', '--workdirs', *workdirs, '--out', str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def out(workdirs, tmp_path_factory):
  """Returns the report directory of the two runs (written as `python -m ddpm_jax.report` writes it)."""
  directory = tmp_path_factory.mktemp('report') / 'study'
  report.main(['--workdirs', *workdirs.values(), '--out', str(directory)])
  return directory


def table_rows(path) -> dict[str, dict[str, str]]:
  """Returns {run: {column: cell}} of table.md; the best evaluation's columns are 'step (best)', 'FID (best)' …"""
  lines = [line for line in path.read_text().splitlines() if line.startswith('| ')]
  cells = [[cell.strip() for cell in line.strip('|').split('|')] for line in lines]
  header = []
  for name in ('step' if name.endswith(' step') else name for name in cells[0]):
    header.append(f'{name} (best)' if name in header else name)
  return {row[0]: dict(zip(header, row)) for row in cells[1:]}


def test_table_has_each_runs_size_and_training(out):
  rows = table_rows(out / 'table.md')
  assert set(rows) == set(RUNS)
  for name, overrides in RUNS.items():
    count = expected_params(overrides)
    assert rows[name]['params'] == f'{count:,}'
    assert rows[name]['fp32 size'] == f'{count * 4 / 1e6:.1f} MB'
    assert rows[name]['schedule'] == overrides['diffusion.schedule']
    assert rows[name]['loss'] == overrides['diffusion.loss']
    assert rows[name]['trained steps'] == '4 / 4'
  assert rows['cosine_mse_tiny']['params'] != rows['linear_mae_tiny']['params']


def assert_eval_cells(row: dict, suffix: str, step: int) -> None:
  """Asserts the row's cells (suffix '' = last, ' (best)' = best) show EVALS[step] at their printed precision."""
  expected = EVALS[step]
  assert row[f'step{suffix}'] == str(step)
  assert row[f'n{suffix}'] == str(expected['num_samples'])
  assert float(row[f'FID{suffix}']) == pytest.approx(expected['fid'], abs=0.005)
  kid_mean, kid_std = row[f'KID{suffix}'].split(' ± ')
  assert float(kid_mean) == pytest.approx(expected['kid_mean'], abs=5e-5)
  assert float(kid_std) == pytest.approx(expected['kid_std'], abs=5e-5)
  assert float(row[f'MS-SSIM{suffix}']) == pytest.approx(expected['ms_ssim'], abs=5e-5)


def test_table_shows_the_last_and_the_best_evaluation(out):
  row = table_rows(out / 'table.md')['cosine_mse_tiny']
  assert_eval_cells(row, '', step=4)
  assert_eval_cells(row, ' (best)', step=2)


def test_a_run_without_evaluations_shows_dashes(out):
  row = table_rows(out / 'table.md')['linear_mae_tiny']
  eval_columns = [column for column in row if column.split(' ')[0] in ('step', 'n', 'FID', 'KID', 'MS-SSIM')]
  assert len(eval_columns) == 10 and all(row[column] == report.MISSING for column in eval_columns)


@pytest.mark.parametrize('name, min_size', [('loss.png', (600, 400)), ('metrics.png', (1200, 400)),
                                            ('schedules.png', (1000, 400)), ('samples.png', (500, 300))])
def test_figures_are_readable_pngs(out, name, min_size):
  with Image.open(out / name) as image:
    assert image.format == 'PNG'
    image.verify()
  with Image.open(out / name) as image:
    pixels = np.asarray(image.convert('L'))
    assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
    assert image.size[0] <= 4000 and image.size[1] <= 4000
  assert pixels.std() > 5  # not a blank canvas


def test_loss_figure_has_a_panel_per_loss_function(out):
  # Two losses → two panels side by side: twice the width of a one-loss figure.
  with Image.open(out / 'loss.png') as image:
    assert image.size[0] >= 2 * image.size[1]


def test_missing_workdir_is_one_line_and_exit_2(env, workdirs, tmp_path):
  missing = str(tmp_path / 'no_such_run')
  result = run_report(env, [workdirs['cosine_mse_tiny'], missing], tmp_path / 'out')
  assert result.returncode == 2
  assert result.stderr.strip() == f"ddpm_jax.report: error: workdir '{missing}' does not exist"
  assert not os.path.exists(tmp_path / 'out')


def test_workdir_without_config_json_is_one_line_and_exit_2(tmp_path, capsys):
  (tmp_path / 'not_a_run').mkdir()
  with pytest.raises(SystemExit) as exit_info:
    report.main(['--workdirs', str(tmp_path / 'not_a_run'), '--out', str(tmp_path / 'out')])
  assert exit_info.value.code == 2
  error = capsys.readouterr().err.strip()
  assert error.startswith(f"ddpm_jax.report: error: workdir '{tmp_path / 'not_a_run'}' has no config.json")
  assert '\n' not in error


def test_smoothing_is_tensorboards_debiased_ema():
  np.testing.assert_allclose(figures.smooth([3.0, 3.0, 3.0], 0.9), [3.0, 3.0, 3.0])  # debiased: no pull towards 0
  # Closed form of the debiased EMA of [1, 0]: (0.9 * 0.1 * 1) / (1 - 0.81).
  np.testing.assert_allclose(figures.smooth([1.0, 0.0], 0.9), [1.0, 0.09 / 0.19])
  np.testing.assert_allclose(figures.smooth([1.0, 5.0, 2.0], 0.0), [1.0, 5.0, 2.0])
