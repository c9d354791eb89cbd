"""Evaluator plug-ins: one module per metric, each registering a `Metric` subclass by name.

Adding a metric is one file here (and its test): every non-underscore module of
this package is imported below, so its `@register` runs. Torch-free on import (see
`_registry`); `eval_bridge.evaluator` runs the chosen ones.
"""
import importlib
import pkgutil

from eval_bridge.metrics._registry import (DEFAULT, REGISTRY, Column, Context, FeatureMetric, Metric, Panel, get,
                                           needs_image_statistics, needs_inception, needs_reference_features, ranking,
                                           reference_parts, register, required_keys, select, summary)

# The default metrics' modules first (each is named for its metric): tables keep FID, KID, MS-SSIM leading.
for _name in sorted((m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith('_')),
                    key=lambda name: (name not in DEFAULT, name)):
  importlib.import_module(f'{__name__}.{_name}')
