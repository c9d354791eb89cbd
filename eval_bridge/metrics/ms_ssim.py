"""MS-SSIM: mean similarity of random pairs of generated images, a diversity score (lower = more diverse)."""
from eval_bridge.metrics import _registry


@_registry.register
class MsSsim(_registry.Metric):
  """torchmetrics' MS-SSIM over random pairs of a reservoir of the first context.ms_ssim_images samples.

  The reservoir keeps memory bounded; samples are i.i.d., so the first ones are a
  random subset. With reference images at hand (given, or computed for FID/KID),
  as many generated-vs-reference pairs give 'ms_ssim_vs_reference'; MS-SSIM alone
  never computes the reference.
  """
  name = 'ms_ssim'
  keys = ('ms_ssim',)
  columns = (_registry.Column('MS-SSIM', '{ms_ssim:.4f}'),)
  panels = (_registry.Panel('ms_ssim', 'MS-SSIM (lower = more diverse)'),)
  summary = 'MS-SSIM {ms_ssim:.4f}'
  note = 'lower MS-SSIM = more diverse samples'

  def __init__(self, context: _registry.Context):
    super().__init__(context)
    self._reservoir = []
    self._room = context.ms_ssim_images

  def update(self, images) -> None:
    kept = images[:self._room].cpu()
    self._reservoir.append(kept)
    self._room -= len(kept)

  def result(self) -> dict[str, float]:
    """Returns {'ms_ssim'}, and 'ms_ssim_vs_reference' when reference images are at hand."""
    import torch  # pylint: disable=g-import-not-at-top  # the registry must not load torch
    from eval_bridge import ms_ssim  # pylint: disable=g-import-not-at-top
    c = self.context
    images = torch.cat(self._reservoir)
    result = {'ms_ssim': ms_ssim.pairwise_ms_ssim(images, c.ms_ssim_pairs, c.seed, c.device)}
    reference = c.reference(optional=True)
    if reference is not None and reference.images is not None:
      result['ms_ssim_vs_reference'] = ms_ssim.cross_ms_ssim(images, reference.images, c.ms_ssim_pairs, c.seed,
                                                             c.device)
    return result

  def settings(self) -> dict:
    """Returns the pairs, the reservoir and, once images were seen, torchmetrics' scales, window and betas."""
    from eval_bridge import ms_ssim  # pylint: disable=g-import-not-at-top  # torch; the registry must not load it
    c = self.context
    result = {'pairs': c.ms_ssim_pairs, 'reservoir': c.ms_ssim_images, 'seed': c.seed, 'data_range': ms_ssim.DATA_RANGE}
    if self._reservoir:
      settings = ms_ssim.settings_for(min(self._reservoir[0].shape[-2:]))
      result.update(num_scales=settings.num_scales, kernel_size=settings.kernel_size, sigma=settings.sigma,
                    betas=list(settings.betas))
    return result
