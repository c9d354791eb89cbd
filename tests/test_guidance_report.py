"""The report of a guidance sweep (eval/guidance/step_<N>_w_<w>.json): guidance.png's three panels (FID against w,
the FID/IS and precision/recall trade-offs labelled by w) hold exactly the sweep's numbers, a panel whose metric
was not computed is left out with a line saying so, stand-in Inception scores are marked, table.md lists each w and
report.html embeds the figure."""
import json
import os

import pytest

from runs import tiny_config
from ddpm_jax import paths
from ddpm_jax.evaluation import guidance_sweep
from ddpm_jax.reporting import figures
from ddpm_jax.reporting import guidance_figure
from ddpm_jax.reporting import runs as events
from ddpm_jax.reporting import table
from ddpm_jax.run import workdir as workdir_lib

# A plausible sweep (the shape of Ho & Salimans' Fig. 4): FID falls then rises with w, IS and precision rise,
# recall falls. Listed out of w order: the report orders by w.
SWEEP = {
    3.0: {'fid': 21.5, 'is_mean': 11.2, 'is_std': 0.3, 'precision': 0.81, 'recall': 0.33},
    0.0: {'fid': 31.0, 'is_mean': 5.1, 'is_std': 0.2, 'precision': 0.52, 'recall': 0.61},
    1.5: {'fid': 14.75, 'is_mean': 9.4, 'is_std': 0.25, 'precision': 0.71, 'recall': 0.49},
    1.0: {'fid': 18.25, 'is_mean': 8.0, 'is_std': 0.2, 'precision': 0.63, 'recall': 0.55},
}
SETTINGS = {'sampler': 'dpmpp_2m', 'sampling_steps': 20, 'num_samples': 500, 'num_classes': 3, 'labels': 'balanced',
            'guidance_interval': []}
WS = sorted(SWEEP)


def write_sweep(workdir: str, step: int, sweep: dict, **extra) -> None:
  """Writes the sweep's JSONs as --mode=eval with eval.guidance_scales does."""
  for w, metrics in sweep.items():
    guidance_sweep.write_result(workdir, step, w, {**SETTINGS, **metrics, **extra})


@pytest.fixture(scope='module')
def report(tmp_path_factory):
  """Returns (report directory, the Figures it saved by file name) of a class-conditional run (config.json alone)
  with a guidance sweep at steps 2 (older) and 4, the newest scored with stand-in Inception weights."""
  root = tmp_path_factory.mktemp('guided')
  workdir = str(root / 'cfg')
  os.makedirs(workdir)
  with open(paths.Workdir(workdir).config_file, 'w') as f:
    json.dump(workdir_lib.as_json(tiny_config({'model.num_classes': 3})), f)
  write_sweep(workdir, 2, {w: {**m, 'fid': m['fid'] + 50} for w, m in SWEEP.items()})  # not the newest
  write_sweep(workdir, 4, SWEEP, standin_inception=True)
  saved, save = {}, figures.save
  out = root / 'report'
  with pytest.MonkeyPatch.context() as patch:  # keep each Figure, to read back what it plots
    patch.setattr(figures, 'save', lambda fig, path: (saved.__setitem__(os.path.basename(path), fig), save(fig, path)))
    table.write_report([workdir], str(out))
  return out, saved


def test_guidance_figure_draws_fid_against_w_and_the_two_trade_offs_labelled_by_w(report):
  out, saved = report
  assert (out / 'guidance.png').stat().st_size > 10_000
  fid_w, fid_is, pr = saved['guidance.png'].axes
  assert [ax.get_title() for ax in (fid_w, fid_is, pr)] == [
      'FID against the guidance scale', 'FID/IS trade-off (points: w)', 'Precision/recall trade-off (points: w)']
  curve, star = fid_w.lines  # one swept run: its curve and its lowest FID
  assert curve.get_xydata().tolist() == [[w, SWEEP[w]['fid']] for w in WS]
  assert star.get_xydata().tolist() == [[1.5, 14.75]]
  for ax, (x, y) in ((fid_is, ('is_mean', 'fid')), (pr, ('recall', 'precision'))):
    [line] = ax.lines
    assert line.get_xydata().tolist() == [[SWEEP[w][x], SWEEP[w][y]] for w in WS]
    assert [(text.get_text(), text.xy) for text in ax.texts] == [
        (f'w={w:g}', (SWEEP[w][x], SWEEP[w][y])) for w in WS]
  [legend] = saved['guidance.png'].legends
  assert [text.get_text() for text in legend.get_texts()] == [
      'cfg [stand-in Inception], step 4, n=500, dpmpp_2m 20', 'lowest FID']


def test_table_lists_each_w_with_stand_in_marks_and_the_page_embeds_the_figure(report):
  out, _ = report
  markdown = (out / 'table.md').read_text()
  rows = [line for line in markdown.split('Guidance sweeps')[1].splitlines() if line.startswith('| ')]
  cells = [[cell.strip() for cell in row.strip('|').split('|')] for row in rows]
  assert cells[0] == ['run', 'guidance w', 'step', 'n', 'FID', 'IS', 'Precision', 'Recall']
  assert cells[1:] == [['cfg', f'{w:g}', '4', '500', f'{SWEEP[w]["fid"]:.2f}†',
                        f'{SWEEP[w]["is_mean"]:.2f} ± {SWEEP[w]["is_std"]:.2f}†', f'{SWEEP[w]["precision"]:.3f}†',
                        f'{SWEEP[w]["recall"]:.3f}†'] for w in WS]
  assert '† = scored with stand-in Inception weights' in markdown
  assert table.guidance_cell({'guidance_scale': 3.0, 'guidance_interval': [100, 700]}) == '3 at t 100-700'
  page = (out / 'report.html').read_text()
  assert 'alt="guidance.png"' in page and page.count('<table>') == 2 and '<td>14.75†</td>' in page


def test_a_panel_whose_metric_no_sweep_computed_is_left_out_and_named(monkeypatch):
  saved = []
  monkeypatch.setattr(figures, 'save', lambda fig, path: saved.append(fig))
  fid_only = [{'step': 4, 'guidance_scale': w, 'num_samples': 500, 'fid': SWEEP[w]['fid']} for w in WS]
  with_pr = [{**e, 'precision': SWEEP[e['guidance_scale']]['precision'],
              'recall': SWEEP[e['guidance_scale']]['recall']} for e in fid_only]
  runs = [events.Run('a', {}, {}, [], None, None, fid_only), events.Run('b', {}, {}, [], None, None),
          events.Run('c', {}, {}, [], None, None, with_pr)]
  assert guidance_figure.plot_sweeps(runs, 'guidance.png') == 'guidance.png'
  fid_w, pr = saved[-1].axes  # no IS in any sweep: no FID/IS panel; precision/recall of the run that has it
  assert (fid_w.get_title(), len(fid_w.lines), len(pr.lines)) == ('FID against the guidance scale', 4, 1)
  assert ' '.join(saved[-1].get_supxlabel().split()) == (
      "Not drawn, no sweep computed its metrics: FID/IS trade-off (eval.metrics 'fid' and 'isc').")
  artefacts_only = [{'step': 4, 'guidance_scale': 1.0, 'num_samples': 500, 'brightness_gap': 1.0}]
  guidance_figure.plot_sweeps([events.Run('c', {}, {}, [], None, None, artefacts_only)], 'guidance.png')
  [ax] = saved[-1].axes
  assert [text.get_text() for text in ax.texts] == ['the guidance sweeps hold no FID, IS or precision/recall']
  assert guidance_figure.plot_sweeps(runs[1:2], 'guidance.png') is None  # no sweep, no figure
  assert len(saved) == 2


def test_a_damaged_sweep_json_is_one_line(tmp_path):
  write_sweep(str(tmp_path), 4, {2.0: {'fid': 20.0, 'is_mean': 9.0}})  # IS without its std
  with pytest.raises(ValueError, match=r'step_4_w_2\.json lacks is_std; an evaluation holds num_samples and'):
    events.read_guidance(str(tmp_path))
