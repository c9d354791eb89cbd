"""Prints which torch modules importing the metric registry, the reports and the config checks loaded: none.

    python tests/programs/registry_without_torch.py

Run by tests/test_metrics.py in an interpreter of its own, where nothing else has imported torch.
"""
import sys

import ddpm_jax.config.checks  # noqa: F401  pylint: disable=unused-import
import ddpm_jax.report  # noqa: F401  pylint: disable=unused-import
import ddpm_jax.reporting.runs  # noqa: F401  pylint: disable=unused-import
import eval_bridge.metrics  # noqa: F401  pylint: disable=unused-import

print(sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'torch_fidelity')))
