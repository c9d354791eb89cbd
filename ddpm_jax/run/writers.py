"""Weights & Biases logging: a CLU MetricWriter beside the default TensorBoard writer, one wandb run per workdir.

wandb is an optional extra and takes a while to import, so it is imported only when config.logging.wandb asks
for it. The run's id lives in the workdir (paths.Workdir.wandb_run_id), so a resumed workdir logs to the same wandb run.
"""
import os
import secrets
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface

from ddpm_jax import paths
from ddpm_jax.config import schema

STEP_KEY = 'step'  # the x-axis of every metric (see WandbWriter)


class WandbWriter(interface.MetricWriter):
  """Sends scalars, images and hparams to a wandb run; videos, audio, texts and histograms stay in TensorBoard.

  Steps go in as a metric (STEP_KEY), not as wandb's own step: a resumed run repeats the steps between its
  last checkpoint and the interruption, and wandb drops any row whose own step is not above the last one.
  """

  def __init__(self, run):
    self.run = run
    run.define_metric(STEP_KEY)
    run.define_metric('*', step_metric=STEP_KEY)

  def _log(self, step: int, values: Mapping[str, Any]) -> None:
    self.run.log({STEP_KEY: int(step), **values})

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._log(step, {key: float(value) for key, value in scalars.items()})

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Logs each uint8 [N, H, W, C] batch (C = 1 or 3) as N wandb.Images (one, for the sample grid)."""
    import wandb  # pylint: disable=g-import-not-at-top
    logged = {}
    for key, batch in images.items():
      frames = [wandb.Image(image) for image in np.asarray(batch)]
      logged[key] = frames[0] if len(frames) == 1 else frames
    self._log(step, logged)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    # A resumed run may have changed the keys that don't change what is trained (workdir.FREE_KEYS).
    self.run.config.update(dict(hparams), allow_val_change=True)

  def write_summaries(self, step, values, metadata=None) -> None:
    del step, values, metadata

  def write_videos(self, step, videos) -> None:
    del step, videos

  def write_audios(self, step, audios, *, sample_rate) -> None:
    del step, audios, sample_rate

  def write_texts(self, step, texts) -> None:
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None) -> None:
    del step, arrays, num_buckets

  def flush(self) -> None:
    pass  # run.log hands each row to wandb's service at once

  def close(self) -> None:
    self.run.finish()


def run_id(workdir: str) -> str:
  """Returns the workdir's wandb run id, creating and saving one on the workdir's first wandb run."""
  path = paths.Workdir(workdir).wandb_run_id
  if os.path.exists(path):
    with open(path) as f:
      return f.read().strip()
  os.makedirs(workdir, exist_ok=True)
  new_id = secrets.token_hex(6)  # wandb takes any id of letters and digits; it is unique in its project
  with open(path, 'w') as f:
    f.write(new_id + '\n')
  return new_id


def init_run(logging_config: schema.LoggingConfig, workdir: str):
  """Returns a started wandb run for the workdir (resumed when the workdir has one); raises a one-line ValueError."""
  import wandb  # pylint: disable=g-import-not-at-top
  lc = logging_config
  try:
    return wandb.init(project=lc.wandb_project, entity=lc.wandb_entity or None,
                      name=lc.wandb_run_name or os.path.basename(os.path.normpath(workdir)),
                      mode=lc.wandb_mode or None, id=run_id(workdir), resume='allow', dir=workdir)
  except wandb.errors.Error as e:  # no API key, an unknown project or entity, no network
    message = ' '.join(str(e).split())
    raise ValueError(f'logging.wandb=True: wandb could not start a run ({message}); run `wandb login`, or set '
                     f'--config.logging.wandb_mode=offline and `wandb sync` later') from None


def create_writer(config: schema.Config, workdir: str,
                  process_index: int | None = None) -> interface.MetricWriter:
  """Returns the run's writer: TensorBoard and the log, plus wandb on process 0 when config.logging.wandb.

  Other processes get the log alone, as with metric_writers.create_default_writer(just_logging=True).
  """
  process_index = jax.process_index() if process_index is None else process_index
  default = metric_writers.create_default_writer(workdir, just_logging=process_index > 0)
  if process_index > 0 or not config.logging.wandb:
    return default
  return metric_writers.MultiWriter([default, WandbWriter(init_run(config.logging, workdir))])
