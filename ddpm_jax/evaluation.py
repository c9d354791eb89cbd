"""The chosen metrics (config.eval.metrics: FID, KID, MS-SSIM, ...) of EMA samples, in training and in --mode=eval."""
import contextlib
import hashlib
import json
import os
import re

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from ddpm_jax import components as components_lib
from ddpm_jax import data, eval_protocol
from ddpm_jax.core import keys
from eval_bridge import convert, evaluator, fidelity, metrics as metrics_lib, reference


def check_setup(config: ml_collections.ConfigDict, force: bool = False) -> None:
  """Raises a one-line ValueError, before any training, when evaluation is on and needs Inception that can't be had."""
  if (config.eval.every_steps or force) and metrics_lib.needs_inception(config.eval.metrics):
    try:
      fidelity.check_inception_weights(config.eval.inception_weights)
    except RuntimeError as e:
      raise ValueError(str(e)) from None


def sampler_section(config: ml_collections.ConfigDict) -> dict:
  """Returns evaluations' sampler settings: eval's sampler, steps and spacing; sampling's variance, eta, clipping."""
  s = config.sampling
  return {'sampler': config.eval.sampler, 'num_steps': config.eval.sampling_steps, 'variance': s.variance,
          'eta': s.eta, 'clip_denoised': s.clip_denoised, 'timestep_spacing': config.eval.timestep_spacing}


def settings(config: ml_collections.ConfigDict) -> dict:
  """Returns what makes metrics comparable: the sampler, its steps, the variance and the sample count."""
  e = config.eval
  return {'sampler': e.sampler, 'sampling_steps': e.sampling_steps, 'variance': config.sampling.variance,
          'eta': config.sampling.eta, 'timestep_spacing': e.timestep_spacing, 'num_samples': e.num_samples}


class Evaluation:
  """Holds what every evaluation of a run reuses: the Inception extractor, the reference and the sampler.

  Inception loads, and the reference features are computed, only if a chosen metric needs them.
  """

  def __init__(self, config: ml_collections.ConfigDict, components: components_lib.Components,
               progress: bool = False):
    config = eval_protocol.resolve(config)  # what the protocol evaluates: eval.* or the paper's settings
    self.config, self.progress = config, progress and jax.process_index() == 0
    self.extractor = None
    if metrics_lib.needs_inception(config.eval.metrics):
      self.extractor = fidelity.load_inception(config.eval.inception_weights, fidelity.default_device())
    self.sampler = components_lib.make_sampler(config, components.model, components.schedule, components.mesh,
                                               sampler_section(config))
    self._reference = None

  def reference(self) -> reference.Reference:
    """Returns the reference set's features, computed on first use and cached on disk."""
    if self._reference is None:
      c = self.config
      count = min(c.eval.num_reference, len(data.make_source(c.data, c.data.eval_split)))
      images = lambda: data.make_eval_iterator(c.data, c.data.eval_split, batch_size=64, max_examples=count)
      self._reference = reference.reference_set(
          images, reference_cache_dir(c), dataset=reference_key(c, images()), split=c.data.eval_split,
          image_size=c.data.image_size, count=count,
          extractor=self.extractor if metrics_lib.needs_reference_features(c.eval.metrics) else None,
          image_statistics=metrics_lib.needs_image_statistics(c.eval.metrics))
    return self._reference

  def evaluate(self, params, rng) -> dict:
    """Returns the metrics of eval.num_samples samples of params, streamed batch by batch, plus the settings.

    Batch i's noise is `keys.eval_key(rng, i)`: the same at every step, so metric curves are less noisy.
    """
    e = self.config.eval
    # The paper protocol's Inception runs in full float32 (no TF32), as the papers' did.
    with fidelity.full_float32() if e.protocol == 'paper' else contextlib.nullcontext():
      scorer = evaluator.Evaluator(self.extractor, self.reference, metrics=e.metrics, ms_ssim_pairs=e.ms_ssim_pairs,
                                   total=e.num_samples, seed=self.config.seed, progress=self.progress)
      batches = self.sampler.batches(params, lambda i: keys.eval_key(rng, i), e.num_samples, e.batch_size)
      if self.progress:  # samples and their features stream: memory holds one batch of images at a time
        batches = tqdm.tqdm(batches, total=-(-e.num_samples // e.batch_size), unit='batch',
                            desc=f'{e.num_samples} samples, {self.sampler.name}')
      for batch in batches:
        scorer.update(convert.to_torch_uint8_nchw(batch))
      result = scorer.result()
    return {**result, **settings(self.config), **eval_protocol.settings(self.config),
            'metric_settings': scorer.settings()}

  def evaluate_and_write(self, state, workdir: str, step: int, writer=None) -> dict:
    """Evaluates the EMA params of state; writes workdir/eval/step_<N>.json and eval/* scalars."""
    metrics = self.evaluate(state.ema_params, state.rng)
    if jax.process_index() == 0:  # every process evaluates (the params span them all); one writes
      write_results(workdir, step, metrics, writer, self.config.eval.metrics)
    return metrics

  def summary(self, step: int, metrics: dict) -> str:
    """Returns the one-line summary of an evaluation of the run's metrics (the module's `summary`)."""
    return summary(step, metrics, self.config.eval.metrics)


def reference_cache_dir(config: ml_collections.ConfigDict) -> str:
  """Returns where reference features are cached (eval.reference_cache_dir, else ~/.cache/ddpm_jax/...)."""
  return config.eval.reference_cache_dir or os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'ddpm_jax', 'reference_features')


def content_digest(batches) -> str:
  """Returns the SHA-256 of the uint8 images the batches hold (shapes and bytes): what the reference set is."""
  digest = hashlib.sha256()
  for batch in batches:
    batch = np.ascontiguousarray(batch)
    digest.update(repr(batch.shape).encode())
    digest.update(batch.tobytes())
  return digest.hexdigest()


def weights_digest(path: str) -> str:
  """Returns the SHA-256 of an Inception weights file; '' (torch-fidelity's download) is named by its pinned URL."""
  if not path:
    return 'torch-fidelity-' + fidelity.EXTRACTOR_NAME
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 24), b''):
      digest.update(chunk)
  return digest.hexdigest()


def reference_key(config: ml_collections.ConfigDict, images) -> str:
  """Returns the cache key of the reference set: the dataset's name, its images' digest and the weights' digest.

  Keyed by content, so a folder that gained images or another weights file computes new features,
  and any process (Python's hash() differs per process) finds the ones already computed.
  """
  name = re.sub(r'[^A-Za-z0-9_.-]+', '_', config.data.dataset)[-40:]
  return f'{name}-images{content_digest(images)[:16]}-inception{weights_digest(config.eval.inception_weights)[:16]}'


def write_results(workdir: str, step: int, metrics: dict, writer=None, names=metrics_lib.DEFAULT) -> str:
  """Writes workdir/eval/step_<N>.json and, given a writer, eval/<key> scalars of metrics `names`; returns the path."""
  path = os.path.join(workdir, 'eval', f'step_{step}.json')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump({'step': step, **metrics}, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
  if writer is not None:
    writer.write_scalars(step, {f'eval/{k}': metrics[k] for k in metrics_lib.required_keys(names) + ('num_samples',)})
  logging.info('%s', summary(step, metrics, names))
  return path


def summary(step: int, metrics: dict, names=metrics_lib.DEFAULT) -> str:
  """Returns the one-line summary of an evaluation: each metric's fragment (eval_bridge.metrics), then the settings."""
  reference = f' vs {metrics["reference_split"]} ({metrics["num_reference"]})' \
      if 'reference_split' in metrics and 'num_reference' in metrics else ''
  protocol = f', {metrics["protocol"]} protocol' if 'protocol' in metrics else ''
  return (f'step {step}: {metrics_lib.summary(names, metrics)}  (n={metrics["num_samples"]}, '
          f'{sampler_summary(metrics)}){reference}{protocol}')


# The settings each sampler reads; a summary names no other (DDIM has no variance to show, DPM-Solver++ no eta).
_SAMPLER_SETTINGS = {'ddpm': ('variance',), 'ddim': ('eta', 'timestep_spacing')}


def sampler_summary(metrics: dict) -> str:
  """Returns e.g. 'ddpm 1000 steps, beta_tilde', 'ddim 100 steps, eta 0, leading' or 'dpmpp_2m 20 steps'."""
  shown = [f'eta {metrics[key]:g}' if key == 'eta' else str(metrics[key])
           for key in _SAMPLER_SETTINGS.get(metrics['sampler'], ()) if key in metrics]
  return ', '.join([f'{metrics["sampler"]} {metrics["sampling_steps"]} steps', *shown])
