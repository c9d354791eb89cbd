"""The chosen metrics (config.eval.metrics: FID, KID, MS-SSIM, ...) of EMA samples, in training and in --mode=eval."""
import contextlib
import json
import os
import re

import jax
from absl import logging

from ddpm_jax import data, paths
from ddpm_jax.config import schema
from ddpm_jax.core import keys
from ddpm_jax.core import sampler as sampler_lib
from ddpm_jax.evaluation import protocol as eval_protocol
from ddpm_jax.evaluation import reference_stats
from ddpm_jax.evaluation.reference_stats import content_digest, weights_digest  # noqa: F401  # used here; live there
from ddpm_jax.run import build as components_lib
from ddpm_jax.run import progress as progress_lib
from eval_bridge import convert, evaluator, fidelity, metrics as metrics_lib, reference


def check_setup(config: schema.Config, force: bool = False) -> None:
  """Raises a one-line ValueError, before any training or sampling, when evaluation is on and can't run.

  That is: Inception that can't be had, or an eval.reference_stats file that can't serve the chosen
  metrics, or was computed at another image size or with another Inception (reference_stats.check).
  """
  if not (config.eval.every_steps or force):
    return
  if metrics_lib.needs_inception(config.eval.metrics):
    try:  # force is --mode=eval, where eval.every_steps means nothing
      fidelity.check_inception_weights(config.eval.inception_weights,
                                       fidelity.EVAL_MODE_OFF if force else fidelity.TRAINING_OFF)
    except RuntimeError as e:
      raise ValueError(str(e)) from None
  if config.eval.reference_stats:
    reference_stats.check(config)


def settings(config: schema.Config, guidance_scale: float | None = None) -> dict:
  """Returns what makes metrics comparable: the sampler, its steps, the variance and the sample count.

  A class-conditional run's also say how its samples were conditioned: balanced classes, the guidance w
  (eval.guidance_scale, or `guidance_scale`) and its interval.
  """
  e = config.eval
  sampler = {'sampler': e.sampling.sampler, 'sampling_steps': e.sampling.num_steps, 'variance': e.sampling.variance,
             'eta': e.sampling.eta, 'timestep_spacing': e.sampling.timestep_spacing, 'num_samples': e.num_samples}
  if not config.model.num_classes:
    return sampler
  guidance = components_lib.eval_guidance(config, guidance_scale)
  return {**sampler, 'num_classes': config.model.num_classes, 'labels': 'balanced',
          'guidance_scale': guidance.scale, 'guidance_interval': list(guidance.interval)}


def make_evaluation(config: schema.Config, components: components_lib.Components, force: bool = False):
  """Returns the run's Evaluation when eval.every_steps > 0 (or force), else None; checks Inception first."""
  if not (config.eval.every_steps or force):
    return None
  check_setup(config, force=force)
  return Evaluation(config, components, progress=force)  # force: --mode=eval, which shows progress


class Evaluation:
  """Holds what every evaluation of a run reuses: the Inception extractor, the reference and the sampler.

  Inception loads, and the reference features are computed, only if a chosen metric needs them. With
  eval.reference_stats the reference is that file's (checked by `check_setup`, at start-up).
  """

  def __init__(self, config: schema.Config, components: components_lib.Components,
               progress: bool = False):
    config = eval_protocol.resolve(config)  # what the protocol evaluates: eval.* or the paper's settings
    self.config, self.progress = config, progress and jax.process_index() == 0
    self.extractor, self.inception = None, {}
    if metrics_lib.needs_inception(config.eval.metrics):
      self.extractor = fidelity.load_inception(config.eval.inception_weights, fidelity.default_device())
      self.inception = fidelity.inception_record(config.eval.inception_weights)  # which weights scored
    self.components, self.samplers = components, {}
    self.sampler = self.sampler_of(None)
    path = config.eval.reference_stats
    self.reference_file = reference_stats.open_file(path) if path else None
    self._reference = None

  def sampler_of(self, guidance_scale: float | None) -> sampler_lib.Sampler:
    """Returns the evaluation's sampler at guidance w = guidance_scale (None: eval.guidance_scale), built once per w."""
    guidance = components_lib.eval_guidance(self.config, guidance_scale)
    if guidance not in self.samplers:
      c = self.components
      self.samplers[guidance] = components_lib.make_sampler(self.config, c.model, c.schedule, c.mesh,
                                                            self.config.eval.sampling, guidance)
    return self.samplers[guidance]

  def reference(self) -> reference.Reference:
    """Returns the reference set: eval.reference_stats's, else the split's features, computed on first use."""
    if self._reference is None:
      self._reference = load_reference(self.config, self.extractor, self.reference_file, self.progress)
    return self._reference

  def scorer(self) -> evaluator.Evaluator:
    """Returns a new Evaluator of the chosen metrics against the reference (computed when a metric first needs it)."""
    e = self.config.eval
    return evaluator.Evaluator(self.extractor, self.reference, metrics=e.metrics, ms_ssim_pairs=e.ms_ssim_pairs,
                               total=e.num_samples, seed=self.config.seed, metric_seed=e.metric_seed,
                               progress=self.progress)

  def evaluate(self, params, rng, guidance_scale: float | None = None) -> dict:
    """Returns the metrics of eval.num_samples samples of params, streamed batch by batch, plus the settings.

    Batch i's noise is `keys.eval_key(rng, i)`: the same at every step, so metric curves are less noisy. A
    class-conditional model draws every class equally often (sample i is class i mod K), guided by
    eval.guidance_scale, or by `guidance_scale` (a sweep's w).
    """
    e, sampler = self.config.eval, self.sampler_of(guidance_scale)
    k = self.config.model.num_classes
    labels = sampler_lib.balanced_labels(e.num_samples, k) if k else None
    # The paper protocol's Inception runs in full float32 (no TF32), as the papers' did.
    with fidelity.full_float32() if e.protocol == 'paper' else contextlib.nullcontext():
      scorer = self.scorer()
      batches = sampler.batches(params, lambda i: keys.eval_key(rng, i), e.num_samples, e.batch_size, labels)
      # The samples and their features stream: memory holds one batch of images at a time. One line estimates
      # the whole from the first batch; a terminal shows a bar.
      batches = progress_lib.timed_batches(batches, -(-e.num_samples // e.batch_size),
                                           f'Evaluating {e.num_samples} samples ({sampler.name})')
      for batch in batches:
        scorer.update(convert.to_torch_uint8_nchw(batch))
      result = scorer.result()
    source = {} if self.reference_file is None else reference_stats.settings(self.reference_file,
                                                                               self.config.data.image_size)
    return {**result, **settings(self.config, guidance_scale), **eval_protocol.settings(self.config), **source,
            **self.inception, 'metric_settings': scorer.settings()}

  def evaluate_and_write(self, state, workdir: str, step: int, writer=None) -> dict:
    """Evaluates the EMA params of state; writes workdir/eval/step_<N>.json and eval/* scalars."""
    metrics = self.evaluate(state.ema_params, state.rng)
    if jax.process_index() == 0:  # every process evaluates (the params span them all); one writes
      write_results(workdir, step, metrics, writer, self.config.eval.metrics)
    return metrics

  def summary(self, step: int, metrics: dict) -> str:
    """Returns the one-line summary of an evaluation of the run's metrics (the module's `summary`)."""
    return summary(step, metrics, self.config.eval.metrics)


def reference_cache_dir(config: schema.Config) -> str:
  """Returns where reference features are cached (eval.reference_cache_dir, else ~/.cache/ddpm_jax/...)."""
  return config.eval.reference_cache_dir or os.path.join(paths.cache_root(), 'reference_features')


def load_reference(config: schema.Config, extractor, stats: reference_stats.StatsFile | None = None,
                   progress: bool = False) -> reference.Reference:
  """Returns what an evaluation compares with: the file `stats` (eval.reference_stats), else data.eval_split's.

  A split's features and image statistics, as the chosen metrics need them, are cached on disk by content
  (with a progress bar, always); `progress` shows one for an ADM file's images.
  """
  if stats is not None:
    return reference_stats.load(config, stats, extractor, reference_cache_dir(config), progress)
  count = min(config.eval.num_reference, len(data.make_source(config.data, config.data.eval_split)))
  images = lambda: data.make_eval_iterator(config.data, config.data.eval_split, batch_size=64, max_examples=count)
  return reference.reference_set(
      images, reference_cache_dir(config), dataset=reference_key(config, images()), split=config.data.eval_split,
      image_size=config.data.image_size, count=count,
      extractor=extractor if metrics_lib.needs_reference_features(config.eval.metrics) else None,
      image_statistics=metrics_lib.needs_image_statistics(config.eval.metrics))


def reference_key(config: schema.Config, images) -> str:
  """Returns the cache key of the reference set: the dataset's name, its images' digest and the weights' digest.

  Keyed by content, so a folder that gained images or another weights file computes new features,
  and any process (Python's hash() differs per process) finds the ones already computed.
  """
  name = re.sub(r'[^A-Za-z0-9_.-]+', '_', config.data.dataset)[-40:]
  return f'{name}-images{content_digest(images)[:16]}-inception{weights_digest(config.eval.inception_weights)[:16]}'


def write_results(workdir: str, step: int, metrics: dict, writer=None, names=metrics_lib.DEFAULT) -> str:
  """Writes workdir/eval/step_<N>.json and, given a writer, eval/<key> scalars of metrics `names`; returns the path."""
  path = paths.Workdir(workdir).eval_file(step)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump({'step': step, **metrics}, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
  if writer is not None:
    writer.write_scalars(step, scalar_tags(metrics, names))
  logging.info('%s', summary(step, metrics, names))
  return path


STANDIN_GROUP = 'eval_standin_inception'  # TensorBoard's group of stand-in Inception's scores, apart from eval/
STANDIN_MARK = '[stand-in Inception weights: not comparable with real scores]'


def scalar_tags(metrics: dict, names=metrics_lib.DEFAULT) -> dict:
  """Returns {tag: value} of an evaluation: eval/<key>, or eval_standin_inception/<key> if stand-in Inception scored it.

  A tag's name is what TensorBoard and W&B show beside the curve, so a stand-in score is never drawn as a real one.
  """
  standin = metrics.get('standin_inception', False)
  tags = {}
  for cls in metrics_lib.select(names):
    group = STANDIN_GROUP if standin and cls.needs_inception else 'eval'
    tags.update({f'{group}/{key}': metrics[key] for key in cls.keys})
  return {**tags, 'eval/num_samples': metrics['num_samples']}


def summary(step: int, metrics: dict, names=metrics_lib.DEFAULT) -> str:
  """Returns the one-line summary of an evaluation: each metric's fragment (eval_bridge.metrics), then the settings.

  Scores of stand-in Inception weights end with STANDIN_MARK.
  """
  reference = f' vs {metrics["reference_split"]} ({metrics["num_reference"]})' \
      if 'reference_split' in metrics and 'num_reference' in metrics else ''
  protocol = f', {metrics["protocol"]} protocol' if 'protocol' in metrics else ''
  standin = f'  {STANDIN_MARK}' if metrics.get('standin_inception') and metrics_lib.needs_inception(names) else ''
  return (f'step {step}: {metrics_lib.summary(names, metrics)}  (n={metrics["num_samples"]}, '
          f'{sampler_summary(metrics)}){reference}{protocol}{standin}')


# The settings each sampler reads; a summary names no other (DDIM has no variance to show, DPM-Solver++ no eta).
_SAMPLER_SETTINGS = {'ddpm': ('variance',), 'ddim': ('eta', 'timestep_spacing'), 'dpmpp_2m': ('timestep_spacing',),
                     'heun': ('timestep_spacing',)}


def sampler_summary(metrics: dict) -> str:
  """Returns e.g. 'ddpm 1000 steps, beta_tilde', 'ddim 100 steps, eta 0, leading' or 'dpmpp_2m 20 steps'.

  A guided evaluation's ends with its guidance, e.g. ', guidance w 3' or ', guidance w 3 at t 100-700'.
  """
  shown = [f'eta {metrics[key]:g}' if key == 'eta' else str(metrics[key])
           for key in _SAMPLER_SETTINGS.get(metrics['sampler'], ()) if key in metrics]
  if 'guidance_scale' in metrics:
    interval = metrics.get('guidance_interval') or ()
    where = f' at t {interval[0]}-{interval[1]}' if interval else ''
    shown.append(f'guidance w {metrics["guidance_scale"]:g}{where}')
  return ', '.join([f'{metrics["sampler"]} {metrics["sampling_steps"]} steps', *shown])
