"""The study's base run: a DDPM U-Net on Food-101 at 64x64, every key with its default.

The defaults live in the package (ddpm_jax/config/), so an installed wheel has them too; this file
re-exports them for `--config=configs/default.py` and for the configs that import it.
"""
from ddpm_jax.config.defaults import get_config  # noqa: F401
