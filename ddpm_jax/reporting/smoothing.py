"""Loss curves smoothed without lag: a local linear fit over a centred window (LOWESS of degree 1)."""
import numpy as np


def local_line(offsets: np.ndarray, values: np.ndarray, radius: float) -> float:
  """Returns the value at offset 0 of the tricube-weighted least-squares line through (offsets, values)."""
  weights = (1 - np.minimum(np.abs(offsets) / radius, 1.0)**3)**3
  mean_x, mean_y = np.average(offsets, weights=weights), np.average(values, weights=weights)
  spread = np.sum(weights * (offsets - mean_x)**2)
  slope = np.sum(weights * (offsets - mean_x) * (values - mean_y)) / spread if spread > 1e-12 else 0.0
  return float(mean_y - slope * mean_x)


def smooth(steps, values, window: float) -> np.ndarray:
  """Returns values smoothed by a local linear fit over a centred window of `window` steps (0 = the raw values).

  An EMA looks only back, so on a falling loss it lags (it once ended at 0.14 where the raw loss was 0.05).
  A centred window has no lag, and at the ends, where it is one-sided, the fitted line still follows the
  trend. Tricube weights: LOWESS of degree 1 without robustness passes. Positive values (losses) are fitted
  in log space, where their decay is closer to a line and the fit stays positive.
  """
  steps, values = np.asarray(steps, np.float64), np.asarray(values, np.float64)
  if not is_smoothed(steps, window):
    return values
  positive = bool((values > 0).all())
  ys, radius = (np.log(values) if positive else values), window / 2
  starts = np.searchsorted(steps, steps - radius, side='left')
  ends = np.searchsorted(steps, steps + radius, side='right')
  fitted = np.array([local_line(steps[a:b] - step, ys[a:b], radius) for step, a, b in zip(steps, starts, ends)])
  return np.exp(fitted) if positive else fitted


def is_smoothed(steps: np.ndarray, window: float) -> bool:
  """Returns whether a centred window of `window` steps reaches past the neighbours of points logged at `steps`."""
  return len(steps) >= 3 and window / 2 > float(np.median(np.diff(steps)))
