"""The training loop's pieces that need no run (the loop itself runs in test_main, test_faults, test_resume)."""
import math
import warnings

from ddpm_jax.run import train


def test_logged_means_skip_non_finite_steps_and_warn_about_nothing():
  assert train.mean_of_finite([1.0, float('nan'), float('inf'), 3.0]) == 2.0
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert math.isnan(train.mean_of_finite([float('nan'), float('-inf')]))


def test_periodic_actions_are_due_at_their_period_and_at_the_last_step():
  assert [step for step in range(1, 11) if train.is_time(step, 4, 10)] == [4, 8, 10]
  assert [step for step in range(1, 11) if train.is_time(step, 0, 10)] == [10]
