"""Tests of k-means++ seeding and Lloyd iterations against numpy references."""

import jax
import jax.numpy as jnp
from kmeans_reference import np_lloyd
from kmeans_reference import np_seed
import numpy as np
import pytest

from sparsify import quantize


def _blobs(rng, n, d, k):
  centres = rng.normal(scale=3.0, size=(k, d))
  return (centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(
      np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seeding_matches_numpy_inverse_cdf_draws(seed):
  rng = np.random.default_rng(seed)
  x = _blobs(rng, 40, 3, 5)
  key = jax.random.key(seed)
  u = np.asarray(jax.random.uniform(key, (6,)), np.float64)
  got = quantize.kmeans_plus_plus(x, 6, key=key)
  np.testing.assert_array_equal(got, np_seed(x, np.ones(x.shape, bool), u,
                                             6).astype(np.float32))


def test_seeding_picks_every_distinct_row_before_a_duplicate():
  x = np.repeat(np.arange(4, dtype=np.float32)[:, None] * [1.0, -2.0], 5,
                axis=0)  # 4 distinct rows, 5 copies each
  for seed in range(5):
    c = np.asarray(quantize.kmeans_plus_plus(x, 6, key=jax.random.key(seed)))
    assert {tuple(r) for r in c[:4]} == {tuple(r) for r in x}


@pytest.mark.parametrize("seed,k,iterations", [(0, 4, 10), (1, 4, 3),
                                               (2, 1, 5), (3, 4, 0)])
def test_kmeans_matches_numpy_lloyd_from_the_same_seeds(seed, k, iterations):
  rng = np.random.default_rng(seed)
  x = _blobs(rng, 60, 3, 4)
  key = jax.random.key(seed)
  centroids, assignment = quantize.kmeans(x, k, key=key, iterations=iterations)
  seeds = np.asarray(quantize.kmeans_plus_plus(x, k, key=key))
  ref_c, ref_a = np_lloyd(x, seeds, iterations)
  assert centroids.dtype == jnp.float32 and assignment.dtype == jnp.int32
  assert centroids.shape == (k, 3) and assignment.shape == (60,)
  np.testing.assert_array_equal(assignment, ref_a)
  np.testing.assert_allclose(centroids, ref_c, rtol=1e-5, atol=1e-5)


def test_masked_kmeans_matches_numpy_reference():
  rng = np.random.default_rng(4)
  x = _blobs(rng, 50, 4, 3)
  mask = rng.random(x.shape) < 0.7
  mask[0] = False  # a row with nothing kept
  key = jax.random.key(3)
  u = np.asarray(jax.random.uniform(key, (5,)), np.float64)
  seeds = np_seed(x, mask, u, 5)
  np.testing.assert_allclose(
      quantize.kmeans_plus_plus(x, 5, key=key, mask=mask), seeds, rtol=1e-6)
  centroids, assignment = quantize.kmeans(x, 5, key=key, iterations=8,
                                          mask=mask)
  ref_c, ref_a = np_lloyd(x, seeds, 8, mask)
  np.testing.assert_array_equal(assignment, ref_a)
  np.testing.assert_allclose(centroids, ref_c, rtol=1e-5, atol=1e-5)


def test_empty_cluster_keeps_its_centroid():
  x = np.array([[0.0], [1.0], [10.0], [11.0]], np.float32)
  start = np.array([[0.0], [11.0], [500.0]], np.float32)
  centroids, assignment = quantize.lloyd(x, start, iterations=5)
  np.testing.assert_array_equal(centroids, [[0.5], [10.5], [500.0]])
  np.testing.assert_array_equal(assignment, [0, 0, 1, 1])


def test_kmeans_runs_under_jit():
  x = _blobs(np.random.default_rng(5), 60, 3, 3)
  key = jax.random.key(0)
  eager = quantize.kmeans(x, 4, key=key, iterations=4)
  jitted = jax.jit(lambda x: quantize.kmeans(x, 4, key=key, iterations=4))(x)
  jax.tree.map(np.testing.assert_array_equal, eager, jitted)


def test_error_messages():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"k: got 11; allowed: .*\[1, 10\]"):
    quantize.kmeans(np.ones((10, 2)), 11, key=key)
  with pytest.raises(ValueError, match="k: got 0"):
    quantize.kmeans(np.ones((10, 2)), 0, key=key)
  with pytest.raises(ValueError, match="x: got shape"):
    quantize.kmeans(np.ones(10), 2, key=key)
  with pytest.raises(ValueError, match="iterations: got -1"):
    quantize.kmeans(np.ones((10, 2)), 2, key=key, iterations=-1)
