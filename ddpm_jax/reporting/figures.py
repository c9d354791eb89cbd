"""The report's figures, each comparing the runs: loss curves, metrics, schedules, luminance, last sample grids."""
import math

import matplotlib
import matplotlib.lines
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure
from PIL import Image

from ddpm_jax.config import schema
from ddpm_jax.core import schedules
from ddpm_jax.reporting import runs as events
from ddpm_jax.reporting import smoothing as smoothing_lib
from eval_bridge import artefacts  # numpy only
from eval_bridge import metrics as metrics_lib  # the registry alone: no torch


def loss_curves(runs: list[events.Run], window: float) -> dict[str, tuple]:
  """Returns {run name: (steps, losses, smoothed losses)} of the runs that logged a finite loss."""
  curves = {}
  for run in runs:
    points = sorted((s, v) for s, v in run.scalars.get('loss', {}).items() if np.isfinite(v))
    if points:
      steps, values = (np.asarray(a) for a in zip(*points))
      curves[run.name] = steps, values, smoothing_lib.smooth(steps, values, window)
  return curves


def loss_y_axis(ax, curves: list[tuple], skip: float = 0.1) -> None:
  """Fits the y axis to the smoothed curves past each run's first `skip` of steps; log if they span over 3x.

  The first steep drop would otherwise flatten everything after it; no run's tail leaves the axis.
  """
  tails = np.concatenate([smoothed[steps >= skip * steps.max()] for steps, _, smoothed in curves])
  if not tails.size or tails.min() <= 0:
    return
  low, high = tails.min() / 1.1, tails.max() * 1.25
  if high / low > 3:
    ax.set_yscale('log')
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))  # a few labels even within a decade
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{v:.3g}'))  # 0.03, not 3×10⁻²
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_ylim(low, high)


def run_colors(runs: list[events.Run]) -> dict[str, tuple]:
  """Returns one colour per run name, the same in every figure."""
  cmap = matplotlib.colormaps['tab10' if len(runs) <= 10 else 'tab20']
  return {run.name: cmap(i % cmap.N) for i, run in enumerate(runs)}


def format_steps(ax) -> None:
  """Puts whole steps on the x axis, labelled 0, 50k, 100k … instead of in scientific notation."""
  ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins='auto', steps=[1, 2, 2.5, 5, 10], integer=True))
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{v / 1000:g}k' if abs(v) >= 1000 else f'{v:g}'))


def empty_panel(ax, message: str) -> None:
  """Writes message in the middle of an empty panel."""
  ax.text(0.5, 0.5, message, ha='center', va='center', transform=ax.transAxes, color='gray')


def loss_kind(run: events.Run) -> str:
  """Returns the loss a run's curve measures, e.g. 'ε-MSE' or 'v-MSE, min-SNR γ=5': one scale per kind."""
  d = run.config['diffusion']
  prediction = {'eps': 'ε'}.get(d.get('prediction', 'eps'), d.get('prediction'))
  weighting = f', min-SNR γ={d.get("min_snr_gamma", 5.0):g}' if d.get('loss_weighting') == 'min_snr' else ''
  return f'{prediction}-{d["loss"].upper()}{weighting}'


def plot_loss(runs: list[events.Run], path: str, smoothing: float) -> None:
  """Writes the loss curves, one panel per loss (MSE and MAE, ε and v targets, weighted or not aren't on one scale).

  smoothing: the centred window as a fraction of the longest run, the same number of steps for every run.
  """
  kinds = list(dict.fromkeys(loss_kind(run) for run in runs))  # in run order: the study's ε runs first
  fig, axes = new_figure(1, len(kinds), figsize=(7 * len(kinds), 4.5), squeeze=False)
  colors = run_colors(runs)
  longest = max([max(run.scalars.get('loss', {0: 0})) for run in runs])
  curves = loss_curves(runs, smoothing * longest)
  any_smoothing = any(smoothing_lib.is_smoothed(steps, smoothing * longest) for steps, _, _ in curves.values())
  note = f'centred fit over {smoothing * longest:,.0f} steps, raw faint' if any_smoothing else 'unsmoothed'
  for ax, kind in zip(axes[0], kinds):
    names = [run.name for run in runs if loss_kind(run) == kind and run.name in curves]
    for name in names:
      steps, values, smoothed = curves[name]
      ax.plot(steps, values, color=colors[name], alpha=0.25, linewidth=0.8)
      ax.plot(steps, smoothed, color=colors[name], linewidth=1.8, label=name)
    if names:
      loss_y_axis(ax, [curves[name] for name in names])
      ax.legend()
    else:
      empty_panel(ax, 'no loss logged')
    ax.set(title=f'{kind} training loss ({note})', xlabel='training step', ylabel='loss')
    format_steps(ax)
    ax.grid(True, which='both', alpha=0.3)
  save(fig, path)


def plot_panel(ax, panel: metrics_lib.Panel, run: events.Run, color, best: dict | None) -> None:
  """Plots one run's panel.key against the step, with its ±panel.band and a star at `best` when given."""
  evals = [e for e in run.evals if panel.key in e]
  if not evals:
    return
  steps = [e['step'] for e in evals]
  ax.plot(steps, [e[panel.key] for e in evals], marker='o', markersize=4, color=color)
  if panel.band:
    mean, std = (np.array([e[k] for e in evals]) for k in (panel.key, panel.band))
    ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
  if best is not None:
    ax.plot(best['step'], best[panel.key], marker='*', markersize=14, color=color, linestyle='none')


def sample_counts(run: events.Run) -> list[int]:
  """Returns the distinct n (generated samples) of the run's evaluations, ascending."""
  return sorted({int(e['num_samples']) for e in run.evals if 'num_samples' in e})


def counts_differ(runs: list[events.Run]) -> bool:
  """Returns whether the runs' evaluations were scored with more than one n (FID and KID depend on n)."""
  return len(set().union(*(sample_counts(run) for run in runs))) > 1


def standin_mark(evaluations: list[dict]) -> str:
  """Returns ' [stand-in Inception]' when any of the evaluations used stand-in Inception weights (their FID, KID,
  IS and precision/recall compare with nothing), else ''."""
  return ' [stand-in Inception]' if any(e.get('standin_inception') for e in evaluations) else ''


def run_label(run: events.Run, show_n: bool) -> str:
  """Returns the run's legend entry: its name, with its n (or n range) when show_n, marked (standin_mark) when any
  of its evaluations used stand-in Inception weights."""
  counts = sample_counts(run)
  name = run.name + standin_mark(run.evals)
  if not show_n or not counts:
    return name
  return f'{name} (n={counts[0]:,})' if len(counts) == 1 else f'{name} (n={counts[0]:,}–{counts[-1]:,})'


def axis_label(panel: metrics_lib.Panel) -> str:
  """Returns the panel's y-axis label: its title less the note in brackets ('Dark-fraction gap', 'FID ↓')."""
  return panel.title.split(' (')[0]


def shared_legend(fig, runs: list[events.Run], colors: dict, show_n: bool) -> None:
  """Adds one legend of the evaluated runs above all panels: each run's colour, name and (show_n) n."""
  shown = [run for run in runs if run.evals]
  if not shown:
    return
  handles = [matplotlib.lines.Line2D([], [], color=colors[run.name], marker='o', markersize=4) for run in shown]
  handles.append(matplotlib.lines.Line2D([], [], color='gray', marker='*', markersize=12, linestyle='none'))
  labels = [run_label(run, show_n) for run in shown] + ['best evaluation']
  fig.legend(handles, labels, loc='outside upper center', ncols=min(len(labels), 4), frameon=False)


def plot_metrics(runs: list[events.Run], path: str) -> None:
  """Writes each metric panel (eval_bridge.metrics) against the training step; a star marks the best evaluation.

  One legend above the panels names the runs, with their n where the runs' n differ.
  """
  metrics = events.run_metrics(runs)
  ranked, panels = metrics_lib.ranking(metrics), [panel for m in metrics for panel in m.panels]
  # At most 4 panels a row: the artefact, IS and PR metrics bring up to 10 panels, too wide for one row.
  columns = min(len(panels), 4)
  rows = math.ceil(len(panels) / columns)
  # Constrained layout makes room for the figure's legend inside the same size.
  fig, axes = new_figure(rows, columns, figsize=(6 * columns, 4.5 * rows), squeeze=False, layout='constrained')
  axes = axes.ravel()
  for ax in axes[len(panels):]:
    ax.set_axis_off()
  colors = run_colors(runs)
  for run in runs:
    best = ranked.best(run.evals)
    for ax, panel in zip(axes, panels):
      plot_panel(ax, panel, run, colors[run.name], best if panel.key == ranked.keys[0] else None)
  for ax, panel in zip(axes, panels):
    ax.set(title=panel.title, xlabel='training step', ylabel=axis_label(panel))
    format_steps(ax)
    ax.grid(True, alpha=0.3)
    if not ax.lines:
      empty_panel(ax, 'no evaluations')
  shared_legend(fig, runs, colors, counts_differ(runs))
  save(fig, path)


def schedule_key(diffusion: dict) -> tuple:
  """Returns what fixes a run's schedule: name, T, zero terminal SNR and (schedule='trained') the betas."""
  betas = tuple(diffusion.get('trained_betas') or ()) if diffusion['schedule'] == 'trained' else ()
  return diffusion['schedule'], diffusion['num_timesteps'], bool(diffusion.get('zero_terminal_snr')), betas


def make_schedule(key: tuple) -> schedules.Schedule:
  """Returns the schedule of a schedule_key, built as training builds it (DiffusionConfig.build_schedule)."""
  name, length, zero_terminal_snr, betas = key
  return schema.DiffusionConfig(schedule=name, num_timesteps=length, zero_terminal_snr=zero_terminal_snr,
                                trained_betas=tuple(betas)).build_schedule()


def schedule_groups(runs: list[events.Run]) -> dict[tuple, list[str]]:
  """Returns {schedule_key: run names}, so runs sharing a schedule share a curve."""
  groups = {}
  for run in runs:
    groups.setdefault(schedule_key(run.config['diffusion']), []).append(run.name)
  return groups


def plot_schedules(runs: list[events.Run], path: str) -> None:
  """Writes β_t (log scale) and ᾱ_t of each run's schedule; runs with the same schedule share a curve."""
  groups = schedule_groups(runs)
  same_length = len({key[1] for key in groups}) == 1
  fig, (beta_ax, alpha_ax) = new_figure(1, 2, figsize=(14, 4.5))
  colors = run_colors(runs)
  for key, members in groups.items():
    (name, length, zero_terminal_snr, _), schedule = key, make_schedule(key)
    t = np.arange(1, length + 1) if same_length else np.arange(1, length + 1) / length
    label = f'{name}{" (zero terminal SNR)" if zero_terminal_snr else ""}, T={length}: {", ".join(members)}'
    beta_ax.plot(t, np.asarray(schedule.betas), color=colors[members[0]], label=label)
    alpha_ax.plot(t, np.asarray(schedule.alphas_cumprod), color=colors[members[0]], label=label)
  xlabel = 'timestep t' if same_length else 't / T'
  beta_ax.set(title='β_t (noise added at step t)', xlabel=xlabel, ylabel='β_t', yscale='log')
  alpha_ax.set(title='ᾱ_t (signal left after t steps)', xlabel=xlabel, ylabel='ᾱ_t', ylim=(-0.02, 1.02))
  for ax in (beta_ax, alpha_ax):
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize='small')
  save(fig, path)


def last_histogram(run: events.Run) -> dict | None:
  """Returns the run's last evaluation holding luminance histograms (the artefacts plug-in's), or None."""
  for evaluation in reversed(run.evals):
    histogram = evaluation.get(artefacts.HISTOGRAM)
    if isinstance(histogram, dict) and len(histogram.get('samples', ())) == len(histogram.get('reference', ())) > 0:
      return evaluation
  return None


def plot_histogram(ax, histogram: dict, color) -> None:
  """Draws the reference's share of images per luminance bin (grey, filled) and the samples' (the run's colour)."""
  edges = np.linspace(*histogram.get('range', (0, 255)), len(histogram['samples']) + 1)
  for part, style in (('reference', dict(fill=True, color='0.8')), ('samples', dict(color=color, linewidth=2))):
    counts = np.asarray(histogram[part], np.float64)
    ax.stairs(counts / max(counts.sum(), 1.0), edges, label=f'{part} (n={counts.sum():,.0f})', **style)
  ax.axvline(artefacts.DARK_LUMINANCE, color='gray', linestyle='--', linewidth=1,
             label=f'dark: under {artefacts.DARK_LUMINANCE:g}')


def plot_luminance(runs: list[events.Run], path: str) -> None:
  """Writes each run's last per-image mean luminance histogram against the reference's (at most 3 panels a row).

  A run without histograms (no artefacts metric, or evaluated before it had them) has no panel.
  """
  shown = [(run, evaluation) for run in runs if (evaluation := last_histogram(run)) is not None]
  columns = min(max(len(shown), 1), 3)
  rows = math.ceil(max(len(shown), 1) / columns)
  fig, axes = new_figure(rows, columns, figsize=(5.5 * columns, 4 * rows), squeeze=False)
  for ax in axes.flat[len(shown):]:
    ax.set_axis_off()
  if not shown:
    empty_panel(axes[0, 0], 'no evaluation has luminance histograms\n(eval.metrics with artefacts)')
  colors = run_colors(runs)
  for ax, (run, evaluation) in zip(axes.flat, shown):
    plot_histogram(ax, evaluation[artefacts.HISTOGRAM], colors[run.name])
    gaps = ', '.join(f'{c.header} {c.cell(evaluation, "—")}' for c in metrics_lib.get('artefacts').columns[::2])
    ax.set(title=f'{run.name}, step {evaluation["step"]:,}\n{gaps}', xlabel='mean luminance of an image (0-255)',
           ylabel='share of images', xlim=tuple(evaluation[artefacts.HISTOGRAM].get('range', (0, 255))))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize='small')
  save(fig, path)


def read_rgb(path: str) -> np.ndarray:
  """Returns the image file as a uint8 HWC RGB array."""
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def plot_samples(runs: list[events.Run], path: str) -> None:
  """Writes each run's last sample grid side by side (at most 3 a row), titled with run and step."""
  columns = min(len(runs), 3)
  rows = math.ceil(len(runs) / columns)
  grids = {run.name: read_rgb(run.grid_path) for run in runs if run.grid_path}
  side = max([max(g.shape[:2]) for g in grids.values()], default=300) / 100  # about 1 pixel per grid pixel
  side = min(max(side, 3.0), 6.0)
  fig, axes = new_figure(rows, columns, figsize=(side * columns, (side + 0.6) * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis('off')
  for ax, run in zip(axes.flat, runs):
    if run.name in grids:
      ax.imshow(grids[run.name], interpolation='nearest')
      ax.set_title(f'{run.name}\nstep {run.grid_step:,}')
    else:
      ax.set_title(run.name)
      empty_panel(ax, 'no sample grid')
  save(fig, path)


def new_figure(rows: int, columns: int, figsize: tuple, squeeze: bool = True, layout: str = 'tight'):
  """Returns a Figure and its axes; a bare Figure renders with Agg and leaves pyplot's global state alone."""
  fig = Figure(figsize=figsize, layout=layout)
  return fig, fig.subplots(rows, columns, squeeze=squeeze)


def save(fig, path: str) -> None:
  """Writes the figure as a PNG."""
  fig.savefig(path, dpi=100)
