"""The report's guidance.png: class-conditional runs' guidance sweeps (--mode=eval with eval.guidance_scales).

Up to three panels, one curve per run at its newest swept step: FID against the guidance scale w (a star at the
lowest), and the two trade-offs that guidance moves along, FID against IS and precision against recall, each
point labelled with its w. A panel whose metrics no sweep computed is left out, and a line under the figure says
which plug-in of eval.metrics would draw it.
"""
import dataclasses
import textwrap

import matplotlib.lines

from ddpm_jax.reporting import figures
from ddpm_jax.reporting import runs as events

W = 'guidance_scale'


@dataclasses.dataclass(frozen=True)
class Panel:
  """One panel: its title, the evaluation keys on its axes and their labels, and the plug-in that computes them."""
  title: str
  x: str
  y: str
  xlabel: str
  ylabel: str
  metrics: str  # the eval.metrics names that write x and y, for the line that says why a panel is missing


PANELS = (
    Panel('FID against the guidance scale', W, 'fid', 'guidance scale w (0 = unconditional, 1 = conditional)',
          'FID ↓', "'fid'"),
    Panel('FID/IS trade-off (points: w)', 'is_mean', 'fid', 'Inception Score ↑', 'FID ↓', "'fid' and 'isc'"),
    Panel('Precision/recall trade-off (points: w)', 'recall', 'precision', 'recall ↑ (coverage)',
          'precision ↑ (fidelity)', "'prc'"),
)


def points(panel: Panel, sweep: list[dict]) -> list[dict]:
  """Returns the sweep's evaluations that hold both of the panel's keys, by w."""
  return [e for e in sweep if panel.x in e and panel.y in e]


def sweep_label(run: events.Run) -> str:
  """Returns a run's legend entry: name (marked when stand-in Inception scored it), step, n, sampler, interval."""
  first = run.guidance[0]
  interval = first.get('guidance_interval')
  parts = [f'{run.name}{figures.standin_mark(run.guidance)}', f'step {first["step"]:,}',
           f'n={first["num_samples"]:,}' if 'num_samples' in first else '',
           f'{first["sampler"]} {first.get("sampling_steps", "")}'.strip() if 'sampler' in first else '',
           f'guided at t ∈ [{interval[0]}, {interval[1]}]' if interval else '']
  return ', '.join(part for part in parts if part)


def plot_run(ax, panel: Panel, sweep: list[dict], color) -> None:
  """Plots one run's sweep on a panel: FID against w with a star at the lowest, or a trade-off labelled by w."""
  shown = points(panel, sweep)
  if not shown:
    return
  xs, ys = [e[panel.x] for e in shown], [e[panel.y] for e in shown]
  ax.plot(xs, ys, marker='o', markersize=5, color=color)
  if panel.x == W:
    best = min(shown, key=lambda e: e[panel.y])
    ax.plot(best[W], best[panel.y], marker='*', markersize=14, color=color, linestyle='none')
    return
  ax.margins(0.1)  # room for the labels of the outermost points
  labels = {}  # points that coincide (a model that guidance does not move) share one label
  for e, x, y in zip(shown, xs, ys):
    labels.setdefault((x, y), []).append(f'{e[W]:g}')
  for (x, y), ws in labels.items():
    ax.annotate(f'w={", ".join(ws)}', (x, y), textcoords='offset points', xytext=(5, 4), fontsize='small',
                color=color)


def skipped_line(skipped: list[Panel], width: int) -> str:
  """Returns the line under the figure naming the panels no sweep could draw and the plug-ins that would, wrapped
  at width characters."""
  return textwrap.fill('Not drawn, no sweep computed its metrics: ' + '; '.join(
      f'{panel.title.split(" (")[0]} (eval.metrics {panel.metrics})' for panel in skipped) + '.', width)


def plot_sweeps(runs: list[events.Run], path: str) -> str | None:
  """Writes guidance.png when any run has a guidance sweep; returns its path (else None)."""
  swept = [run for run in runs if run.guidance]
  if not swept:
    return None
  drawn = [panel for panel in PANELS if any(points(panel, run.guidance) for run in swept)]
  skipped = [panel for panel in PANELS if panel not in drawn]
  columns = max(len(drawn), 1)
  fig, axes = figures.new_figure(1, columns, figsize=(6 * columns, 5), squeeze=False, layout='constrained')
  colors = figures.run_colors(runs)
  for ax, panel in zip(axes[0], drawn):
    for run in swept:
      plot_run(ax, panel, run.guidance, colors[run.name])
    ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
    ax.grid(True, alpha=0.3)
  if not drawn:
    axes[0, 0].set_axis_off()
    figures.empty_panel(axes[0, 0], 'the guidance sweeps hold no FID, IS or precision/recall')
  handles = [matplotlib.lines.Line2D([], [], color=colors[run.name], marker='o', markersize=5) for run in swept]
  labels = [sweep_label(run) for run in swept]
  if drawn and drawn[0].x == W:
    handles.append(matplotlib.lines.Line2D([], [], color='gray', marker='*', markersize=12, linestyle='none'))
    labels.append('lowest FID')
  fig.legend(handles, labels, loc='outside upper center', ncols=min(len(labels), 3), frameon=False)
  if skipped:
    fig.supxlabel(skipped_line(skipped, 14 * 6 * columns), fontsize='small', color='gray')  # ~14 characters an inch
  figures.save(fig, path)
  return path
