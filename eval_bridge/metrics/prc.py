"""PR: k-NN precision (samples inside the real manifold) and recall (real images inside the samples')."""
from eval_bridge.metrics import _registry


@_registry.register
class Prc(_registry.FeatureMetric):
  """torch-fidelity's precision and recall (Kynkäänniemi et al. 2019, k = 3): Inception features vs the reference's."""
  name = 'prc'
  keys = ('precision', 'recall')
  columns = (_registry.Column('Precision', '{precision:.3f}'), _registry.Column('Recall', '{recall:.3f}'))
  panels = (_registry.Panel('precision', 'Precision ↑'), _registry.Panel('recall', 'Recall ↑'))
  summary = 'P {precision:.3f} R {recall:.3f}'
  note = 'precision/recall: k-NN manifolds, k = 3'
  lower_is_better = False

  def result(self) -> dict[str, float]:
    """Returns {'precision', 'recall'} of the samples' features against the reference features."""
    from eval_bridge import fidelity  # pylint: disable=g-import-not-at-top  # torch; the registry must not load it
    return fidelity.precision_recall(self.context.features(), self.context.reference().features,
                                     device=self.context.device)

  def settings(self) -> dict:
    """Returns k and the feature layer."""
    from eval_bridge import fidelity  # pylint: disable=g-import-not-at-top
    return {'neighborhood': fidelity.PRC_NEIGHBORHOOD, 'feature_layer': fidelity.FEATURE_LAYER}
