"""Ramps and schedule values against their closed forms, traced or not."""

import jax
import numpy as np
import optax

from sparsify.core import schedules


def test_ramp_closed_form():
  ramp = schedules.threshold_ramp(10, 30, power=3.0)
  for t, expected in [(0, 0.0), (10, 0.0), (20, 1 - 0.5**3), (25, 1 - 0.25**3),
                      (30, 1.0), (99, 1.0)]:
    np.testing.assert_allclose(ramp(t), expected, rtol=1e-6)


def test_polynomial_ramp_closed_form_with_traced_arguments():
  def closed(t, si, sf, t0, t1, p):
    x = min(max((t - t0) / (t1 - t0), 0.0), 1.0)
    return sf + (si - sf) * (1 - x) ** p

  ramp = jax.jit(lambda t, *a: schedules.polynomial_ramp(*a)(t))
  for t in (0, 3, 7, 12, 20):
    args = (0.1, 0.8, 3, 12, 3.0)
    np.testing.assert_allclose(ramp(t, *args), closed(t, *args), rtol=1e-6)
    np.testing.assert_allclose(schedules.polynomial_ramp(*args)(t),
                               closed(t, *args), rtol=1e-6)


def test_empty_window_jumps_at_its_step():
  assert [float(schedules.progress(t, 5, 5)) for t in (4, 5, 6)] == [
      0.0, 1.0, 1.0]


def test_value_at_calls_schedules_only():
  assert schedules.value_at(0.25, 7) == 0.25
  schedule = optax.linear_schedule(0.0, 1.0, 10)
  np.testing.assert_allclose(schedules.value_at(schedule, 4), 0.4)
