"""IS: the Inception Score of the samples alone, exp E[KL(p(y|x) || p(y))], mean ± std over splits."""
from eval_bridge.metrics import _registry


@_registry.register
class Isc(_registry.FeatureMetric):
  """torch-fidelity's Inception Score of the samples' Inception logits (shared with FID/KID: one pass)."""
  name = 'isc'
  keys = ('is_mean', 'is_std')
  columns = (_registry.MeanStdColumn('IS', 'is_mean', spread='is_std'),)
  panels = (_registry.Panel('is_mean', 'IS ↑ (mean ± std)', band='is_std'),)
  note = 'IS is mean ± std over splits'
  lower_is_better = False
  needs_reference = False
  reference_parts = ()

  @classmethod
  def fragment(cls, metrics: dict) -> str:
    """Returns 'IS 12.34 ± 0.56' with the digits that mean something, as KID's (no '1.00 ± 0.00' at tiny spreads)."""
    return 'IS ' + cls.columns[0].cell(metrics, 'missing')

  def result(self) -> dict[str, float]:
    """Returns {'is_mean', 'is_std'} over min(10, n) splits of the samples shuffled from context.metric_seed."""
    from eval_bridge import fidelity  # pylint: disable=g-import-not-at-top  # torch; the registry must not load it
    logits = self.context.logits()
    self._splits = min(fidelity.ISC_SPLITS, len(logits))
    return fidelity.isc(logits, splits=self._splits, seed=self.context.metric_seed)

  def settings(self) -> dict:
    """Returns the splits (after result()), the shuffle's seed and the logits' layer."""
    from eval_bridge import fidelity  # pylint: disable=g-import-not-at-top
    return {'splits': getattr(self, '_splits', None), 'seed': self.context.metric_seed, 'layer': fidelity.LOGITS_LAYER}
