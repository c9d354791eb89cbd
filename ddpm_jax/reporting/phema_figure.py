"""The report's phema.png: each metric against the post-hoc EMA's sigma_rel (--mode=eval with eval.phema_sigma_rels).

One curve per run, at the run's newest swept step; a star marks the classic EMA's evaluation at that step,
placed at its equivalent sigma_rel (the standard deviation of its averaging weights over the step).
"""
import math

from ddpm_jax import paths
from ddpm_jax.core import phema
from ddpm_jax.reporting import figures
from ddpm_jax.reporting import runs as events


def read_sweep(workdir: str) -> list[dict]:
  """Returns the run's eval/phema/step_<N>_sigma_<s>.json dicts at its newest swept step, by sigma_rel."""
  return events.newest_sweep(paths.Workdir(workdir).phema_evals, paths.PHEMA_EVAL_FILE, 'sigma_rel')


def classic_ema_sigma_rel(config: dict, step: int) -> float:
  """Returns the equivalent sigma_rel of the run's classic EMA (training.ema_decay, ema_warmup) at step."""
  training = config.get('training', {})
  weights = phema.classic_ema_weights(step, training.get('ema_decay', 0.9999), training.get('ema_warmup', True))
  return phema.equivalent_sigma_rel(weights)


def plot_run(axes, panels, run: events.Run, sweep: list[dict], color) -> None:
  """Plots one run's sweep on every panel, with its classic EMA's evaluation at the sweep's step as a star."""
  step = sweep[0]['step']
  classic = next((e for e in run.evals if e['step'] == step), None)
  classic_x = classic_ema_sigma_rel(run.config, step) if classic else None
  for ax, panel in zip(axes, panels):
    shown = [e for e in sweep if panel.key in e]
    if not shown:
      continue
    ax.plot([e['sigma_rel'] for e in shown], [e[panel.key] for e in shown], marker='o', markersize=4, color=color,
            label=f'{run.name}, step {step:,}: post-hoc EMA')
    if classic is not None and panel.key in classic:
      ax.plot(classic_x, classic[panel.key], marker='*', markersize=14, color=color, linestyle='none',
              label=f'{run.name}: classic EMA (decay {run.config["training"].get("ema_decay", 0.9999):g})')
      ax.axhline(classic[panel.key], color=color, linestyle=':', linewidth=1)


def plot_sweeps(runs: list[events.Run], workdirs: list[str], path: str) -> str | None:
  """Writes phema.png when any run has a post-hoc EMA sweep, one panel per metric; returns its path (else None)."""
  sweeps = {run.name: read_sweep(workdir) for run, workdir in zip(runs, workdirs)}
  swept = [run for run in runs if sweeps[run.name]]
  if not swept:
    return None
  panels = [panel for metric in events.run_metrics(swept) for panel in metric.panels]
  columns = min(len(panels), 4)
  rows = math.ceil(len(panels) / columns)
  fig, axes = figures.new_figure(rows, columns, figsize=(6 * columns, 4.5 * rows), squeeze=False)
  axes = axes.ravel()
  for ax in axes[len(panels):]:
    ax.set_axis_off()
  colors = figures.run_colors(runs)
  for run in swept:
    plot_run(axes, panels, run, sweeps[run.name], colors[run.name])
  for ax, panel in zip(axes, panels):
    ax.set(title=f'{panel.title} vs the EMA width', xlabel='σ_rel (post-hoc EMA; ★ = classic EMA at its equivalent)',
           ylabel=panel.title.split(' ')[0])
    ax.grid(True, alpha=0.3)
    if ax.lines:
      ax.legend(fontsize='small')
    else:
      figures.empty_panel(ax, 'no post-hoc EMA evaluation')
  figures.save(fig, path)
  return path

