"""The metric plug-in interface: `Metric` (update/result), the `Context` metrics share, the registry by name.

Torch-free on import: config validation and `python -m ddpm_jax.report` read the
registry without loading torch, so torch-side helpers are imported inside methods.
"""
import abc
import dataclasses
import math
from typing import Any, Iterable

DEFAULT = ('fid', 'kid', 'ms_ssim')  # what runs evaluated before config.eval.metrics existed


@dataclasses.dataclass(frozen=True)
class Column:
  """One table.md column: its header and a str.format template of an evaluation's keys."""
  header: str
  template: str

  def cell(self, evaluation: dict, missing: str) -> str:
    """Returns the template filled in with the evaluation, or `missing` where it lacks a key (another metric set)."""
    try:
      return self.template.format(**evaluation)
    except KeyError:
      return missing


NO_SPREAD = 1e-12  # a std at most this (relative to max(1, |mean|)) is rounding, not spread


@dataclasses.dataclass(frozen=True)
class MeanStdColumn(Column):
  """A 'mean ± std' column (template: the mean's key, spread: the std's) showing only the digits that mean something.

  The std gets 2 significant digits and the mean the same decimal places; a std of 0 (KID at small n,
  where every subset holds every sample) is no spread at all, so the cell shows the mean alone with a note.
  """
  spread: str = ''

  def cell(self, evaluation: dict, missing: str) -> str:
    """Returns e.g. '0.0313 ± 0.0041', '0.00042 ± 0.00011', '0.0313 (no spread at this n)', or `missing`."""
    if self.template not in evaluation or self.spread not in evaluation:
      return missing
    mean, std = float(evaluation[self.template]), float(evaluation[self.spread])
    if not math.isfinite(std):
      return f'{mean:.4g}'
    # A std of float rounding (KID's ~4e-16 when every subset holds every sample) is no spread either.
    if std <= NO_SPREAD * max(1.0, abs(mean)):
      return f'{mean:.4g} (no spread at this n)'
    places = max(0, 1 - math.floor(math.log10(std)))  # the decimal places of std's second significant digit
    return f'{mean:.{places}f} ± {std:.{places}f}'


@dataclasses.dataclass(frozen=True)
class Panel:
  """One metrics.png panel: the key plotted, the title, and an optional key of a ±std band around it."""
  key: str
  title: str
  band: str | None = None


@dataclasses.dataclass
class Context:
  """What the chosen metrics of one evaluation share: settings, Inception, the reference and features.

  The Evaluator bumps `batch` before handing a batch to the metrics, so the shared
  features and logits hold each batch once however many metrics (FID, KID, IS, PR) ask for them.
  """
  extractor: Any = None  # torch-fidelity's Inception; None when no chosen metric needs it
  reference_source: Any = None  # a Reference, or a zero-argument callable computing one (called only when needed)
  needs_reference: bool = False  # a chosen metric needs the reference, so an optional use may compute it too
  seed: int = 0  # MS-SSIM's pairs
  metric_seed: int = 2020  # IS's shuffle, KID's subsets, PR's reference subsample: torch-fidelity's rng_seed
  ms_ssim_pairs: int = 500
  ms_ssim_images: int = 1000
  kid_subsets: int = 100
  batch_size: int = 64
  total: int | None = None
  device: Any = 'cpu'
  progress: bool = True
  batch: int = 0
  _features: Any = dataclasses.field(default=None, init=False, repr=False)
  _featured_batch: int | None = dataclasses.field(default=None, init=False, repr=False)

  def reference(self, optional: bool = False):
    """Returns the reference set; with `optional`, None unless it is at hand or a chosen metric needs it anyway."""
    if callable(self.reference_source) and (self.needs_reference or not optional):
      self.reference_source = self.reference_source()
    return None if callable(self.reference_source) else self.reference_source

  @property
  def reference_used(self) -> bool:
    """Returns whether the evaluation has a reference set (given, or computed for a metric)."""
    return self.reference_source is not None and not callable(self.reference_source)

  def add_features(self, images) -> None:
    """Returns None; adds the Inception features of the current batch, once however often it is called."""
    if self._featured_batch == self.batch:
      return
    self._featured_batch = self.batch
    if self._features is None:
      from eval_bridge import fidelity  # pylint: disable=g-import-not-at-top  # torch: see the module docstring
      self._features = fidelity.FeatureAccumulator(self.extractor, batch_size=self.batch_size, total=self.total,
                                                   progress=self.progress, desc='Sample features')
    self._features.update(images)

  def features(self):
    """Returns the float64 Inception features [n, 2048] of every batch added."""
    return self._features.features()

  def logits(self):
    """Returns the float32 Inception logits [n, 1008] of every batch added."""
    return self._features.logits()


class Metric(abc.ABC):
  """One metric: `update(uint8 NCHW torch batch)` per batch, then `result()` → named scalars.

  Class attributes say what the rest of the project shows of it: `keys` every
  evaluation JSON holds (TensorBoard tags eval/<key>), table columns, metrics.png
  panels, the summary-line fragment (a str.format template of the result) and a
  note under the table. `result()` may add informational keys beyond `keys`;
  `settings()` says how the result was computed, for the evaluation's record.
  What it needs: `needs_inception` the samples' Inception features (and, with
  `needs_reference`, the reference's); `needs_image_statistics` the reference's
  per-image statistics (`eval_bridge.artefacts`). `reference_parts` names what of the reference it reads
  ('statistics': the Gaussian fit, 'features', 'image_statistics'), so a reference-statistics file
  that lacks a part can refuse the metrics that read it before sampling.
  """
  name: str = ''  # the registry key, as in config.eval.metrics
  keys: tuple[str, ...] = ()
  columns: tuple[Column, ...] = ()
  panels: tuple[Panel, ...] = ()
  summary: str = ''
  note: str = ''
  lower_is_better: bool = True  # of keys[0]: ranks the "best" evaluation when no FID is chosen
  needs_inception: bool = False
  needs_reference: bool = False
  needs_image_statistics: bool = False
  reference_parts: tuple[str, ...] = ()

  def __init__(self, context: Context):
    self.context = context

  @abc.abstractmethod
  def update(self, images) -> None:
    """Returns None; takes one batch of generated uint8 N×C×H×W torch images."""

  @abc.abstractmethod
  def result(self) -> dict[str, float]:
    """Returns the metric of every batch seen: at least `keys`."""

  def settings(self) -> dict:
    """Returns the settings `result()` used (JSON-ready: numbers, strings, lists), e.g. KID's subsets; after it."""
    return {}

  @classmethod
  def fragment(cls, metrics: dict) -> str:
    """Returns this metric's part of an evaluation's summary line, e.g. 'FID 12.34'."""
    return cls.summary.format(**metrics)

  @classmethod
  def best(cls, evaluations: list[dict]) -> dict | None:
    """Returns the evaluation with the best keys[0] (lowest or highest: lower_is_better); None if none has it."""
    scored = [e for e in evaluations if cls.keys[0] in e]
    return (min if cls.lower_is_better else max)(scored, key=lambda e: e[cls.keys[0]], default=None)


class FeatureMetric(Metric):
  """A metric of Inception features (FID, KID, PR against the reference's; IS): features are shared, computed once."""
  needs_inception = True
  needs_reference = True
  reference_parts = ('features',)

  def update(self, images) -> None:
    self.context.add_features(images)


REGISTRY: dict[str, type[Metric]] = {}


def register(cls: type[Metric]) -> type[Metric]:
  """Returns cls, now in REGISTRY under cls.name (a class decorator)."""
  if not cls.name or not cls.keys:
    raise ValueError(f'metric class {cls.__name__} needs a name and keys')
  if cls.name in REGISTRY:
    raise ValueError(f'metric {cls.name!r} is registered twice ({REGISTRY[cls.name].__name__}, {cls.__name__})')
  REGISTRY[cls.name] = cls
  return cls


def get(name: str) -> type[Metric]:
  """Returns the metric class registered under name; an unknown name is a one-line ValueError."""
  if name not in REGISTRY:
    raise ValueError(f'unknown metric {name!r}; known: {", ".join(REGISTRY)}')
  return REGISTRY[name]


def select(names: Iterable[str]) -> list[type[Metric]]:
  """Returns the metric classes of names, in registry order; an unknown name or none is a one-line ValueError."""
  names = (names,) if isinstance(names, str) else tuple(names)
  if not names:
    raise ValueError(f'no metric chosen; known: {", ".join(REGISTRY)}')
  for name in names:
    get(name)
  return [cls for name, cls in REGISTRY.items() if name in names]


def required_keys(names: Iterable[str]) -> tuple[str, ...]:
  """Returns the keys every evaluation of these metrics holds, in registry order."""
  return tuple(key for cls in select(names) for key in cls.keys)


def summary(names: Iterable[str], metrics: dict) -> str:
  """Returns the metrics' summary-line fragments of an evaluation, e.g. 'FID 12.34  KID 0.0123 ± 0.0010'."""
  return '  '.join(cls.fragment(metrics) for cls in select(names))


def ranking(metrics: list[type[Metric]]) -> type[Metric]:
  """Returns the metric that picks a run's best evaluation: FID when chosen, else the first."""
  return next((cls for cls in metrics if cls.keys[0] == 'fid'), metrics[0])


def needs_inception(names: Iterable[str]) -> bool:
  """Returns whether any of these metrics needs the Inception extractor."""
  return any(cls.needs_inception for cls in select(names))


def needs_reference_features(names: Iterable[str]) -> bool:
  """Returns whether any of these metrics compares Inception features with the reference set's (FID, KID, PR)."""
  return any(cls.needs_inception and cls.needs_reference for cls in select(names))


def reference_parts(names: Iterable[str]) -> dict[str, tuple[str, ...]]:
  """Returns {metric name: the reference parts it reads} of these metrics (those that read none left out)."""
  return {cls.name: cls.reference_parts for cls in select(names) if cls.reference_parts}


def needs_image_statistics(names: Iterable[str]) -> bool:
  """Returns whether any of these metrics needs the reference set's per-image statistics (artefacts)."""
  return any(cls.needs_image_statistics for cls in select(names))
