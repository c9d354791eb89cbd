"""KID: the polynomial-kernel MMD between Inception features, generated vs reference, over random subsets."""
from eval_bridge.metrics import _registry


@_registry.register
class Kid(_registry.FeatureMetric):
  """torch-fidelity's KID of the generated samples' features against the reference features."""
  name = 'kid'
  keys = ('kid_mean', 'kid_std')
  columns = (_registry.MeanStdColumn('KID', 'kid_mean', spread='kid_std'),)
  panels = (_registry.Panel('kid_mean', 'KID ↓ (mean ± std)', band='kid_std'),)
  note = 'KID is mean ± std over subsets'

  @classmethod
  def fragment(cls, metrics: dict) -> str:
    """Returns 'KID 0.0123 ± 0.0010' with the digits that mean something, as table.md shows it (no '± 0.0000')."""
    return 'KID ' + cls.columns[0].cell(metrics, 'missing')

  def result(self) -> dict[str, float]:
    """Returns {'kid_mean', 'kid_std', 'kid_subset_size'} over context.kid_subsets subsets from context.metric_seed."""
    from eval_bridge import fidelity  # pylint: disable=g-import-not-at-top  # torch; the registry must not load it
    result = fidelity.kid(self.context.features(), self.context.reference().features,
                          subsets=self.context.kid_subsets, seed=self.context.metric_seed)
    self._subset_size = result['kid_subset_size']
    return result

  def settings(self) -> dict:
    """Returns the subsets, their size (after result()) and torch-fidelity's polynomial kernel."""
    return {'subsets': self.context.kid_subsets, 'subset_size': getattr(self, '_subset_size', None),
            'seed': self.context.metric_seed, 'kernel': 'poly', 'degree': 3, 'gamma': '1 / feature dim', 'coef0': 1}
