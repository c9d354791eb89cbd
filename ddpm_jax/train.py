"""The training loop: state, periodic logging, sample grids, evaluation and checkpoints; and sampling."""
import dataclasses
import os
import signal

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from ddpm_jax import checkpoints, errors, images, schedules, sharding, train_step
from ddpm_jax import workdir as workdir_lib
from ddpm_jax.train_input import TrainInput
from ddpm_jax.models.unet import UNet, UNetConfig, count_params


@dataclasses.dataclass(frozen=True)
class Components:
  """What a run is built from: the model, its schedule and optimizer, and the jitted functions."""
  model: UNet
  mesh: object
  schedule: schedules.Schedule
  optimizer: object
  learning_rate: object
  step_fn: object
  sample_fn: object


def build(config: ml_collections.ConfigDict) -> Components:
  """Returns the model, schedule, optimizer, jitted train step and sampler the config describes."""
  model = UNet(UNetConfig(**config.model))
  schedule = schedules.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
  t = config.training
  optimizer = train_step.make_optimizer(t.learning_rate, t.warmup_steps, t.grad_clip)
  mesh = sharding.make_mesh()
  objective = dict(loss=config.diffusion.loss, prediction=config.diffusion.prediction, ema_decay=t.ema_decay)
  if config.data.on_device:
    step_fn = train_step.make_device_data_train_step(
        model.apply, schedule, optimizer, **objective, batch_size=t.batch_size, flip=config.data.random_flip,
        batch_sharding=sharding.batch_sharded(mesh))
  else:
    step_fn = train_step.make_train_step(model.apply, schedule, optimizer, **objective)
  s = config.sampling
  sample_fn = jax.jit(train_step.make_sampler(
      model.apply, schedule, sampler=s.sampler, num_steps=s.num_steps, variance=s.variance, eta=s.eta,
      clip_denoised=s.clip_denoised, prediction=config.diffusion.prediction, mesh=mesh), static_argnums=2)
  return Components(model, mesh, schedule, optimizer, train_step.learning_rate_schedule(t.learning_rate, t.warmup_steps),
                    step_fn, sample_fn)


def initial_state(config: ml_collections.ConfigDict, components: Components) -> train_step.TrainState:
  """Returns the freshly initialised train state of the config's seed."""
  params = train_step.init_params(components.model, config.data.image_size, config.seed)
  rng = jax.random.PRNGKey(config.seed)
  state = train_step.create_train_state(params, components.optimizer, rng)
  return sharding.replicate(state, components.mesh)


def abstract_state(config: ml_collections.ConfigDict, components: Components):
  """Returns the shapes, dtypes and shardings of the train state, without computing it."""
  return sharding.abstract_replicated(jax.eval_shape(lambda: initial_state(config, components)), components.mesh)


def open_workdir(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False):
  """Returns (the workdir's checkpoint manager, the config's changes) once the config may train there."""
  workdir_lib.check_writable(workdir)
  manager = checkpoints.make_manager(workdir, config.training.keep_checkpoints)
  changes = workdir_lib.check_config(workdir, config, manager.latest_step() is not None, allow_config_change)
  return manager, changes


def is_time(step: int, every: int, num_steps: int) -> bool:
  """Returns whether a periodic action is due after `step` (always at the last step)."""
  return step == num_steps or (every > 0 and step % every == 0)


def grid_key(state: train_step.TrainState):
  """Returns the sampling key of the periodic grids: the same noise at every step, to compare progress."""
  return jax.random.fold_in(state.rng, train_step.SAMPLING)


def sample_batches(components: Components, params, rng, num_samples: int, batch_size: int, image_size: int):
  """Yields batches of samples in [-1, 1], num_samples in all; every batch is sampled at one compiled shape."""
  shape = (batch_size, image_size, image_size, 3)
  for index, start in enumerate(range(0, num_samples, batch_size)):
    batch = components.sample_fn(params, jax.random.fold_in(rng, index), shape)
    yield batch[:min(batch_size, num_samples - start)]


def write_grid(config, components: Components, state, workdir: str, writer, step: int) -> str | None:
  """Samples the EMA params, writes workdir/samples/step_<N>.png and an image summary; returns the path.

  Every process samples (the params span them all); only process 0 writes, and the others return None.
  """
  n = config.training.num_grid_samples
  batches = sample_batches(components, state.ema_params, grid_key(state), n, n, config.data.image_size)
  grid_samples = next(batches)
  if jax.process_index() != 0:
    return None
  path, images_uint8 = images.save_samples(os.path.join(workdir, 'samples'), f'step_{step}', grid_samples)
  writer.write_images(step, {'samples': images.make_grid(images_uint8)[None]})
  logging.info('Wrote %s', path)
  return path


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
    # Skipped (non-finite) steps are counted, not averaged into the loss.
    scalars = {k: float(np.sum([m[k] for m in stacked]) if k == 'nonfinite_steps' else
                        np.nanmean([m[k] for m in stacked])) for k in stacked[0]}
    scalars['learning_rate'] = float(self.learning_rate(step))
    self.writer.write_scalars(step, scalars)
    self.pending = []
    return scalars


def restore_or_init(config, components: Components, manager, train_iter):
  """Returns the latest checkpoint's state (positioning train_iter) or, in a new workdir, a fresh one."""
  if manager.latest_step() is None:
    state = initial_state(config, components)
    logging.info('Starting a new run: %d parameters.', count_params(state.params))
    return state
  return checkpoints.restore(manager, abstract_state(config, components), train_iter)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> train_step.TrainState:
  """Trains to config.training.num_steps, resuming from workdir's latest checkpoint; returns the final state.

  Returns None, at once, when the workdir's run has already reached num_steps.
  """
  components = build(config)
  evaluation = make_evaluation(config, components)  # fails here, before training, if Inception can't be had
  t = config.training
  manager, config_changes = open_workdir(config, workdir, allow_config_change)
  train_input = TrainInput(config, components.mesh)
  try:
    state = restore_or_init(config, components, manager, train_input.iterator)  # the newest intact checkpoint
  except BaseException:
    train_input.close()
    raise
  if jax.process_index() == 0:  # only once the state fits the config: a refused restore leaves config.json as it was
    workdir_lib.record_config(workdir, config, config_changes)
  if int(state.step) >= t.num_steps:
    train_input.close()
    logging.info('The run in %s already finished at step %d (training.num_steps=%d).', workdir, state.step, t.num_steps)
    print(f'Run already finished at step {int(state.step)} (training.num_steps={t.num_steps}); nothing to do.')
    return None
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if int(state.step) == 0:
    writer.write_hparams(hparams(config))
  try:
    state = run_loop(config, components, state, train_input, manager, writer, workdir, evaluation)
  finally:
    close_quietly(manager, writer, train_input)
  return state


def close_quietly(manager, writer, train_input) -> None:
  """Waits for the pending save and flushes the writers; their errors are logged, not raised over the loop's."""
  for close in (manager.wait_until_finished, writer.flush, train_input.close):
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except  # the loop already reported what matters
      logging.warning('While closing the run: %s', checkpoints.error_reason(e))


def hparams(config: ml_collections.ConfigDict) -> dict:
  """Returns the config flattened to {'a.b': scalar} (hparams take scalars: sequences become strings)."""
  return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
          for key, value in workdir_lib.flatten(config.to_dict()).items()}


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


def save_checkpoint(manager, step: int, state, train_iter, previous_step: int | None) -> int:
  """Returns `step` once its save has started, after checking that the previous save succeeded."""
  if previous_step is not None:
    checkpoints.check_saved(manager, previous_step)
  checkpoints.save(manager, step, state, train_iter)
  return step


def run_loop(config, components, state, train_input, manager, writer, workdir, evaluation=None):
  """Returns the state after training from state.step to num_steps (or to a SIGTERM/SIGINT), with the periodic actions."""
  t = config.training
  first_step = int(state.step)
  logging.info('Training from step %d to %d.', first_step, t.num_steps)
  progress = periodic_actions.ReportProgress(num_train_steps=t.num_steps, writer=writer,
                                             every_steps=t.log_every_steps)
  metrics_log = MetricsLog(writer, components.learning_rate)
  saved_step = None
  with StopRequest() as stop:
    for step in range(first_step + 1, t.num_steps + 1):
      state, metrics = components.step_fn(state, train_input.next())
      metrics_log.add(metrics)
      progress(step)
      if is_time(step, t.log_every_steps, t.num_steps):
        metrics_log.write(step)
        check_finite(state, manager, t.max_nonfinite_steps)
        if saved_step is not None:
          checkpoints.check_saved(manager, saved_step)
      if is_time(step, t.sample_every_steps, t.num_steps):
        write_grid(config, components, state, workdir, writer, step)
      if evaluation is not None and is_time(step, config.eval.every_steps, t.num_steps):
        evaluate_and_write(evaluation, state, workdir, step, writer)
      if is_time(step, t.checkpoint_every_steps, t.num_steps) or stop.signal:
        saved_step = save_checkpoint(manager, step, state, train_input.iterator, saved_step)
      if stop.signal:
        break
  if saved_step is not None:
    checkpoints.check_saved(manager, saved_step, wait=True)  # a run ends only once its last checkpoint is on disk
  if stop.signal:
    logging.warning('%s received: saved checkpoint %d and stopped; run the same command to resume.', stop.signal,
                    saved_step)
    print(f'{stop.signal}: saved checkpoint {saved_step}; run the same command to resume.')
  return state


def make_evaluation(config, components: Components | None = None, force: bool = False):
  """Returns the run's Evaluation when eval.every_steps > 0 (or force), else None; checks Inception first."""
  if not (config.eval.every_steps or force):
    return None
  # eval_bridge loads torch: only when evaluating.
  from ddpm_jax import evaluation as evaluation_lib  # pylint: disable=g-import-not-at-top
  evaluation_lib.check_setup(config, force=force)
  components = components or build(config)
  return evaluation_lib.Evaluation(config, components.model, components.schedule, components.mesh)


def evaluate_and_write(evaluation, state, workdir: str, step: int, writer=None) -> dict:
  """Evaluates the EMA params of state; writes workdir/eval/step_<N>.json and eval/* scalars."""
  from ddpm_jax import evaluation as evaluation_lib  # pylint: disable=g-import-not-at-top
  metrics = evaluation.evaluate(state.ema_params, evaluation_lib.eval_key(state))
  if jax.process_index() == 0:  # every process evaluates (the params span them all); one writes
    evaluation_lib.write_results(workdir, step, metrics, writer)
  return metrics


def evaluate_checkpoints(config: ml_collections.ConfigDict, workdir: str, checkpoint_step: int | None = None,
                         allow_config_change: bool = False):
  """Evaluates one checkpoint, or every checkpoint of workdir; returns {step: metrics}."""
  from ddpm_jax import evaluation as evaluation_lib  # pylint: disable=g-import-not-at-top
  workdir_lib.check_config(workdir, config, True, allow_config_change)
  components = build(config)
  evaluation = make_evaluation(config, components, force=True)
  manager = checkpoints.make_manager(workdir, config.training.keep_checkpoints)
  steps = [checkpoint_step] if checkpoint_step is not None else sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f'no checkpoint in {manager.directory} to evaluate')
  results = {}
  for step in steps:
    state = checkpoints.restore(manager, abstract_state(config, components), step=step)
    results[step] = evaluate_and_write(evaluation, state, workdir, step)
    print(evaluation_lib.summary(step, results[step]))
  return results


def sample(config: ml_collections.ConfigDict, workdir: str, checkpoint_step: int | None = None,
           allow_config_change: bool = False) -> str | None:
  """Writes sampling.num_samples EMA samples of a checkpoint as a PNG grid and an .npz; returns the PNG path.

  Returns None on processes other than 0, which sample but write nothing.
  """
  workdir_lib.check_config(workdir, config, True, allow_config_change)
  components = build(config)
  manager = checkpoints.make_manager(workdir, config.training.keep_checkpoints)
  state = checkpoints.restore(manager, abstract_state(config, components), step=checkpoint_step)
  step = int(state.step)
  s = config.sampling
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, train_step.SAMPLING), step)
  batches = [np.asarray(b) for b in sample_batches(components, state.ema_params, rng, s.num_samples, s.batch_size,
                                                   config.data.image_size)]
  name = f'sample_step_{step}_{s.sampler}{components.schedule.num_timesteps if s.sampler == "ddpm" else s.num_steps}'
  if jax.process_index() != 0:  # every process samples (the params span them all); process 0 writes
    return None
  path, images_uint8 = images.save_samples(os.path.join(workdir, 'samples'), name, np.concatenate(batches))
  np.savez_compressed(os.path.join(workdir, 'samples', f'{name}.npz'), images=images_uint8)
  logging.info('Wrote %s and %s.npz', path, name)
  print(f'Wrote {len(images_uint8)} samples of step {step}: {path} and {name}.npz')
  return path
