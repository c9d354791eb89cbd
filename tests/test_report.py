"""End to end: two tiny runs → the report → table.md, five figures and report.html; the report CLI's one-line
errors; the luminance histograms from the artefacts plug-in through the evaluation JSON into luminance.png; what a
reader sees: smoothing without lag, one legend, whole axis labels, KID's meaningful digits, a warning for other n."""
import base64
import functools
import html.parser
import io
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from matplotlib.backends import backend_agg
from PIL import Image

from clitools import ROOT
from configs import ext_cosine_v_min_snr, ext_linear_offset, ext_linear_zero_snr_v, linear_mse
from runs import copy_run, run, tiny_config
from ddpm_jax import report
from ddpm_jax.evaluation import scores as evaluation
from ddpm_jax.reporting import figures
from ddpm_jax.reporting import page
from ddpm_jax.reporting import runs as events
from ddpm_jax.reporting import smoothing
from ddpm_jax.run import workdir as workdir_lib
from eval_bridge import artefacts, evaluator, reference
from ddpm_jax.core.models.unet import UNet, count_params

# Two runs that differ in schedule, loss and model size, so a row that mixed them up would show.
RUNS = {
    'cosine_mse_tiny': {'diffusion.schedule': 'cosine', 'diffusion.loss': 'mse'},  # the tiny config's: the shared run
    'linear_mae_tiny': {'diffusion.schedule': 'linear', 'diffusion.loss': 'mae', 'model.base_channels': 12},
}
# Hand-written evaluations of the first run (Inception is too slow for this test): the best FID is not the last.
EVALS = {
    2: {'fid': 41.23456, 'kid_mean': 0.03127, 'kid_std': 0.00412, 'ms_ssim': 0.23456, 'num_samples': 24,
        'brightness_gap': -12.5, 'color_shift': 8.25, 'dark_fraction_gap': 0.125, 'noise_residual': 1.75},
    4: {'fid': 55.55555, 'kid_mean': 0.04444, 'kid_std': 0.00333, 'ms_ssim': 0.31234, 'num_samples': 32,
        'brightness_gap': 3.5, 'color_shift': 2.5, 'dark_fraction_gap': -0.0625, 'noise_residual': 1.125,
        artefacts.HISTOGRAM: {'range': [0, 255], 'samples': [4, 6, 8, 6, 4, 2, 1, 1] + [0] * 24,
                              'reference': [1, 2, 3, 4, 5, 4, 3, 2] + [1] * 24}},
}


def expected_params(overrides: dict) -> int:
  """Returns count_params of the run's U-Net, from its shapes."""
  config = tiny_config(overrides)
  size = config.data.image_size
  init = functools.partial(UNet(config.model).init, train=False)
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
                                            ('schedules.png', (1000, 400)), ('luminance.png', (500, 350)),
                                            ('samples.png', (500, 300))])
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


def test_smoothing_follows_a_falling_loss_without_lag():
  steps = np.arange(25, 1501, 25)
  loss = 0.05 + np.exp(-steps / 150)
  smoothed = smoothing.smooth(steps, loss, 0.2 * 1500)
  # An EMA over the same window (TensorBoard's, debiased) ended 2.4x above the last loss; a centred fit doesn't lag.
  assert smoothed[-1] == pytest.approx(loss[-1], rel=0.01)
  np.testing.assert_allclose(smoothed, loss, rtol=0.02)
  ramp = 3.0 - 0.004 * steps  # crosses zero: fitted as it is, a line comes back unchanged
  np.testing.assert_allclose(smoothing.smooth(steps, ramp, 300), ramp, atol=1e-9)
  noisy = 0.1 * np.exp(np.random.default_rng(0).normal(0, 0.3, len(steps)))
  assert np.std(np.log(smoothing.smooth(steps, noisy, 300))) < 0.6 * np.std(np.log(noisy))  # it does smooth
  np.testing.assert_array_equal(smoothing.smooth(steps, noisy, 0), noisy)
  np.testing.assert_array_equal(smoothing.smooth(steps, noisy, 40), noisy)  # a window within one log period


# luminance.png from hand-made runs: no training.

def histogram_eval(step: int, samples: list[int]) -> dict:
  """Returns an evaluation of the artefacts metric with a luminance histogram of the given sample counts."""
  return {'step': step, 'num_samples': sum(samples), 'brightness_gap': -1.5, 'color_shift': 2.0,
          'dark_fraction_gap': 0.25, 'noise_residual': 1.0,
          artefacts.HISTOGRAM: {'range': [0, 255], 'samples': samples, 'reference': [2] * len(samples)}}


def hand_run(name: str, evals: list[dict]) -> events.Run:
  """Returns a Run of the artefacts metric holding the evaluations alone."""
  return events.Run(name, {'eval': {'metrics': ['artefacts']}}, {}, evals, None, None)


def test_luminance_figure_draws_each_runs_last_histogram_and_skips_runs_without(tmp_path):
  old = {key: value for key, value in histogram_eval(2, []).items() if key != artefacts.HISTOGRAM}
  runs = [hand_run('two', [histogram_eval(2, [8] + [0] * 31), histogram_eval(4, [0] * 31 + [8])]),
          hand_run('before_histograms', [old]), hand_run('unevaluated', []),
          hand_run('one', [histogram_eval(6, [1] * 32), old])]  # the last histogram, not the last evaluation
  assert [(figures.last_histogram(run) or {}).get('step') for run in runs] == [4, None, None, 6]
  figures.plot_luminance(runs, str(tmp_path / 'luminance.png'))
  with Image.open(tmp_path / 'luminance.png') as image:
    assert image.size == (2 * 550, 400)  # two panels: the runs without histograms have none
    assert np.asarray(image.convert('L')).std() > 5


def test_luminance_figure_without_any_histogram_is_one_empty_panel(tmp_path):
  figures.plot_luminance([hand_run('unevaluated', [])], str(tmp_path / 'luminance.png'))
  with Image.open(tmp_path / 'luminance.png') as image:
    assert image.size == (550, 400)


def test_artefacts_histograms_go_through_the_evaluation_json(tmp_path):
  # Grey 4x4 checkerboards (the channel is the luminance) of these two levels, so of means 2, 10, 10, 247.5, 253:
  # 247.5 is in the last of 32 bins over 0-255 (from 247.03), not of bins of 8 (from 248).
  checkerboard = torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0]] * 2)
  images = torch.stack([low + (high - low) * checkerboard for low, high in
                        ((0, 4), (8, 12), (8, 12), (245, 250), (251, 255))]).view(-1, 1, 4, 4).to(torch.uint8)
  ref = reference.make_reference(None, image_statistics=artefacts.per_image(images[:2].numpy()))
  scorer = evaluator.Evaluator(None, ref, metrics=('artefacts',), progress=False)
  scorer.update(images)
  result = scorer.result()
  expected = [1, 2] + [0] * 29 + [2]
  assert result[artefacts.HISTOGRAM] == {'range': [0, 255], 'samples': expected, 'reference': [1, 1] + [0] * 30}

  class Writer:
    def write_scalars(self, step, scalars):
      self.scalars = scalars
  writer = Writer()
  evaluation.write_results(str(tmp_path), 2, {**result, 'sampler': 'ddim', 'sampling_steps': 5}, writer,
                           ('artefacts',))
  assert artefacts.HISTOGRAM not in {key.split('/')[-1] for key in writer.scalars}  # TensorBoard: scalars alone
  run = hand_run('r', events.read_evals(str(tmp_path), {'eval': {'metrics': ['artefacts']}}))
  assert figures.last_histogram(run)[artefacts.HISTOGRAM]['samples'] == expected


def test_extended_runs_name_their_change_and_get_their_own_loss_panel_and_schedule():
  runs = [events.Run(module.__name__.split('.')[-1], module.get_config().to_dict(), {}, [], None, None)
          for module in (linear_mse, ext_linear_offset, ext_cosine_v_min_snr, ext_linear_zero_snr_v)]
  assert [report.loss_cell(run.config['diffusion']) for run in runs] == [
      'mse', 'mse (offset noise 0.1)', 'mse (v, min-SNR γ=5)', 'mse (v, zero terminal SNR)']
  assert [figures.loss_kind(run) for run in runs] == ['ε-MSE', 'ε-MSE', 'v-MSE, min-SNR γ=5', 'v-MSE']
  groups = figures.schedule_groups(runs)
  assert list(groups.values()) == [['linear_mse', 'ext_linear_offset'], ['ext_cosine_v_min_snr'],
                                   ['ext_linear_zero_snr_v']]
  zero_snr = figures.make_schedule(next(key for key in groups if key[2]))
  assert float(zero_snr.alphas_cumprod[-1]) == 0.0


# What a reader sees: the metrics figure's legend and labels, the table's KID and n, report.html.

def kid_run(name: str, evals: list[dict]) -> events.Run:
  """Returns a Run of the tiny config that evaluated FID and KID at `evals`."""
  config = workdir_lib.as_json(tiny_config({'eval.metrics': ('fid', 'kid')}))
  return events.Run(name, config, {'loss': {2: 1.0}}, evals, None, None)


def kid_eval(step: int, n: int, kid_std: float) -> dict:
  return {'step': step, 'num_samples': n, 'fid': 40.0, 'kid_mean': 0.03127, 'kid_std': kid_std}


def test_metrics_figure_has_one_legend_with_n_where_it_differs_and_whole_axis_labels(monkeypatch):
  saved = []
  monkeypatch.setattr(figures, 'save', lambda fig, path: saved.append(fig))
  artefact_runs = [hand_run('a', [histogram_eval(2, [4] * 32)]), hand_run('b', [histogram_eval(2, [2] * 32)])]
  figures.plot_metrics(artefact_runs, 'unused.png')
  [fig] = saved
  assert [text.get_text() for text in fig.legends[0].get_texts()] == ['a (n=128)', 'b (n=64)', 'best evaluation']
  assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
  labels = {ax.get_ylabel() for ax in fig.axes if ax.axison}
  assert labels == {'Brightness gap', 'Colour shift', 'Dark-fraction gap', 'Noise residual'}
  canvas = backend_agg.FigureCanvasAgg(fig)  # as savefig draws it: each label lies wholly inside the figure
  canvas.draw()
  renderer, (width, height) = canvas.get_renderer(), canvas.get_width_height()
  for ax in fig.axes:
    box = ax.yaxis.label.get_window_extent(renderer)
    assert box.x0 >= 0 and box.y0 >= 0 and box.y1 <= height and box.x1 <= width
  same_n = [hand_run('a', [histogram_eval(2, [4] * 32)]), hand_run('b', [histogram_eval(2, [4] * 32)])]
  figures.plot_metrics(same_n, 'unused.png')
  assert [text.get_text() for text in saved[-1].legends[0].get_texts()] == ['a', 'b', 'best evaluation']
  standin = [hand_run('a', [{**histogram_eval(2, [4] * 32), 'standin_inception': True}]),
             hand_run('b', [histogram_eval(2, [4] * 32)])]
  figures.plot_metrics(standin, 'unused.png')
  assert [text.get_text() for text in saved[-1].legends[0].get_texts()] == [
      'a [stand-in Inception]', 'b', 'best evaluation']


def test_kid_shows_only_meaningful_digits_and_runs_of_other_n_get_a_warning():
  runs = [kid_run('spread', [kid_eval(2, 500, 0.00412)]), kid_run('tiny', [kid_eval(2, 24, 0.0)]),
          kid_run('small_std', [kid_eval(2, 500, 0.0000213)])]
  table = report.table_markdown(runs)
  rows = {line.split('|')[1].strip(): line for line in table.splitlines() if line.startswith('| ')}
  assert '| 0.0313 ± 0.0041 |' in rows['spread']
  assert '| 0.03127 (no spread at this n) |' in rows['tiny']  # a std of 0: every subset held every sample
  assert '| 0.031270 ± 0.000021 |' in rows['small_std']
  assert '± 0.0000 ' not in table
  assert 'Warning: the evaluations used different n (24, 500 samples)' in table
  assert 'Warning' not in report.table_markdown([runs[0], runs[2]])


class Page(html.parser.HTMLParser):
  """Collects a page's tags and attributes, its table cells and its text."""

  def __init__(self, text: str):
    super().__init__()
    self.tags, self.cells, self.text, self._cell = [], [], [], None
    self.feed(text)

  def handle_starttag(self, tag, attrs):
    self.tags.append((tag, dict(attrs)))
    self._cell = [] if tag in ('td', 'th') else self._cell

  def handle_endtag(self, tag):
    if tag in ('td', 'th') and self._cell is not None:
      self.cells.append(''.join(self._cell))
      self._cell = None

  def handle_data(self, data):
    self.text.append(data)
    if self._cell is not None:
      self._cell.append(data)


def embedded_png(src: str) -> Image.Image:
  """Returns the image of a data: URI, checking that it is a base64 PNG."""
  prefix = 'data:image/png;base64,'
  assert src.startswith(prefix)
  return Image.open(io.BytesIO(base64.b64decode(src[len(prefix):])))


def test_report_html_is_one_self_contained_page_of_table_grids_and_figures(out):
  page = Page((out / 'report.html').read_text(encoding='utf-8'))
  # Nothing outside the file: every image is embedded, no stylesheet, script or link is fetched.
  assert not [attrs for tag, attrs in page.tags if tag in ('link', 'script', 'iframe')]
  assert all(not attrs.get('href') for _, attrs in page.tags)
  images = [attrs for tag, attrs in page.tags if tag == 'img']
  sizes = {attrs['alt']: embedded_png(attrs['src']).size for attrs in images}
  assert {'loss.png', 'metrics.png', 'schedules.png', 'luminance.png'} <= set(sizes)
  for name in RUNS:  # the latest grid of each run, at least ~512 px wide
    assert sizes[f'samples of {name}'][0] >= 512
  table = table_rows(out / 'table.md')
  for name, row in table.items():  # the table's cells, as table.md has them
    assert name in page.cells and row['FID'] in page.cells
  text = ''.join(page.text)
  assert 'cosine_mse_tiny, step 4' in text and 'Warning: the evaluations used different n (24, 32 samples)' in text


def test_report_html_enlarges_the_small_grids_of_older_runs(tmp_path):
  old_grid = np.random.default_rng(0).integers(0, 256, (146, 146, 3), dtype=np.uint8)  # 64 samples of 16 px, as before
  Image.fromarray(old_grid).save(tmp_path / 'step_9.png')
  with Image.open(io.BytesIO(page.grid_png(str(tmp_path / 'step_9.png')))) as image:
    np.testing.assert_array_equal(np.asarray(image), np.repeat(np.repeat(old_grid, 4, axis=0), 4, axis=1))
