"""Evaluator plug-ins: one module per metric, each registering a `Metric` subclass by name.

Adding a metric is one file here (and its test): every non-underscore module of
this package is imported below, so its `@register` runs. Torch-free on import (see
`_registry`); `eval_bridge.evaluator` runs the chosen ones.
"""
import importlib
import pkgutil

from eval_bridge.metrics._registry import (DEFAULT, REGISTRY, Column, Context, FeatureMetric, Metric, Panel, get,
                                           needs_inception, ranking, register, required_keys, select, summary)

for _module in pkgutil.iter_modules(__path__):
  if not _module.name.startswith('_'):
    importlib.import_module(f'{__name__}.{_module.name}')
