"""The training loop: restore or start, then periodic logging, sample grids, evaluation and checkpoints."""
import os
import signal

import jax
import numpy as np
from absl import logging

from ddpm_jax import data
from ddpm_jax import errors
from ddpm_jax import paths
from ddpm_jax.config import convert, schema
from ddpm_jax.core import sampler, train_step
from ddpm_jax.core.models.unet import count_params
from ddpm_jax.run import build as components_lib
from ddpm_jax.run import checkpoints
from ddpm_jax.run import grids
from ddpm_jax.run import phema_snapshots
from ddpm_jax.run import progress
from ddpm_jax.run import workdir as workdir_lib
from ddpm_jax.run import writers
from ddpm_jax.run.train_input import TrainInput


def open_workdir(config: schema.Config, workdir: str, allow_config_change: bool = False):
  """Returns (the workdir's checkpoint manager, the config's changes) once the config may train there.

  Creates workdir/checkpoints/ where it is missing: `resume_or_start` checks the data and writability first.
  """
  manager = checkpoints.make_manager(workdir, config.training.keep_checkpoints)
  changes = workdir_lib.check_config(workdir, config, manager.latest_step() is not None, allow_config_change)
  return manager, changes


def is_time(step: int, every: int, num_steps: int) -> bool:
  """Returns whether a periodic action is due after `step` (always at the last step)."""
  return step == num_steps or (every > 0 and step % every == 0)


def mean_of_finite(values) -> float:
  """Returns the mean of the finite values; NaN, without numpy's empty-slice warning, when none is finite."""
  finite = [v for v in values if np.isfinite(v)]
  return float(np.mean(finite)) if finite else float('nan')


COUNTED_METRICS = ('nonfinite_steps', 'overflow_steps')  # summed over a log window, not averaged


class MetricsLog:
  """Collects the train step's metrics on device and writes their means at log points."""

  def __init__(self, writer, learning_rate):
    self.writer, self.learning_rate, self.pending = writer, learning_rate, []

  def add(self, metrics) -> None:
    self.pending.append(metrics)

  def write(self, step: int) -> dict:
    """Writes mean loss, grad norm and the learning rate at `step`; the only host sync in the loop."""
    if not self.pending:
      return {}
    stacked = jax.device_get(self.pending)
    # Skipped (non-finite, overflowing) steps are counted, not averaged into the loss; the loss scale is the newest.
    scalars = {k: float(np.sum([m[k] for m in stacked])) if k in COUNTED_METRICS else
               float(stacked[-1][k]) if k == 'loss_scale' else
               mean_of_finite([m[k] for m in stacked]) for k in stacked[0]}
    scalars['learning_rate'] = float(self.learning_rate(step))
    self.writer.write_scalars(step, scalars)
    self.pending = []
    return scalars


def restore_or_init(config, components: components_lib.Components, manager) -> train_step.TrainState:
  """Returns the newest intact checkpoint's state or, in a new workdir, a fresh one."""
  if manager.latest_step() is None:
    state = components_lib.initial_state(config, components)
    logging.info('Starting a new run: %d parameters.', count_params(state.params))
    return state
  return checkpoints.restore(manager, components_lib.abstract_state(config, components))


def check_data(config: schema.Config) -> tuple[str, ...]:
  """Returns the class names of a class-conditional run's dataset (() otherwise) once its splits open with images.

  The train split (and the eval split, when evaluations read it) must hold images.

  A class-conditional run's dataset must have labels, model.num_classes classes of them, and the class
  names in sampling.labels must be its (or --mode=sample would refuse them only after training).
  """
  reads_eval_split = config.eval.every_steps and not config.eval.reference_stats
  data.check_dataset(config.data, ('train',) + ((config.data.eval_split,) if reads_eval_split else ()),
                     num_classes=config.model.num_classes)
  if not config.model.num_classes:
    return ()
  class_names = data.class_names(config.data)
  sampler.resolve_labels(config.sampling.labels, class_names, config.model.num_classes, config.sampling.num_samples)
  return class_names


def resume_or_start(config: schema.Config, components: components_lib.Components, workdir: str,
                    allow_config_change: bool = False):
  """Returns (manager, config changes, state, class names): the newest intact checkpoint's state, or a fresh one.

  The class names are check_data's (() for a finished run, which is not checked, or an unconditional one).

  Nothing is written before the data opens: a workdir with checkpoints is read first (a finished run
  comes back from there having written nothing), then the dataset is checked, and only then is a new
  workdir created.
  """
  existing = os.path.isdir(paths.Workdir(workdir).checkpoints)
  if existing:
    manager, changes = open_workdir(config, workdir, allow_config_change)
    state = restore_or_init(config, components, manager)
    if int(state.step) >= config.training.num_steps:
      return manager, changes, state, ()
  class_names = check_data(config)
  workdir_lib.check_writable(workdir)
  if not existing:
    manager, changes = open_workdir(config, workdir, allow_config_change)
    state = restore_or_init(config, components, manager)
  return manager, changes, state, class_names


def train_and_evaluate(config: schema.Config, workdir: str,
                       allow_config_change: bool = False) -> train_step.TrainState | None:
  """Trains to config.training.num_steps, resuming from workdir's latest checkpoint; returns the final state.

  Returns None, at once, when the workdir's run has already reached num_steps.
  """
  components = components_lib.build(config)
  evaluation = None
  if config.eval.every_steps:  # evaluation loads torch: only runs that evaluate pay for it
    from ddpm_jax.evaluation import scores  # pylint: disable=g-import-not-at-top
    evaluation = scores.make_evaluation(config, components)  # fails here, before training, without Inception
  t = config.training
  manager, config_changes, state, class_names = resume_or_start(config, components, workdir, allow_config_change)
  if int(state.step) >= t.num_steps:  # before config.json is recorded: a run with nothing to do writes nothing
    manager.close()
    logging.info('The run in %s already finished at step %d (training.num_steps=%d).', workdir, state.step, t.num_steps)
    print(f'Run already finished at step {int(state.step)} (training.num_steps={t.num_steps}); nothing to do.')
    return None
  if jax.process_index() == 0:  # only once the state fits the config: a refused restore leaves config.json as it was
    workdir_lib.record_config(workdir, config, config_changes)
    if config.model.num_classes:  # what the labels mean, for grids, --mode=sample's class names and the report
      workdir_lib.write_class_names(workdir, class_names)  # read once, by check_data
  # The batches are a function of the step alone: the input starts at the restored step's batch.
  train_input = TrainInput(config, components.mesh, start_step=int(state.step))
  writer = writers.create_writer(config, workdir)  # TensorBoard (process 0), the log, and wandb if asked
  if int(state.step) == 0:
    writer.write_hparams(hparams(config))
  try:
    state = run_loop(config, components, state, train_input, manager, writer, workdir, evaluation)
  finally:
    close_quietly(manager, writer, train_input)
  return state


def close_quietly(manager, writer, train_input) -> None:
  """Waits for the pending save and closes the writers; their errors are logged, not raised over the loop's."""
  # close, not flush: it also finishes the wandb run, which would otherwise wait for the process to exit.
  for close in (manager.wait_until_finished, writer.close, train_input.close):
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except  # the loop already reported what matters
      logging.warning('While closing the run: %s', checkpoints.error_reason(e))


def hparams(config: schema.Config) -> dict:
  """Returns the config flattened to {'a.b': scalar} (hparams take scalars: sequences become strings)."""
  return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
          for key, value in workdir_lib.flatten(convert.to_dict(config)).items()}


class StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop checks, so a preempted run saves and exits cleanly."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def check_finite(state, manager, max_nonfinite_steps: int) -> None:
  """Raises NonFiniteError when the last max_nonfinite_steps steps were all NaN/Inf (a host sync)."""
  streak = int(state.nonfinite_streak)
  if streak >= max_nonfinite_steps:
    raise errors.NonFiniteError(
        f'training stopped at step {int(state.step)}: {streak} steps in a row had a NaN/Inf loss or gradient '
        f'(none was applied); the last good checkpoint is step {manager.latest_step()} in {manager.directory}')


def save_checkpoint(manager, step: int, state, previous_step: int | None) -> int:
  """Returns `step` once its save has started, after checking that the previous save succeeded."""
  if previous_step is not None:
    checkpoints.check_saved(manager, previous_step)
  checkpoints.save(manager, step, state)
  return step


def log_period(step: int, metrics_log: MetricsLog, shown: progress.TrainProgress, writer) -> None:
  """Writes the period's metric means and training's own rate (compiling and paused work excluded), and shows them."""
  steps_per_sec = shown.report(step, metrics_log.write(step))
  if steps_per_sec is not None:
    writer.write_scalars(step, {'steps_per_sec': steps_per_sec})


def evaluate_in_loop(evaluation, state, workdir: str, step: int, writer) -> str:
  """Evaluates the state, writes its scores and shows their summary line; returns it."""
  line = evaluation.summary(step, evaluation.evaluate_and_write(state, workdir, step, writer))
  progress.say(line)
  return line


def run_loop(config, components, state, train_input, manager, writer, workdir, evaluation=None):
  """Returns the state after training from state.step to num_steps (or to a SIGTERM/SIGINT), with the periodic actions."""
  t = config.training
  first_step = int(state.step)
  logging.info('Training from step %d to %d.', first_step, t.num_steps)
  logging.info('Process %d of %d, %d of %d devices.', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  shown = progress.TrainProgress(first_step, t.num_steps)  # a live bar on a terminal, else a line per period
  metrics_log = MetricsLog(writer, components.learning_rate)
  saved_step, last_evaluation = None, None
  with StopRequest() as stop:
    for step in range(first_step + 1, t.num_steps + 1):
      state, metrics = components.step_fn(state, train_input.next())
      metrics_log.add(metrics)
      shown.step(step, metrics)
      if is_time(step, t.log_every_steps, t.num_steps):
        log_period(step, metrics_log, shown, writer)
        check_finite(state, manager, t.max_nonfinite_steps)
        if saved_step is not None:
          checkpoints.check_saved(manager, saved_step)
      if is_time(step, t.sample_every_steps, t.num_steps):
        with shown.paused(state, 'grid'):
          grids.write_grid(config, components, state, workdir, writer, step)
      if t.phema_sigma_rels and is_time(step, t.phema_every_steps, t.num_steps):
        with shown.paused(state, 'phema snapshot'):
          phema_snapshots.write_snapshots(workdir, state, t.phema_sigma_rels, t.phema_dtype)
      if evaluation is not None and is_time(step, config.eval.every_steps, t.num_steps):
        with shown.paused(state, 'evaluate'):
          last_evaluation = evaluate_in_loop(evaluation, state, workdir, step, writer)
      if is_time(step, t.checkpoint_every_steps, t.num_steps) or stop.signal:
        with shown.paused(state, 'save'):
          saved_step = save_checkpoint(manager, step, state, saved_step)
      if stop.signal:
        break
  finish(manager, saved_step, shown, int(state.step), last_evaluation, stop.signal)
  return state


def finish(manager, saved_step: int | None, shown: progress.TrainProgress, step: int, last_evaluation: str | None,
           signal_name: str | None) -> None:
  """Returns once the last checkpoint is on disk, after the closing line (and, after a signal, how to resume)."""
  if saved_step is not None:
    checkpoints.check_saved(manager, saved_step, wait=True)  # a run ends only once its last checkpoint is on disk
  newest = manager.latest_step()
  shown.close(step, os.path.join(str(manager.directory), str(newest)) if newest is not None else None, last_evaluation)
  if signal_name:
    logging.info('%s received: saved checkpoint %d and stopped; run the same command to resume.', signal_name,
                 saved_step)
    print(f'{signal_name}: saved checkpoint {saved_step}; run the same command to resume.')

