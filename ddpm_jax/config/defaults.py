"""The study's base run: a DDPM U-Net on Food-101 at 64x64, every key at its default (ddpm_jax/config/schema.py).

`configs/default.py` re-exports `get_config`; other configs import it and override a handful of keys.
"""
import ml_collections

from ddpm_jax.config import convert


def get_config() -> ml_collections.ConfigDict:
  """Returns the ConfigDict of every key at its default: what a config file starts from and changes."""
  return convert.to_configdict()
