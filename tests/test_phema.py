"""Post-hoc EMA (EDM2): the solver against numerical integration, reconstructions against profiles tracked directly,
snapshots on disk, resume, the CLI's bad inputs and the evaluation sweep."""
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize

from ddpm_jax import paths
from ddpm_jax import phema as phema_cli
from ddpm_jax.config import checks, convert
from ddpm_jax.core import phema
from ddpm_jax.reporting import table
from ddpm_jax.run import phema_snapshots
from ddpm_jax.run import workdir as workdir_lib
from conftest import trained_once
from runs import copy_run, digest, restore_numpy, run, tiny_config

PROFILES = {'training.phema_sigma_rels': (0.05, 0.1), 'training.phema_every_steps': 1,
            'training.sample_every_steps': 1000}


def profile_density(step: float, gamma: float):
  """Returns τ -> the power-function profile's density on [0, step], normalised by quadrature (not the closed form)."""
  mass = integrate.quad(lambda tau: tau ** gamma, 0, step)[0]
  return lambda tau: np.where(tau <= step, np.asarray(tau, np.float64) ** gamma / mass, 0.0)


@pytest.mark.parametrize('sigma_rel', [0.01, 0.05, 0.1, 0.2, 0.28])
def test_gamma_gives_the_profile_whose_standard_deviation_over_its_length_is_sigma_rel(sigma_rel):
  gamma = phema.sigma_rel_to_gamma(sigma_rel)
  density = profile_density(1.0, gamma)
  mean = integrate.quad(lambda tau: tau * density(tau), 0, 1)[0]
  variance = integrate.quad(lambda tau: (tau - mean) ** 2 * density(tau), 0, 1)[0]
  assert np.sqrt(variance) == pytest.approx(sigma_rel, rel=1e-8)
  # The same gamma, found by bisection of the numerically integrated width.
  width = lambda g: np.sqrt(integrate.quad(lambda tau: (tau - (g + 1) / (g + 2)) ** 2 * (g + 1) * tau ** g, 0, 1)[0])
  assert optimize.brentq(lambda g: width(g) - sigma_rel, 1e-6, 500, xtol=1e-12) == pytest.approx(gamma, rel=1e-6)


@pytest.mark.parametrize('sigma_rel', [0.0, -0.1, 0.2887, 0.5, float('nan'), True])
def test_sigma_rel_outside_what_the_formulas_allow_is_refused(sigma_rel):
  with pytest.raises(ValueError, match=r'must lie in \(0, 0.2887\)'):
    phema.sigma_rel_to_gamma(sigma_rel)


def test_the_solver_matches_a_float64_least_squares_of_numerically_integrated_profiles():
  steps = [t for t in (300, 600, 800, 1000) for _ in range(2)]
  sigma_rels = [0.05, 0.1] * 4
  targets = [0.03, 0.07, 0.15]
  gammas = [phema.sigma_rel_to_gamma(s) for s in sigma_rels]
  densities = [profile_density(t, g) for t, g in zip(steps, gammas)]
  # The Gram matrix's entries by adaptive quadrature, split at the kinks (each profile's end).
  gram = np.array([[integrate.quad(lambda tau: a(tau) * b(tau), 0, 1000, points=sorted(set(steps)), limit=200)[0]
                    for b in densities] for a in densities])
  np.testing.assert_allclose(phema.profile_inner_products(steps, gammas, steps, gammas), gram, rtol=1e-7)
  # The least-squares fit itself, on a fine grid: minimise ∫ (Σ x_i p_i - p_target)² dτ over [0, 1000].
  grid = (np.arange(400_000) + 0.5) * (1000 / 400_000)
  basis = np.stack([d(grid) for d in densities], axis=1)
  for target in targets:
    wanted = profile_density(1000, phema.sigma_rel_to_gamma(target))(grid)
    x = np.linalg.lstsq(basis, wanted, rcond=None)[0]
    np.testing.assert_allclose(phema.solve_coefficients(steps, sigma_rels, 1000, [target])[:, 0], x / x.sum(),
                               rtol=1e-4, atol=1e-5 * np.abs(x).max())


def tracked_profiles(trajectory: np.ndarray, sigma_rels: tuple) -> list[np.ndarray]:
  """Returns [steps, ...] per sigma_rel: each profile after each step, tracked by the train step's own update."""
  gammas = tuple(phema.sigma_rel_to_gamma(s) for s in sigma_rels)

  def step(profiles, inputs):
    index, params = inputs
    profiles = phema.update(profiles, params, index, gammas)
    return profiles, profiles
  start = tuple(jnp.zeros(trajectory.shape[1:]) for _ in sigma_rels)
  history = jax.lax.scan(step, start, (jnp.arange(len(trajectory)), jnp.asarray(trajectory)))[1]
  return [np.asarray(h, np.float64) for h in history]


def test_an_unseen_sigma_rel_reconstructed_from_two_profiles_equals_it_tracked_directly():
  """On a random walk of 1000 steps, sigma_rel 0.07 from snapshots of 0.05 and 0.10 vs 0.07 tracked.

  Recorded RMS errors over the walk's spread: 3.6e-2 (a snapshot every 250 steps), 2.3e-3 (100), 3.0e-4 (50),
  1.6e-5 (20), 2.8e-6 (10; float32's tracking rounding is ~4e-6).
  """
  steps = 1000
  walk = np.cumsum(np.random.default_rng(0).normal(size=(steps, 64)), axis=0).astype(np.float32)
  low, high, unseen = tracked_profiles(walk, (0.05, 0.1, 0.07))
  spread = np.abs(walk[-300:] - walk[-300:].mean(axis=0)).mean()
  errors = {}
  for every in (250, 100, 50, 20, 10):
    times = list(range(every, steps + 1, every))
    weights = phema.solve_coefficients(times * 2, [0.05] * len(times) + [0.1] * len(times), steps, [0.07])[:, 0]
    snapshots = np.concatenate([low[np.array(times) - 1], high[np.array(times) - 1]])
    errors[every] = np.sqrt(np.mean((weights @ snapshots - unseen[-1]) ** 2)) / spread
  assert list(errors.values()) == sorted(errors.values(), reverse=True), errors  # denser snapshots, smaller error
  assert errors[250] < 0.1 and errors[50] < 1e-3 and errors[10] < 1e-5, errors


def test_the_tracked_profile_gives_each_step_the_profiles_mass_over_it():
  walk = np.random.default_rng(1).normal(size=(200, 8)).astype(np.float32)
  (tracked,) = tracked_profiles(walk, (0.1,))
  edges = (np.arange(201) / 200) ** (phema.sigma_rel_to_gamma(0.1) + 1)
  weights = np.array([integrate.quad(lambda tau: 1.0, a, b)[0] for a, b in zip(edges[:-1], edges[1:])])
  np.testing.assert_allclose(tracked[-1], weights @ walk, rtol=0, atol=1e-5)


def stored_snapshot(workdir: str, step: int, sigma_rel: float) -> dict:
  """Returns the leaves of the workdir's snapshot of sigma_rel at step, by name."""
  path = paths.Workdir(workdir).phema_snapshot(step, sigma_rel)
  return phema_snapshots.read_snapshot(phema_snapshots.Snapshot(step, sigma_rel, path))


def test_a_float16_snapshot_takes_half_the_disk_and_an_altered_one_is_refused(tmp_path):
  params = {'Conv_0': {'kernel': np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)}}
  sizes = {}
  for dtype in ('float32', 'float16'):
    path = phema_snapshots.write_snapshot(str(tmp_path / dtype), 7, 0.05, params, dtype)
    sizes[dtype] = os.path.getsize(path)
    (snapshot,) = phema_snapshots.list_snapshots(str(tmp_path / dtype))
    assert (snapshot.step, snapshot.sigma_rel) == (7, 0.05)
    read = phema_snapshots.read_snapshot(snapshot)['Conv_0/kernel']
    np.testing.assert_array_equal(read, params['Conv_0']['kernel'].astype(dtype).astype(np.float32))
  assert sizes['float16'] < 0.55 * sizes['float32']
  with open(path, 'r+b') as f:  # one value of the float16 snapshot's params, altered
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    f.seek(0)
    f.write(data)
  with pytest.raises(ValueError, match='unreadable'):  # zip's CRC
    phema_snapshots.read_snapshot(snapshot)
  with np.load(phema_snapshots.list_snapshots(str(tmp_path / 'float32'))[0].path) as f:
    meta, kernel = f['meta'], f['Conv_0/kernel']
  np.savez(path, meta=meta, **{'Conv_0/kernel': kernel * 2})  # a consistent zip of other params: the digest's case
  with pytest.raises(ValueError, match='do not match the digest'):
    phema_snapshots.read_snapshot(snapshot)


@pytest.fixture(scope='module')
def phema_run(tmp_path_factory) -> str:
  """Returns a workdir the tiny config trained 4 steps tracking sigma_rel 0.05 and 0.1, a snapshot every step.

  Trained once for the session, both xdist workers reading it (tests change copies).
  """
  return trained_once(tmp_path_factory, 'phema', PROFILES)


def test_profiles_are_checkpointed_and_snapshotted_and_runs_without_them_store_none(phema_run, trained):
  assert [(s.step, s.sigma_rel) for s in phema_snapshots.list_snapshots(phema_run)] == \
      [(step, s) for step in (1, 2, 3, 4) for s in (0.05, 0.1)]
  state = restore_numpy(phema_run, 4)
  stored = stored_snapshot(phema_run, 4, 0.1)
  checkpointed = phema_snapshots.flatten_params(state['phema_params'][1])
  assert checkpointed.keys() == stored.keys() and all(np.array_equal(a, stored[k]) for k, a in checkpointed.items())
  assert 'phema_params' not in restore_numpy(trained, 4)


def test_resume_with_profiles_is_bit_exact(phema_run, tmp_path):
  resumed = copy_run(phema_run, tmp_path / 'resumed')
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '4'))
  for snapshot in phema_snapshots.list_snapshots(resumed):
    if snapshot.step > 2:
      os.remove(snapshot.path)
  run(resumed, PROFILES)
  assert digest(resumed, 4) == digest(phema_run, 4)
  for step, sigma_rel in ((3, 0.05), (4, 0.1)):
    files = [paths.Workdir(w).phema_snapshot(step, sigma_rel) for w in (resumed, phema_run)]
    with np.load(files[0]) as a, np.load(files[1]) as b:
      assert all(np.array_equal(a[k], b[k]) for k in b.files)


def test_the_cli_reproduces_a_stored_profile_exactly_as_a_workdir_that_modes_open(phema_run, tmp_path, capsys):
  out = str(tmp_path / 'reconstructed')
  phema_cli.main([f'--workdir={phema_run}', '--sigma_rel=0.1', '--step=3', f'--out={out}'])
  assert 'step 3' in capsys.readouterr().out
  config = workdir_lib.load_config(out)
  assert config.training.phema_sigma_rels == ()
  from ddpm_jax.run import modes  # pylint: disable=g-import-not-at-top
  state = jax.device_get(modes.open_trained_run(config, out).restore())
  stored = stored_snapshot(phema_run, 3, 0.1)
  assert int(state.step) == 3
  for name, array in phema_snapshots.flatten_params(state.ema_params).items():
    assert np.array_equal(array, stored[name]), name
  with open(paths.Workdir(out).phema_record) as f:
    record = json.load(f)
  assert [s['weight'] for s in record['snapshots'] if s['weight']] == [1.0]


def test_a_damaged_snapshot_is_skipped_with_one_line(phema_run, tmp_path, capsys):
  workdir = copy_run(phema_run, tmp_path / 'damaged')
  damaged = paths.Workdir(workdir).phema_snapshot(4, 0.05)
  with open(damaged, 'r+b') as f:
    f.truncate(os.path.getsize(damaged) // 2)
  params, record = phema_snapshots.reconstruct(workdir, 0.07, 4)
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'Skipped post-hoc EMA snapshot {damaged}: unreadable')
  assert (4, 0.05) not in [(s['step'], s['sigma_rel']) for s in record['snapshots']]
  assert all(np.isfinite(a).all() for a in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize('args, message', [
    (['--sigma_rel=0.3'], r'--sigma_rel=0.3 must lie in \(0, 0.2887\)'),
    (['--sigma_rel=0'], r'--sigma_rel=0.0 must lie in \(0, 0.2887\)'),
    (['--sigma_rel=0.07', '--step=0'], r'--step=0 lies outside the snapshots of .*, steps 1 to 4'),
    (['--sigma_rel=0.07', '--step=5'], r'--step=5 lies outside the snapshots of .*, steps 1 to 4'),
    (['--sigma_rel=0.07', '--out=EXISTING'], r'--out=.* already exists'),
    (['--sigma_rel=0.07', '--workdir=TRAINED'], r'has no post-hoc EMA snapshots'),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(phema_run, trained, tmp_path, capsys, args, message):
  existing = tmp_path / 'existing'
  existing.mkdir()
  (existing / 'keep.txt').write_text('mine')
  out = tmp_path / 'out'
  argv = [f'--workdir={phema_run}', f'--out={out}'] + [a.replace('EXISTING', str(existing))
                                                       .replace('TRAINED', trained) for a in args]
  with pytest.raises(SystemExit) as exit_info:
    phema_cli.main(argv)
  assert exit_info.value.code == 2
  stderr = capsys.readouterr().err.strip().splitlines()
  assert len(stderr) == 1 and stderr[0].startswith('ddpm_jax.phema: error: '), stderr
  assert re.search(message, stderr[0]), stderr[0]
  assert not out.exists() and os.listdir(existing) == ['keep.txt']
  assert sorted(os.listdir(tmp_path)) == ['existing']


def test_config_checks_refuse_a_profile_twice_and_a_sweep_without_profiles():
  # Which profiles are tracked is part of the state; how often they are written, and the sweep, are not.
  assert [convert.is_free(k) for k in ('training.phema_sigma_rels', 'training.phema_every_steps',
                                       'training.phema_dtype', 'eval.phema_sigma_rels')] == [False, True, True, True]
  with pytest.raises(ValueError, match='names a profile twice'):
    checks.check_phema(tiny_config({'training.phema_sigma_rels': (0.05, 0.05)}))
  with pytest.raises(ValueError, match=r'eval.phema_sigma_rels=\(0.07,\) needs a run that tracked'):
    checks.check_phema(tiny_config({'eval.phema_sigma_rels': (0.07,)}))


# No Inception (artefacts only), and test_evaluation's sampler: its compiled program is in the session's cache.
SWEEP = {'eval.metrics': ('artefacts',), 'eval.num_samples': 4, 'eval.batch_size': 4, 'eval.num_reference': 8,
         'eval.sampling.sampler': 'ddim', 'eval.sampling.timestep_spacing': 'leading', 'eval.sampling.num_steps': 3}


def test_the_eval_sweep_writes_one_json_per_sigma_rel_and_the_report_draws_it(phema_run, tmp_path, capsys):
  workdir = copy_run(phema_run, tmp_path / 'swept')
  sweep = {**PROFILES, **SWEEP, 'eval.reference_cache_dir': str(tmp_path / 'cache'),
           'eval.phema_sigma_rels': (0.03, 0.1, 0.2)}
  run(workdir, sweep, mode='eval', checkpoint_step=4)
  assert capsys.readouterr().out.count('sigma_rel ') == 3
  assert not os.path.exists(paths.Workdir(workdir).eval_file(4))  # the classic EMA's evaluation is another file
  noise = set()
  for sigma_rel in (0.03, 0.1, 0.2):
    with open(paths.Workdir(workdir).phema_eval_file(4, sigma_rel)) as f:
      result = json.load(f)
    assert (result['step'], result['sigma_rel'], result['num_samples'], result['sampler']) == (4, sigma_rel, 4, 'ddim')
    noise.add(result['noise_residual'])
  assert len(noise) == 3  # each evaluated its own reconstruction, not the run's EMA params
  written = table.write_report([workdir], str(tmp_path / 'report'))
  assert os.path.join(str(tmp_path / 'report'), 'phema.png') in written
