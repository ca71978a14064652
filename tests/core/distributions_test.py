"""ERK densities against the closed form, and traced against concrete."""

import jax
import jax.numpy as jnp
import numpy as np

from sparsify.core import distributions


def test_erk_densities_closed_form():
  # Two layers: raw densities (a+b)/(ab): 50/600 and 35/150; no layer capped.
  shapes, s = [(20, 30), (30, 5)], 0.75
  eps = 0.25 * 750 / (50 / 600 * 600 + 35 / 150 * 150)
  np.testing.assert_allclose(distributions.erk_densities(shapes, s),
                             [eps * 50 / 600, eps * 35 / 150])


def test_erk_keeps_small_layers_dense_and_meets_the_budget():
  shapes, s = [(784, 300), (300, 100), (100, 10)], 0.9
  sizes = np.array([784 * 300, 300 * 100, 100 * 10], np.float64)
  # The last layer is capped at 1; eps solved again over the other two.
  raw = np.array([1084 / (784 * 300), 400 / (300 * 100)])
  eps = (0.1 * sizes.sum() - sizes[2]) / (raw * sizes[:2]).sum()
  densities = distributions.erk_densities(shapes, s)
  np.testing.assert_allclose(densities, [eps * raw[0], eps * raw[1], 1.0])
  np.testing.assert_allclose(np.dot(densities, sizes), 0.1 * sizes.sum())


def test_erk_with_traced_sparsity_equals_the_concrete_one():
  shapes = [(784, 300), (300, 100), (100, 10), (3, 3, 16, 32)]
  traced = jax.jit(lambda s: jnp.stack(distributions.erk_densities(
      shapes, s)))
  for s in (0.5, 0.9, 0.98):
    np.testing.assert_allclose(traced(s), distributions.erk_densities(
        shapes, s), rtol=1e-5)  # float32 against float64
