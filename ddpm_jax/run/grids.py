"""The periodic sample grids of training: the EMA params' samples as a PNG and an image summary.

An unconditional run's grid is num_grid_samples samples in a near-square; a class-conditional run's
gives each of its first 16 classes a block of rows, named in a legend.
"""
import jax
import numpy as np
from absl import logging

from ddpm_jax import paths
from ddpm_jax.core import keys
from ddpm_jax.run import build as components_lib
from ddpm_jax.run import images
from ddpm_jax.run import workdir as workdir_lib

# A conditional run's grid: a block of rows per class, the first GRID_CLASSES classes in order, at most
# GRID_COLUMNS samples a row (21 samples of 3 classes in one row each were thumbnails too small to judge).
GRID_CLASSES, GRID_COLUMNS = 16, 8


def grid_layout(num_classes: int, num_grid_samples: int) -> tuple[int, int, int]:
  """Returns (classes, samples per class, columns) of a conditional grid: per class a multiple of columns."""
  classes = min(num_classes, GRID_CLASSES)
  per_class = max(1, num_grid_samples // classes)
  columns = min(per_class, GRID_COLUMNS)
  return classes, per_class // columns * columns, columns


def grid_labels(num_classes: int, num_grid_samples: int) -> np.ndarray | None:
  """Returns the grid's labels, row by row: the first 16 classes, grid_layout's samples per class each.

  None for an unconditional run, whose grid is num_grid_samples samples in a near-square.
  """
  if not num_classes:
    return None
  classes, per_class, _ = grid_layout(num_classes, num_grid_samples)
  return np.repeat(np.arange(classes, dtype=np.int32), per_class)


def grid_row_names(workdir: str, num_classes: int, num_grid_samples: int) -> tuple[str, ...]:
  """Returns the legend of each grid row: 'id name' on the first row of a class's block, '' on the others."""
  names = workdir_lib.read_class_names(workdir)
  classes, per_class, columns = grid_layout(num_classes, num_grid_samples)
  return tuple(('' if row else (f'{i} {names[i]}' if i < len(names) else str(i)))
               for i in range(classes) for row in range(per_class // columns))


def write_grid(config, components: components_lib.Components, state, workdir: str, writer, step: int) -> str | None:
  """Samples the EMA params, writes workdir/samples/step_<N>.png and an image summary; returns the path.

  A class-conditional run's grid has a block of rows per class (the first 16), named in a legend at its left.
  Every process samples (the params span them all); only process 0 writes, and the others return None.
  """
  labels = grid_labels(config.model.num_classes, config.training.num_grid_samples)
  rng = keys.grid_key(state.rng, 0)
  if labels is None:
    grid_samples = components.sampler.sample(state.ema_params, rng, config.training.num_grid_samples)
  else:
    grid_samples = components.sampler.sample(state.ema_params, rng, len(labels), labels)
  if jax.process_index() != 0:
    return None
  row_names = () if labels is None else grid_row_names(workdir, config.model.num_classes,
                                                       config.training.num_grid_samples)
  path, _, grid = images.save_samples(paths.Workdir(workdir).samples, f'step_{step}', grid_samples, row_names)
  writer.write_images(step, {'samples': grid[None]})
  logging.info('Wrote %s', path)
  return path
