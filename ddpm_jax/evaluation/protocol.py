"""Evaluation protocols: `fast` (the in-loop defaults, eval.*) and `paper` (numbers comparable with papers).

`paper` is DDPM's and most later papers' FID: eval.paper_num_samples (50,000) samples of the
DDPM sampler over all T steps with sigma^2 = beta, as DDPM's 3.17 (eval.paper_sampler /
eval.paper_sampling_steps / eval.paper_variance to choose others; eval.sampling's eta) against the whole
training split (or eval.reference_stats), with Inception in full float32. A protocol only rewrites the
evaluation's view of the config; the run's own is left as it is.
"""
import dataclasses

from ddpm_jax.config import schema

# A split no dataset holds more images than: the reference is then the whole split.
WHOLE_SPLIT = 2**31 - 1


def resolve(config: schema.Config) -> schema.Config:
  """Returns the config an evaluation runs with: the config itself for `fast`, a rewritten copy for `paper`."""
  e = config.eval
  if e.protocol == 'fast':
    return config
  sampling = dataclasses.replace(e.sampling, sampler=e.paper_sampler, variance=e.paper_variance,
                                 num_steps=e.paper_sampling_steps or config.diffusion.num_timesteps)
  evaluation = dataclasses.replace(e, num_samples=e.paper_num_samples, sampling=sampling, num_reference=WHOLE_SPLIT)
  return dataclasses.replace(config, eval=evaluation, data=dataclasses.replace(config.data, eval_split='train'))


def settings(config: schema.Config) -> dict:
  """Returns the protocol's record in an evaluation JSON: its name and the reference split."""
  return {'protocol': config.eval.protocol, 'reference_split': config.data.eval_split}
