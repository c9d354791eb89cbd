"""Evaluation protocols: `fast` (the in-loop defaults, eval.*) and `paper` (numbers comparable with papers).

`paper` is DDPM's and most later papers' FID: eval.paper_num_samples (50,000) samples of the
DDPM sampler over all T steps (eval.paper_sampler / eval.paper_sampling_steps to choose another)
against the whole training split, with Inception in full float32. A protocol only rewrites the
evaluation's view of the config; the run's own config is left as it is.
"""
import ml_collections

from ddpm_jax.core import diffusion

PROTOCOLS = ('fast', 'paper')
# A split no dataset holds more images than: the reference is then the whole split.
WHOLE_SPLIT = 2**31 - 1


def check(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line ValueError for an unknown protocol or a paper setting out of range."""
  e = config.eval
  if e.protocol not in PROTOCOLS:
    raise ValueError(f'eval.protocol={e.protocol!r} is not one of {", ".join(PROTOCOLS)}')
  if isinstance(e.paper_num_samples, bool) or not isinstance(e.paper_num_samples, int) or e.paper_num_samples < 2:
    raise ValueError(f'eval.paper_num_samples={e.paper_num_samples!r} must be an integer >= 2')
  diffusion.check_choice('eval.paper_sampler', e.paper_sampler, diffusion.SAMPLERS)
  steps = e.paper_sampling_steps
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
    raise ValueError(f'eval.paper_sampling_steps={steps!r} must be an integer >= 0 (0 = all T steps)')


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns the config an evaluation runs with: the config itself for `fast`, a rewritten copy for `paper`."""
  if config.eval.protocol == 'fast':
    return config
  resolved = ml_collections.ConfigDict(config.to_dict())
  e = resolved.eval
  e.num_samples = e.paper_num_samples
  e.sampler = e.paper_sampler
  e.sampling_steps = e.paper_sampling_steps or config.diffusion.num_timesteps
  e.num_reference = WHOLE_SPLIT
  resolved.data.eval_split = 'train'
  return resolved


def settings(config: ml_collections.ConfigDict) -> dict:
  """Returns the protocol's record in an evaluation JSON: its name and the reference split."""
  return {'protocol': config.eval.protocol, 'reference_split': config.data.eval_split}
