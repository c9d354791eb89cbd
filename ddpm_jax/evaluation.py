"""The chosen metrics (config.eval.metrics: FID, KID, MS-SSIM, ...) of EMA samples, in training and in --mode=eval."""
import json
import os

import jax
import ml_collections
from absl import logging

from ddpm_jax import components as components_lib
from ddpm_jax import data
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
  """Returns the sampler settings of evaluations: eval's sampler and steps, sampling's variance, eta and clipping."""
  s = config.sampling
  return {'sampler': config.eval.sampler, 'num_steps': config.eval.sampling_steps, 'variance': s.variance,
          'eta': s.eta, 'clip_denoised': s.clip_denoised}


def settings(config: ml_collections.ConfigDict) -> dict:
  """Returns what makes metrics comparable: the sampler, its steps, the variance and the sample count."""
  e = config.eval
  return {'sampler': e.sampler, 'sampling_steps': e.sampling_steps, 'variance': config.sampling.variance,
          'eta': config.sampling.eta, 'num_samples': e.num_samples}


class Evaluation:
  """Holds what every evaluation of a run reuses: the Inception extractor, the reference and the sampler.

  Inception loads, and the reference features are computed, only if a chosen metric needs them.
  """

  def __init__(self, config: ml_collections.ConfigDict, components: components_lib.Components):
    self.config = config
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
      count = min(c.eval.num_reference, len(data.make_source(c.data, c.data.eval_split, c.seed)))
      features = reference.reference_features(
          lambda: data.make_eval_iterator(c.data, c.data.eval_split, batch_size=64, max_examples=count,
                                          seed=c.seed),
          reference_cache_dir(c), dataset=f'{c.data.dataset}-seed{c.seed}', split=c.data.eval_split,
          image_size=c.data.image_size, count=count, extractor=self.extractor)
      self._reference = reference.make_reference(features)
    return self._reference

  def evaluate(self, params, rng) -> dict:
    """Returns the metrics of eval.num_samples samples of params, streamed batch by batch, plus the settings.

    Batch i's noise is `keys.eval_key(rng, i)`: the same at every step, so metric curves are less noisy.
    """
    e = self.config.eval
    scorer = evaluator.Evaluator(self.extractor, self.reference, metrics=e.metrics, ms_ssim_pairs=e.ms_ssim_pairs,
                                 total=e.num_samples, seed=self.config.seed)
    for batch in self.sampler.batches(params, lambda i: keys.eval_key(rng, i), e.num_samples, e.batch_size):
      scorer.update(convert.to_torch_uint8_nchw(batch))
    return {**scorer.result(), **settings(self.config)}

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
  """Returns where reference features are cached; a weights file of its own gets a folder of its own."""
  root = config.eval.reference_cache_dir or os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'ddpm_jax', 'reference_features')
  weights = config.eval.inception_weights
  return os.path.join(root, 'default' if not weights else f'weights-{abs(hash(os.path.abspath(weights))):x}')


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
  return (f'step {step}: {metrics_lib.summary(names, metrics)}  (n={metrics["num_samples"]}, {metrics["sampler"]} '
          f'{metrics["sampling_steps"]} steps, {metrics["variance"]})')
