"""The sort-free top-k selection against numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparsify
from sparsify.core import topk


@pytest.mark.parametrize("k", [0, 1, 7, 100, 599, 600])
def test_top_k_mask_matches_numpy(k):
  x = np.abs(np.random.default_rng(1).normal(size=(20, 30))).astype(np.float32)
  mask = np.asarray(jax.jit(lambda x, k: topk.top_k_mask([x], k)[0])(x, k))
  expected = np.zeros(x.size, bool)
  expected[np.argsort(-x.ravel(), kind="stable")[:k]] = True
  np.testing.assert_array_equal(mask.ravel(), expected)


def test_global_selection_pools_layers():
  a = np.array([[0.1, 0.5], [0.9, 0.2]], np.float32)
  b = np.array([[0.3, 0.8, 0.05]], np.float32)
  # 7 values; sparsity 4/7 keeps the 3 largest: 0.9, 0.8, 0.5.
  masks = topk.select_by_score({"a": a, "b": b}, 4 / 7, "global")
  np.testing.assert_array_equal(masks["a"], [[False, True], [True, False]])
  np.testing.assert_array_equal(masks["b"], [[False, True, False]])


@pytest.mark.parametrize("seed", range(4))
def test_top_k_mask_with_ties_zeros_and_wide_range(seed):
  rng = np.random.default_rng(seed)
  a = np.abs(rng.standard_cauchy(size=(40, 25))).astype(np.float32)
  a[rng.random(a.shape) < 0.3] = 0.0  # many exact zeros
  a[rng.random(a.shape) < 0.2] = 0.5  # many ties
  b = (10.0 ** rng.uniform(-30, 30, size=(7, 9))).astype(np.float32)
  pool = np.concatenate([a.ravel(), b.ravel()])
  for k in (1, 13, 400, 700, pool.size):
    kth = np.sort(pool)[::-1][k - 1]
    masks = topk.top_k_mask([jnp.asarray(a), jnp.asarray(b)], k)
    np.testing.assert_array_equal(masks[0], a >= kth)
    np.testing.assert_array_equal(masks[1], b >= kth)


def test_top_k_mask_counts_negative_zero_as_zero():
  # -0.0 has a negative bit pattern; as a score it is 0 and ties with +0.0.
  np.testing.assert_array_equal(
      sparsify.top_k_mask([jnp.array([-0.0, -0.0, 1.0])], 3)[0],
      [True, True, True])
  np.testing.assert_array_equal(
      sparsify.top_k_mask([jnp.array([-0.0, -0.0, 1.0])], 1)[0],
      [False, False, True])
  rng = np.random.default_rng(3)
  scores = np.abs(rng.normal(size=64)).astype(np.float32)
  scores[::4] = 0.0
  signs = np.where(rng.random(64) < 0.5, -1.0, 1.0).astype(np.float32)
  x = np.where(scores == 0, signs * np.float32(0.0), scores)  # +0.0 and -0.0
  assert np.signbit(x[scores == 0]).any()
  for k in (1, 16, 48, 50, 64):
    got = np.asarray(sparsify.top_k_mask([jnp.asarray(x)], k)[0])
    threshold = np.sort(scores)[::-1][k - 1]  # numpy reference; ties kept
    np.testing.assert_array_equal(got, scores >= threshold)


def test_negative_zero_in_a_pool_of_layers_under_jit():
  # Both layers of the pool: a -0.0 in one ties with +0.0 in the other.
  a = jnp.array([-0.0, 2.0, 0.0])
  b = jnp.array([1.0, -0.0])
  masks = jax.jit(topk.top_k_mask)([a, b], 5)
  np.testing.assert_array_equal(masks[0], [True, True, True])
  np.testing.assert_array_equal(masks[1], [True, True])
  masks = jax.jit(topk.top_k_mask)([a, b], 2)
  np.testing.assert_array_equal(masks[0], [False, True, False])
  np.testing.assert_array_equal(masks[1], [True, False])


@pytest.mark.parametrize("size,sparsity", [(10, 0.75), (600, 0.9), (7, 0.0),
                                           (150, 0.5)])
def test_keep_count_is_size_minus_rounded_pruned(size, sparsity):
  assert int(topk.keep_count(size, sparsity)) == size - round(sparsity * size)
  traced = jax.jit(lambda s: topk.keep_count(size, s))(sparsity)
  assert int(traced) == size - round(sparsity * size)
