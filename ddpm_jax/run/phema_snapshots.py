"""Post-hoc EMA on disk: the profiles' snapshots in <workdir>/phema/, and reconstructions summed from them.

A snapshot is one profile's params at one step, an .npz of the params' leaves (named by their path in
the params tree) and `meta`, a JSON string: step, sigma_rel, dtype and the SHA-256 of the leaves. It is
written to a temporary file and renamed, so a killed write leaves no snapshot; the digest catches a
file damaged afterwards, which is then skipped with one line. The solver is core/phema.py's.
"""
import dataclasses
import json
import os
import tempfile

import jax
import numpy as np
from absl import logging

from ddpm_jax import paths
from ddpm_jax.run import checkpoints
from ddpm_jax.core import phema


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """One profile's params at one step, on disk."""
  step: int
  sigma_rel: float
  path: str


def flatten_params(params) -> dict[str, np.ndarray]:
  """Returns {'Conv_0/kernel': array} of a params tree: host copies (a replicated array's local one)."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
    # A replicated array of a multi-process run is not fully addressable; each process holds all of it.
    flat[name] = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
  return flat


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
  """Returns the nested dict of params that flatten_params flattened."""
  tree = {}
  for name, array in flat.items():
    *parents, leaf = name.split('/')
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = array
  return tree


def leaves_digest(flat: dict[str, np.ndarray]) -> str:
  """Returns the SHA-256 of the leaves: their names, dtypes, shapes and bytes, in name order (as checkpoints')."""
  return checkpoints.arrays_digest((name, flat[name]) for name in sorted(flat))


def write_snapshot(workdir: str, step: int, sigma_rel: float, params, dtype: str = 'float32') -> str:
  """Writes one profile's params as phema/step_<N>_sigma_<s>.npz, atomically; returns the path."""
  flat = {name: array.astype(dtype) for name, array in flatten_params(params).items()}
  meta = {'step': step, 'sigma_rel': sigma_rel, 'dtype': dtype, 'sha256': leaves_digest(flat)}
  path = paths.Workdir(workdir).phema_snapshot(step, sigma_rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  handle, temporary = tempfile.mkstemp(prefix='.tmp-', suffix='.npz', dir=os.path.dirname(path))
  try:
    with os.fdopen(handle, 'wb') as f:
      np.savez(f, meta=np.array(json.dumps(meta)), **flat)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
  return path


def write_snapshots(workdir: str, state, sigma_rels: tuple, dtype: str) -> list[str]:
  """Writes every profile of the train state at its step (process 0 only); returns the paths written."""
  if state.phema_params is None:
    return []
  step = int(state.step)
  if jax.process_index() != 0:  # every process holds the replicated profiles; one writes
    return []
  written = [write_snapshot(workdir, step, s, p, dtype) for s, p in zip(sigma_rels, state.phema_params)]
  logging.info('Wrote post-hoc EMA snapshots of step %d: %s', step, ', '.join(written))
  return written


def list_snapshots(workdir: str) -> list[Snapshot]:
  """Returns the snapshots in workdir/phema/, by step and sigma_rel (their names only: nothing is read)."""
  directory = paths.Workdir(workdir).phema
  names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
  found = [(paths.PHEMA_SNAPSHOT_FILE.fullmatch(n), os.path.join(directory, n)) for n in names]
  return sorted((Snapshot(int(m.group(1)), float(m.group(2)), p) for m, p in found if m),
                key=lambda s: (s.step, s.sigma_rel))


def read_snapshot(snapshot: Snapshot) -> dict[str, np.ndarray]:
  """Returns the snapshot's leaves by name, in float32; raises ValueError when it is damaged or not what it says."""
  try:
    with np.load(snapshot.path) as f:
      meta = json.loads(str(f['meta']))
      flat = {name: f[name] for name in f.files if name != 'meta'}
  except Exception as e:  # pylint: disable=broad-except  # a damaged zip fails in many ways
    raise ValueError(f'unreadable ({type(e).__name__}: {" ".join(str(e).split())[:120]})') from None
  if (meta.get('step'), meta.get('sigma_rel')) != (snapshot.step, snapshot.sigma_rel):
    raise ValueError(f'it holds step {meta.get("step")}, sigma_rel {meta.get("sigma_rel")}, not what its name says')
  if leaves_digest(flat) != meta.get('sha256'):
    raise ValueError('its contents do not match the digest written with it')
  return {name: array.astype(np.float32, copy=False) for name, array in flat.items()}


def check_step(snapshots: list[Snapshot], step: int | None, workdir: str, flag: str = '--step') -> int:
  """Returns the step to reconstruct at (default: the last snapshot's); a one-line error when none can be."""
  if not snapshots:
    raise FileNotFoundError(f'{workdir} has no post-hoc EMA snapshots in {paths.Workdir(workdir).phema} '
                            '(train with --config.training.phema_sigma_rels, e.g. "(0.05, 0.1)")')
  first, last = snapshots[0].step, snapshots[-1].step
  if step is None:
    return last
  if not first <= step <= last:
    raise ValueError(f'{flag}={step} lies outside the snapshots of {workdir}, steps {first} to {last}; choose a '
                     'step in that range')
  return step


def reconstruct(workdir: str, sigma_rel: float, step: int | None = None) -> tuple[dict, dict]:
  """Returns (the params of the EMA of sigma_rel at step, how it was made), summed from workdir's snapshots.

  Streams the snapshots at or before step: memory holds the sum and one snapshot. A damaged snapshot is
  skipped with one line, and the weights are solved again without it.
  """
  phema.check_sigma_rel(sigma_rel, '--sigma_rel')
  snapshots = list_snapshots(workdir)
  step = check_step(snapshots, step, workdir)
  usable = [s for s in snapshots if s.step <= step]
  while usable:
    weights = phema.solve_coefficients([s.step for s in usable], [s.sigma_rel for s in usable], step,
                                       [sigma_rel])[:, 0]
    try:
      total = weighted_sum(usable, weights)
    except DamagedSnapshot as e:
      print(f'Skipped post-hoc EMA snapshot {e.snapshot.path}: {e.reason}')
      logging.warning('Skipped damaged post-hoc EMA snapshot %s: %s', e.snapshot.path, e.reason)
      usable = [s for s in usable if s != e.snapshot]
      continue
    used = [{'step': s.step, 'sigma_rel': s.sigma_rel, 'weight': float(w)} for s, w in zip(usable, weights)]
    return unflatten_params(total), {'source': os.path.abspath(workdir), 'sigma_rel': sigma_rel, 'step': step,
                                     'snapshots': used}
  raise FileNotFoundError(f'no intact post-hoc EMA snapshot of {workdir} at or before step {step}')


class DamagedSnapshot(Exception):
  """A snapshot that can't be read or fails its digest."""

  def __init__(self, snapshot: Snapshot, reason: str):
    super().__init__(reason)
    self.snapshot, self.reason = snapshot, reason


def weighted_sum(snapshots: list[Snapshot], weights: np.ndarray) -> dict[str, np.ndarray]:
  """Returns Σ weights[i] · snapshot i, leaf by leaf, in float32; snapshots of weight 0 are not read."""
  total = None
  for snapshot, weight in zip(snapshots, weights):
    if weight == 0.0:  # a stored profile at its own step: the others' exact zeros cost no reading
      continue
    try:
      flat = read_snapshot(snapshot)
    except ValueError as e:
      raise DamagedSnapshot(snapshot, str(e)) from None
    if total is None:
      total = {name: np.zeros_like(array) for name, array in flat.items()}
    for name, array in flat.items():
      # Each product in float64, rounded once: the fit's weights can be large with alternating signs.
      total[name] += (np.float64(weight) * array).astype(np.float32)
    del flat  # before the next snapshot is read: memory holds the sum and one snapshot
  return total
