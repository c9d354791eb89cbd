"""Artefacts: brightness, colour cast, dark images and grain of the samples against the reference images."""
import numpy as np

from eval_bridge import artefacts  # numpy only: the registry stays torch-free
from eval_bridge.metrics import _registry


@_registry.register
class Artefacts(_registry.Metric):
  """eval_bridge.artefacts' gaps of the samples' per-image statistics to the reference set's (no Inception).

  Each batch reduces to a few floats per image as it streams; the reference's are
  computed once and cached beside its features (`reference.reference_set`).
  """
  name = 'artefacts'
  keys = artefacts.KEYS
  columns = (_registry.Column('Δbright', '{brightness_gap:+.1f}'), _registry.Column('colour', '{color_shift:.1f}'),
             _registry.Column('Δdark', '{dark_fraction_gap:+.3f}'), _registry.Column('noise', '{noise_residual:.2f}'))
  panels = (_registry.Panel('brightness_gap', 'Brightness gap (0 = as real)'),
            _registry.Panel('color_shift', 'Colour shift (0 = as real)'),
            _registry.Panel('dark_fraction_gap', 'Dark-fraction gap (0 = as real)'),
            _registry.Panel('noise_residual', 'Noise residual (1 = as real)'))
  summary = ('Δbright {brightness_gap:+.1f} colour {color_shift:.1f} Δdark {dark_fraction_gap:+.3f} '
             'noise {noise_residual:.2f}')
  note = ("Δbright = mean luminance minus the reference's (0-255), colour = distance of the mean RGB, Δdark = share "
          f"of images darker than {artefacts.DARK_LUMINANCE:g} minus the reference's, noise = Laplacian variance over "
          "the reference's")
  needs_reference = True
  needs_image_statistics = True
  reference_parts = ('image_statistics',)

  def __init__(self, context: _registry.Context):
    super().__init__(context)
    self._rows = []

  def update(self, images) -> None:
    self._rows.append(artefacts.per_image(images.cpu().numpy()))

  def result(self) -> dict:
    """Returns {'brightness_gap', 'color_shift', 'dark_fraction_gap', 'noise_residual'} and the luminance histograms.

    The histograms (artefacts.HISTOGRAM: lists, not a scalar) go into the evaluation's JSON only: TensorBoard
    gets `keys`, the summary line and the table their templates' keys.
    """
    reference = self.context.reference()
    if reference.image_statistics is None:
      raise ValueError('the artefacts metric needs the reference set\'s image statistics, which it lacks; build it '
                       'with eval_bridge.reference.reference_set(..., image_statistics=True)')
    samples = np.concatenate(self._rows)
    return {**artefacts.gaps(samples, reference.image_statistics),
            artefacts.HISTOGRAM: artefacts.histograms(samples, reference.image_statistics)}

  def settings(self) -> dict:
    """Returns the luminance weights, the dark threshold, the Laplacian and the histograms' bins."""
    return dict(artefacts.SETTINGS)

  @classmethod
  def best(cls, evaluations: list[dict]) -> dict | None:
    """Returns the evaluation whose brightness gap is closest to 0 (a gap is signed: neither lowest nor highest)."""
    scored = [e for e in evaluations if 'brightness_gap' in e]
    return min(scored, key=lambda e: abs(e['brightness_gap']), default=None)
