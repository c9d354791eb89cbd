"""PR: k-NN precision (samples inside the real manifold) and recall (real images inside the samples')."""
from eval_bridge.metrics import _registry


@_registry.register
class Prc(_registry.FeatureMetric):
  """torch-fidelity's precision and recall (Kynkäänniemi et al. 2019, k = 3): Inception features vs the reference's.

  float32 features and a reference subsampled to the sample count (from context.metric_seed), as the
  authors' and ADM's code; distances a block of rows at a time, so 50,000 samples fit in a few GB.
  """
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
    reference = self.context.reference()
    result = fidelity.precision_recall(self.context.features(), reference.features, seed=self.context.metric_seed,
                                       device=self.context.device)
    self._reference_size = (result.pop('prc_reference_size'), len(reference.features))
    return result

  def settings(self) -> dict:
    """Returns k, the feature layer and dtype, the reference's subsample (after result()), its seed and block rows."""
    from eval_bridge import fidelity  # pylint: disable=g-import-not-at-top
    used, available = getattr(self, '_reference_size', (None, None))
    return {'neighborhood': fidelity.PRC_NEIGHBORHOOD, 'feature_layer': fidelity.FEATURE_LAYER,
            'feature_dtype': 'float32', 'reference_used': used, 'reference_available': available,
            'subsample_seed': self.context.metric_seed, 'distance_rows_per_block': fidelity.PRC_BATCH_SIZE}
