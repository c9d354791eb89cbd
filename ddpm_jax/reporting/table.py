"""Run workdirs → a table of metrics, five figures and one HTML page that compare the runs.

  python -m ddpm_jax.report --workdirs runs/study/* --out reports/study

Reads each workdir's config.json, event files (loss), eval/step_<N>.json (the metric plug-ins of eval.metrics,
eval_bridge/metrics/) and samples/step_<N>.png; writes table.md, loss.png, metrics.png, schedules.png,
luminance.png, samples.png and report.html (all of it on one self-contained page). After a post-hoc EMA sweep
(eval/phema/) it adds phema.png, after a guidance sweep (eval/guidance/) guidance.png and a table of each w.
"""
import functools
import itertools
import json
import os

import jax
import jax.numpy as jnp

from ddpm_jax.core.models.unet import UNet, UNetConfig, count_params
from ddpm_jax.reporting import figures
from ddpm_jax.reporting import guidance_figure
from ddpm_jax.reporting import page
from ddpm_jax.reporting import phema_figure
from ddpm_jax.reporting import runs as events
from eval_bridge import metrics as metrics_lib  # the registry alone: no torch

MISSING = '—'
STANDIN = '†'  # marks a score of stand-in Inception weights (the evaluation's standin_inception)
FIGURES = ('loss.png', 'metrics.png', 'schedules.png', 'luminance.png', 'samples.png')


def run_names(workdirs: list[str]) -> list[str]:
  """Returns each workdir's basename, or its path where two basenames collide."""
  paths = [os.path.normpath(w) for w in workdirs]
  names = [os.path.basename(p) for p in paths]
  return [n if names.count(n) == 1 else p for n, p in zip(names, paths)]


@functools.lru_cache(maxsize=None)  # the study's six runs share one model: trace it once
def _param_count(model_json: str, image_size: int) -> int:
  """Returns the parameter count of the U-Net of the JSON-encoded model section (hashable, for the cache)."""
  x = jnp.zeros((1, image_size, image_size, 3))
  t = jnp.zeros((1,), jnp.int32)
  model = UNet(UNetConfig(**json.loads(model_json)))
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x, t)
  return count_params(shapes['params'])


def param_count(config: dict, name: str) -> int:
  """Returns the U-Net's parameter count for config.json's model and image size (shapes only, no compute)."""
  try:
    return _param_count(json.dumps(config['model'], sort_keys=True), config['data']['image_size'])
  except TypeError as e:  # a key this version's UNetConfig doesn't know
    raise ValueError(f'run {name}: config.json\'s model section does not fit this U-Net ({e})') from None


def eval_cells(evaluation: dict | None, columns: list[metrics_lib.Column], inception: list[bool] = ()) -> list[str]:
  """Returns the table cells step, n and one per metric column of an evaluation ('—': none, or a metric it lacks).

  A column whose `inception` entry is True gets STANDIN when the evaluation used stand-in Inception weights.
  """
  if evaluation is None:
    return [MISSING] * (2 + len(columns))
  standin = evaluation.get('standin_inception', False)
  cells = [column.cell(evaluation, MISSING) for column in columns]
  cells = [cell + STANDIN if standin and uses and cell != MISSING else cell
           for cell, uses in itertools.zip_longest(cells, inception, fillvalue=False)]
  return [f'{evaluation["step"]:,}', f'{evaluation["num_samples"]:,}', *cells]


def trained_steps(run: events.Run) -> str:
  """Returns 'last logged step / training.num_steps'."""
  last = max(run.scalars.get('loss', {}), default=0)
  return f'{last:,} / {run.config["training"]["num_steps"]:,}'


def loss_cell(diffusion: dict) -> str:
  """Returns the loss, with how the run departs from the study's ε-prediction: 'mse' or 'mse (v, min-SNR γ=5)'."""
  variant = events.variant(diffusion)
  return f'{diffusion["loss"]} ({variant})' if variant else diffusion['loss']


def table_row(run: events.Run, metrics: list[type[metrics_lib.Metric]]) -> list[str]:
  """Returns the table cells of one run."""
  count, diffusion = param_count(run.config, run.name), run.config['diffusion']
  last, best = run.evals[-1] if run.evals else None, metrics_lib.ranking(metrics).best(run.evals)
  columns = [column for m in metrics for column in m.columns]
  inception = [m.needs_inception for m in metrics for _ in m.columns]
  return [run.name, diffusion['schedule'], loss_cell(diffusion), trained_steps(run), f'{count:,}',
          f'{count * 4 / 1e6:.1f} MB', *eval_cells(last, columns, inception), *eval_cells(best, columns, inception)]


def eval_settings(run: events.Run) -> set[str]:
  """Returns the distinct sampler settings of the run's evaluations, e.g. {'ddim 100 steps, beta_tilde'}."""
  return {f'{e.get("sampler")} {e.get("sampling_steps")} steps, {e.get("variance")}' for e in run.evals}


def table_markdown(runs: list[events.Run]) -> str:
  """Returns table.md: one row per run (the last and the best evaluation of each metric), then what the columns mean."""
  metrics = events.run_metrics(runs)
  ranked, columns = metrics_lib.ranking(metrics), [column.header for m in metrics for column in m.columns]
  header = ['run', 'schedule', 'loss', 'trained steps', 'params', 'fp32 size', 'last eval step', 'n', *columns,
            f'best-{ranked.columns[0].header} step', 'n', *columns]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(table_row(run, metrics)) + ' |' for run in runs]
  best = f'{"lowest" if ranked.lower_is_better else "highest"} {ranked.columns[0].header}'
  notes = ''.join(f'{m.note}; ' for m in metrics if m.note)
  variants = any(events.variant(run.config['diffusion']) for run in runs)
  notes += 'loss (…) = what the run changes of the study\'s ε-prediction training; ' if variants else ''
  lines += ['', f'last = the last evaluated step; best = the evaluated step with the {best}; n = generated samples '
            f'per evaluation; {notes}{MISSING} = not evaluated.']
  if any(e.get('standin_inception') for run in runs for e in run.evals + run.guidance):
    lines.append(f'{STANDIN} = scored with stand-in Inception weights (random, for smoke tests): comparable with no '
                 'real score.')
  settings = sorted(set().union(*(eval_settings(run) for run in runs)))
  if settings:
    lines.append(f'Evaluation samplers: {"; ".join(settings)}.')
  if len(settings) > 1:
    lines.append('Warning: the runs were evaluated with different samplers; their metrics are not comparable.')
  counts = sorted(set().union(*(figures.sample_counts(run) for run in runs)))
  if len(counts) > 1:  # FID and KID are biased by n: a smaller n reads worse
    lines.append(f'Warning: the evaluations used different n ({", ".join(f"{n:,}" for n in counts)} samples); '
                 'FID and KID depend on n: compare them at equal n.')
  return '\n'.join(lines + guidance_markdown(runs)) + '\n'


def guidance_cell(evaluation: dict) -> str:
  """Returns the guidance w of an evaluation, with its interval where it had one: '3' or '3 at t 100-700'."""
  interval = evaluation.get('guidance_interval')
  return f'{evaluation[guidance_figure.W]:g}' + (f' at t {interval[0]}-{interval[1]}' if interval else '')


def guidance_markdown(runs: list[events.Run]) -> list[str]:
  """Returns the lines of table.md's guidance table: a row per run and w of each guidance sweep ([] if none)."""
  swept = [run for run in runs if run.guidance]
  if not swept:
    return []
  metrics = events.sweep_metrics([e for run in swept for e in run.guidance])
  columns = [column for m in metrics for column in m.columns]
  inception = [m.needs_inception for m in metrics for _ in m.columns]
  header = ['run', 'guidance w', 'step', 'n', *(column.header for column in columns)]
  rows = [[run.name, guidance_cell(e), *eval_cells(e, columns, inception)] for run in swept for e in run.guidance]
  return ['', 'Guidance sweeps (eval/guidance/, --mode=eval with eval.guidance_scales; drawn in guidance.png): '
          "each w's evaluation at the run's newest swept step.", '',
          '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header),
          *('| ' + ' | '.join(row) + ' |' for row in rows)]


def write_report(workdirs: list[str], out: str, smoothing: float = 0.01) -> list[str]:
  """Writes table.md, the five figures (with phema.png and guidance.png after such sweeps) and report.html of the
  workdirs' runs into out; returns their paths."""
  for workdir in workdirs:  # every bad workdir is reported before any slow reading
    events.check_workdir(workdir)
  runs = [events.read_run(w, name) for w, name in zip(workdirs, run_names(workdirs))]
  os.makedirs(out, exist_ok=True)
  table = os.path.join(out, 'table.md')
  with open(table, 'w') as f:
    f.write(table_markdown(runs))
  loss, metrics, schedule, luminance, samples = paths = [os.path.join(out, name) for name in FIGURES]
  figures.plot_loss(runs, loss, smoothing)
  figures.plot_metrics(runs, metrics)
  figures.plot_schedules(runs, schedule)
  figures.plot_luminance(runs, luminance)
  figures.plot_samples(runs, samples)
  swept = phema_figure.plot_sweeps(runs, workdirs, os.path.join(out, 'phema.png'))  # only after a post-hoc EMA sweep
  guided = guidance_figure.plot_sweeps(runs, os.path.join(out, 'guidance.png'))  # only after a guidance sweep
  paths += [figure for figure in (swept, guided) if figure]
  with open(table) as f:  # as written, with the marks and warnings of table_markdown
    page_path = page.write_page(os.path.join(out, 'report.html'), runs, f.read(), paths)
  return [table, *paths, page_path]
