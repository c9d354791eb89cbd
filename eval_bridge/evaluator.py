"""The evaluator: uint8 samples in (streamed), named scalars out, from the chosen metric plug-ins.

One `Evaluator` per evaluation round: `update` it with each batch of generated
images as they are sampled, then read `result()`. The plug-ins (eval_bridge/metrics/)
keep only what they need: Inception features and logits (computed once per batch
for FID, KID, IS and PR together), a few statistics per image for the artefact
metrics and a bounded reservoir for MS-SSIM.
"""
from typing import Callable

import torch

from eval_bridge import fidelity
from eval_bridge import metrics as metrics_lib
from eval_bridge import reference as reference_lib


class Evaluator:
  """Scores streamed generated samples with the chosen metrics: `update(uint8 NCHW batch)`, then `result()`.

  Args:
    extractor: `fidelity.load_inception(...)`; may be None when no chosen metric needs it.
    reference: the reference set, or a zero-argument callable returning it, called
      only if a chosen metric needs it (FID, KID, PR: its features; artefacts: its
      image statistics).
    metrics: names of plug-ins (`eval_bridge.metrics.REGISTRY`).
    ms_ssim_pairs, ms_ssim_images: MS-SSIM's random pairs and reservoir size.
    kid_subsets: KID's subsets.
    seed: MS-SSIM's pairs' seed; metric_seed: IS's shuffle, KID's subsets and PR's reference subsample
      (None = seed; eval.metric_seed, torch-fidelity's 2020, in runs).
    batch_size, total, progress: Inception's batch size and progress bar.
  """

  def __init__(self, extractor, reference: reference_lib.Reference | Callable[[], reference_lib.Reference] | None,
               *, metrics=metrics_lib.DEFAULT, ms_ssim_pairs: int = 500, ms_ssim_images: int = 1000,
               kid_subsets: int = 100, seed: int = 0, metric_seed: int | None = None, batch_size: int = 64,
               total: int | None = None, progress: bool = True):
    chosen = metrics_lib.select(metrics)
    for needed, given, what in (('needs_inception', extractor, 'the Inception extractor'),
                                ('needs_reference', reference, 'a reference set')):
      names = [cls.name for cls in chosen if getattr(cls, needed)]
      if names and given is None:
        raise ValueError(f'metrics {", ".join(names)} need {what}, got None; pass one or choose other metrics')
    device = next(extractor.parameters()).device if extractor is not None else fidelity.default_device()
    self.context = metrics_lib.Context(
        extractor=extractor, reference_source=reference, needs_reference=any(cls.needs_reference for cls in chosen),
        seed=seed, metric_seed=seed if metric_seed is None else metric_seed, ms_ssim_pairs=ms_ssim_pairs,
        ms_ssim_images=ms_ssim_images, kid_subsets=kid_subsets, batch_size=batch_size, total=total, device=device,
        progress=progress)
    self._metrics = [cls(self.context) for cls in chosen]
    self._num_samples = 0

  def update(self, images: torch.Tensor) -> None:
    """Returns None; hands a batch of generated images (uint8 N×C×H×W, any device) to every metric."""
    fidelity.check_uint8_nchw(images)
    self.context.batch += 1  # a new batch: shared features are computed for it once
    for metric in self._metrics:
      metric.update(images)
    self._num_samples += len(images)

  def result(self) -> dict[str, float]:
    """Returns every chosen metric's result, 'num_samples', and 'num_reference' when a reference was used."""
    if not self._num_samples:
      raise ValueError('Evaluator.result() before any update(): there are no samples to score')
    result = {}
    for metric in self._metrics:
      result.update(metric.result())
    result['num_samples'] = self._num_samples
    if self.context.reference_used and self.context.reference().count is not None:  # an EDM file has no count
      result['num_reference'] = self.context.reference().count
    return result

  def settings(self) -> dict[str, dict]:
    """Returns {metric name: the settings its result used} (JSON-ready), for the evaluation's record; after result()."""
    return {metric.name: metric.settings() for metric in self._metrics}
