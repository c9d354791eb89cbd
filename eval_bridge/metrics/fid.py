"""FID: the Fréchet distance between the Inception features' Gaussian fits, generated vs reference."""
from eval_bridge.metrics import _registry


@_registry.register
class Fid(_registry.FeatureMetric):
  """torch-fidelity's FID of the generated samples' features against the reference statistics."""
  name = 'fid'
  keys = ('fid',)
  columns = (_registry.Column('FID', '{fid:.2f}'),)
  panels = (_registry.Panel('fid', 'FID ↓'),)
  summary = 'FID {fid:.2f}'
  reference_parts = ('statistics',)  # the reference's mu and sigma alone: EDM's and clean-fid's files suffice

  def result(self) -> dict[str, float]:
    """Returns {'fid'}."""
    from eval_bridge import fidelity  # pylint: disable=g-import-not-at-top  # torch; the registry must not load it
    statistics = fidelity.fid_statistics(self.context.features())
    return {'fid': fidelity.fid_from_statistics(statistics, self.context.reference().statistics)}

  def settings(self) -> dict:
    """Returns the extractor and its layer."""
    from eval_bridge import fidelity  # pylint: disable=g-import-not-at-top  # torch; the registry must not load it
    return {'extractor': fidelity.EXTRACTOR_NAME, 'feature_layer': fidelity.FEATURE_LAYER}
