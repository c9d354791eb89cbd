"""What a run left in its workdir: the scalars of its event files, config.json, evaluations and sample grids.

CLU writes scalars as tensor summaries; tensorboard's EventAccumulator reads them.
"""
import dataclasses
import glob
import json
import os
import re

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from ddpm_jax import paths
from ddpm_jax.evaluation import guidance_sweep  # its file names (jax and absl, no torch)
from eval_bridge import metrics as metrics_lib  # the registry alone: no torch


@dataclasses.dataclass(frozen=True)
class Run:
  """What a report reads of one workdir."""
  name: str
  config: dict  # config.json
  scalars: dict  # {tag: {step: value}} from the event files
  evals: list  # the eval/step_<N>.json dicts, by step
  grid_step: int | None  # step of the last samples/step_<N>.png
  grid_path: str | None
  guidance: list = dataclasses.field(default_factory=list)  # the eval/guidance/ sweep at its newest step, by w


def scalars(workdir: str) -> dict[str, dict[int, float]]:
  """Returns {tag: {step: value}} of the scalar summaries in workdir's TensorBoard event files.

  A resumed run writes a new event file and may log a step again; the file written last wins.
  """
  values = {}
  # The file names start with the creation time in seconds, so name order is write order.
  for path in paths.Workdir(workdir).event_files():
    accumulator = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    for tag in accumulator.Tags()['tensors']:
      for event in accumulator.Tensors(tag):
        value = tensor_util.make_ndarray(event.tensor_proto)
        if value.dtype.kind in 'fiu' and value.size == 1:
          values.setdefault(tag, {})[event.step] = float(value.reshape(-1)[0])
  return values


def variant(diffusion: dict) -> str:
  """Returns how a run's training departs from the study's ε-prediction, e.g. 'v, min-SNR γ=5'; '' where it doesn't.

  config.json of runs from before these keys existed lacks them: those trained ε, unweighted, without offset.
  """
  prediction = diffusion.get('prediction', 'eps')
  parts = [prediction] if prediction != 'eps' else []
  if diffusion.get('loss_weighting', 'none') == 'min_snr':
    parts.append(f'min-SNR γ={diffusion.get("min_snr_gamma", 5.0):g}')
  if diffusion.get('zero_terminal_snr'):
    parts.append('zero terminal SNR')
  if diffusion.get('offset_noise'):
    parts.append(f'offset noise {diffusion["offset_noise"]:g}')
  return ', '.join(parts)


def check_workdir(workdir: str) -> None:
  """Returns None; raises a one-line FileNotFoundError when workdir is no run's workdir."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'workdir {workdir!r} does not exist')
  if not os.path.isfile(paths.Workdir(workdir).config_file):
    raise FileNotFoundError(f'workdir {workdir!r} has no config.json; pass the --workdir of a training run')


def read_json(path: str) -> dict:
  """Returns the parsed JSON file; a corrupt one is a one-line ValueError naming it."""
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON ({e.msg}, line {e.lineno})') from None


def files_by_step(directory: str, pattern: re.Pattern) -> dict[int, str]:
  """Returns {N: path} of the files in directory whose names match pattern, its group 1 being the step."""
  found = glob.glob(os.path.join(directory, '*'))
  matches = ((pattern.fullmatch(os.path.basename(p)), p) for p in found)
  return {int(m.group(1)): p for m, p in matches if m}


def metric_names(config: dict) -> tuple[str, ...]:
  """Returns a run's evaluator plug-ins: config.json's eval.metrics, or the default where it has none (older runs)."""
  return tuple(config.get('eval', {}).get('metrics') or metrics_lib.DEFAULT)


def run_metrics(runs: list['Run']) -> list[type[metrics_lib.Metric]]:
  """Returns the metric plug-ins any of the runs evaluates, in registry order."""
  return metrics_lib.select(set().union(*(metric_names(run.config) for run in runs)) or metrics_lib.DEFAULT)


def eval_keys(config: dict, workdir: str = '') -> tuple[str, ...]:
  """Returns what every eval/step_<N>.json of the run holds: its metrics' keys and num_samples."""
  try:
    return metrics_lib.required_keys(metric_names(config)) + ('num_samples',)
  except ValueError as e:  # a plug-in this version lacks
    raise ValueError(f'{paths.Workdir(workdir).config_file}: eval.metrics: {e}') from None


def missing_keys(evaluation: dict, metrics: list[type[metrics_lib.Metric]]) -> list[str]:
  """Returns the keys an evaluation lacks: those of a metric it holds in part, or all when it holds no metric.

  A metric absent as a whole is no damage: the run's eval.metrics may change on resume (the
  evaluations before it lack a metric added since), and the report shows '—' there.
  """
  partial = [key for cls in metrics if any(k in evaluation for k in cls.keys) for key in cls.keys
             if key not in evaluation]
  if not any(key in evaluation for cls in metrics for key in cls.keys):
    partial = [key for cls in metrics for key in cls.keys]
  return partial + [key for key in ('num_samples',) if key not in evaluation]


def read_evaluation(path: str, metrics: list[type[metrics_lib.Metric]], holds: str) -> dict:
  """Returns the evaluation JSON at path; a damaged one (see missing_keys) is a one-line ValueError saying what an
  evaluation `holds`."""
  evaluation = read_json(path)
  missing = missing_keys(evaluation, metrics)
  if missing:
    raise ValueError(f'{path} lacks {", ".join(missing)}; an evaluation holds {holds}')
  return evaluation


def read_evals(workdir: str, config: dict) -> list[dict]:
  """Returns workdir's eval/step_<N>.json dicts by step; a damaged one (see missing_keys) is a one-line ValueError."""
  holds = f'{", ".join(eval_keys(config, workdir))} (or all keys of some of these metrics)'
  metrics = metrics_lib.select(metric_names(config))
  return [read_evaluation(path, metrics, holds) | {'step': step}
          for step, path in sorted(files_by_step(paths.Workdir(workdir).evals, paths.EVAL_FILE).items())]


def newest_sweep(directory: str, pattern: re.Pattern, key: str, read=read_json) -> list[dict]:
  """Returns the evaluations of a sweep at its newest step, by `key`: read(path) of the JSONs in directory whose
  names match pattern (group 1 the step, group 2 the swept value, which a JSON lacking `key` takes from its name)."""
  names = os.listdir(directory) if os.path.isdir(directory) else []
  found = [(int(m.group(1)), float(m.group(2)), os.path.join(directory, name)) for name in names
           if (m := pattern.fullmatch(name))]
  newest = max((step for step, _, _ in found), default=None)
  sweep = [{'step': step, key: value} | read(path) for step, value, path in found if step == newest]
  return sorted(sweep, key=lambda evaluation: evaluation[key])


def sweep_metrics(evaluations: list[dict]) -> list[type[metrics_lib.Metric]]:
  """Returns the registered metric plug-ins the evaluations hold (any key of theirs), in registry order.

  A sweep under --mode=eval may choose other eval.metrics than config.json records (eval is free to change).
  """
  return [cls for cls in metrics_lib.REGISTRY.values() if any(k in e for e in evaluations for k in cls.keys)]


def read_guidance(workdir: str) -> list[dict]:
  """Returns the run's eval/guidance/step_<N>_w_<w>.json dicts at its newest swept step, by guidance_scale; one
  lacking part of a metric, or holding none, is a one-line ValueError (missing_keys, over every plug-in)."""
  metrics, holds = list(metrics_lib.REGISTRY.values()), 'num_samples and every key of each metric it scored'
  return newest_sweep(guidance_sweep.guidance_evals(workdir), guidance_sweep.GUIDANCE_EVAL_FILE, 'guidance_scale',
                      lambda path: read_evaluation(path, metrics, holds))


def read_run(workdir: str, name: str) -> Run:
  """Returns the Run of workdir: config, logged scalars, evaluations, the last sample grid and the guidance sweep."""
  check_workdir(workdir)
  grids = files_by_step(paths.Workdir(workdir).samples, paths.GRID_FILE)
  grid_step = max(grids, default=None)
  config = read_json(paths.Workdir(workdir).config_file)
  return Run(name, config, scalars(workdir), read_evals(workdir, config), grid_step, grids.get(grid_step),
             read_guidance(workdir))
