"""Post-hoc EMA (Karras et al. 2024, EDM2, section 3 and appendix C): power-function EMA profiles and their mixing.

A power-function EMA at step t averages the params θ_1..θ_t with the weights of the density
p(τ) = (γ+1) τ^γ / t^(γ+1) on [0, t], each step taking that density's mass over [i-1, i]. Its width
relative to t, σ_rel, picks γ. Tracked with β_t = (1 - 1/t)^(γ+1), it costs one copy of the params a
profile. Snapshots of a few profiles at many steps span many other profiles: the least-squares mix of
them closest (in L2 over τ) to any σ_rel at any step is the EMA one would have tracked with it.

Pure: imports only jax and numpy; the solver runs on the host in float64.
"""
import jax
import jax.numpy as jnp
import numpy as np

# sigma_rel of gamma = 0 (a flat average from step 0): above it the profile would need gamma < 0, which EDM2's
# relation (the largest root of its cubic) doesn't give.
MAX_SIGMA_REL = float(np.sqrt(1.0 / 12.0))


def check_sigma_rel(sigma_rel: float, key: str = 'sigma_rel') -> None:
  """Returns None; raises a one-line ValueError unless 0 < sigma_rel < 1/sqrt(12) (γ > 0)."""
  if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)) or not 0 < sigma_rel < MAX_SIGMA_REL:
    raise ValueError(f'{key}={sigma_rel!r} must lie in (0, {MAX_SIGMA_REL:.4f}): a power-function EMA is at most '
                     'as wide as a flat average over all steps (EDM2 uses 0.05 and 0.10)')


def gamma_to_sigma_rel(gamma):
  """Returns σ_rel of exponent γ: the profile's standard deviation over its length, sqrt((γ+1)/((γ+2)²(γ+3)))."""
  gamma = np.float64(gamma)
  return np.sqrt((gamma + 1) / (gamma + 2) ** 2 / (gamma + 3))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
  """Returns the exponent γ > 0 whose profile has relative standard deviation σ_rel.

  σ_rel² = (γ+1)/((γ+2)²(γ+3)) is the cubic γ³ + 7γ² + (16 - σ_rel⁻²)γ + (12 - σ_rel⁻²) = 0; its largest
  real root is the one with γ > 0.
  """
  check_sigma_rel(sigma_rel)
  inverse = np.float64(sigma_rel) ** -2
  return float(np.roots([1.0, 7.0, 16.0 - inverse, 12.0 - inverse]).real.max())


def profile_inner_products(steps_a, gammas_a, steps_b, gammas_b) -> np.ndarray:
  """Returns [len(a), len(b)]: the L2 inner products ∫ p_a(τ) p_b(τ) dτ of power-function profiles, float64.

  Profile i is (steps[i], gammas[i]). In closed form: (γa+1)(γb+1) / (γa+γb+1) · m^(γa+γb+1) /
  (ta^(γa+1) tb^(γb+1)), m = min(ta, tb), computed as a ratio of steps below 1 so that large steps don't overflow.
  """
  ta, ga = (np.asarray(v, np.float64).reshape(-1, 1) for v in (steps_a, gammas_a))
  tb, gb = (np.asarray(v, np.float64).reshape(1, -1) for v in (steps_b, gammas_b))
  # m^(ga+gb+1) / (ta^(ga+1) tb^(gb+1)) = (ta/tb)^gb / tb when ta <= tb, (tb/ta)^ga / ta otherwise.
  ratio = np.where(ta <= tb, (ta / tb) ** gb / tb, (tb / ta) ** ga / ta)
  return (ga + 1) * (gb + 1) / (ga + gb + 1) * ratio


def solve_coefficients(steps, sigma_rels, target_step: int, target_sigma_rels) -> np.ndarray:
  """Returns [snapshots, targets]: the weights of each snapshot in each target profile's least-squares fit.

  Snapshot i is the profile of sigma_rels[i] at steps[i]. Each column sums to 1 (EDM2's normalisation: the
  reconstruction of constant params is those params). A target that is a snapshot gets exactly that snapshot
  (the fit's own answer, without its rounding).
  """
  gammas = [sigma_rel_to_gamma(s) for s in sigma_rels]
  target_gammas = [sigma_rel_to_gamma(s) for s in target_sigma_rels]
  gram = profile_inner_products(steps, gammas, steps, gammas)
  projections = profile_inner_products(steps, gammas, [target_step] * len(target_gammas), target_gammas)
  # lstsq, not solve: two snapshots of one profile at one step (a resumed run's) make the Gram matrix singular.
  coefficients = np.linalg.lstsq(gram, projections, rcond=None)[0]
  coefficients = coefficients / coefficients.sum(axis=0, keepdims=True)
  for column, sigma_rel in enumerate(target_sigma_rels):
    same = [i for i, (t, s) in enumerate(zip(steps, sigma_rels)) if t == target_step and s == sigma_rel]
    if same:
      coefficients[:, column] = np.eye(len(steps))[same[0]]
  return coefficients


def profile_weights(step: int, gamma: float) -> np.ndarray:
  """Returns [step]: the weight of θ_1..θ_step in the power-function EMA tracked to `step`, float64.

  With β_i = (1 - 1/i)^(γ+1) the weight of θ_i is (1 - β_i) ∏_{j>i} β_j = (i^(γ+1) - (i-1)^(γ+1)) / step^(γ+1):
  the profile's mass over [i-1, i].
  """
  edges = (np.arange(step + 1, dtype=np.float64) / step) ** (gamma + 1)
  return np.diff(edges)


def classic_ema_weights(step: int, ema_decay: float, warmup: bool = True) -> np.ndarray:
  """Returns [step]: the weight of θ_1..θ_step in the classic EMA after `step` steps, float64.

  The update after step i (0-based) decays by min(ema_decay, (1 + i) / (10 + i)) with warmup, else ema_decay
  (train_step.ema_decay_at); θ_i enters with 1 - its update's decay and is multiplied by every later decay.
  """
  i = np.arange(step, dtype=np.float64)
  decays = np.minimum(ema_decay, (1.0 + i) / (10.0 + i)) if warmup else np.full(step, ema_decay, np.float64)
  later = np.concatenate([np.cumprod(decays[::-1])[::-1][1:], [1.0]])
  weights = (1.0 - decays) * later
  weights[0] += np.prod(decays)  # what is left of the EMA's start, the initial params: close enough to θ_1
  return weights


def equivalent_sigma_rel(weights: np.ndarray) -> float:
  """Returns the relative standard deviation of an averaging profile: the std of its step over its length."""
  weights = np.asarray(weights, np.float64)
  times = np.arange(1, len(weights) + 1, dtype=np.float64) - 0.5  # each step's weight sits on [i-1, i]
  total = weights.sum()
  mean = (weights * times).sum() / total
  return float(np.sqrt((weights * (times - mean) ** 2).sum() / total + 1.0 / 12.0) / len(weights))


def beta(step, gamma: float):
  """Returns (β, 1 - β) of the update after `step` steps (t = step + 1): β = (1 - 1/t)^(γ+1), in float32.

  Through log1p/expm1: 1 - 1/t rounds in float32 once t passes ~10^4 (600k steps would be off by 4%).
  """
  t = jnp.asarray(step, jnp.float32) + 1.0
  log_beta = (gamma + 1.0) * jnp.log1p(-1.0 / t)
  return jnp.exp(log_beta), -jnp.expm1(log_beta)


def update(profiles: tuple, params, step, gammas: tuple) -> tuple:
  """Returns each profile's params after the update of step `step` (0-based) toward params."""
  def one(profile, gamma):
    keep, take = beta(step, gamma)
    return jax.tree_util.tree_map(lambda e, p: keep * e + take * p, profile, params)
  return tuple(one(profile, gamma) for profile, gamma in zip(profiles, gammas))
