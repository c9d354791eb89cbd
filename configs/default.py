"""The package's defaults: the study's U-Net on Food-101 at 64x64, trained with v-prediction.

The defaults live in the package (ddpm_jax/config/), so an installed wheel has them too; this file
re-exports them for `--config=configs/default.py` and for the configs that import it. A new config starts
here; the study's six start from configs/study.py, which pins the eps, unweighted training the study compared.
"""
from ddpm_jax.config.defaults import get_config  # noqa: F401
