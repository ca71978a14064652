"""Tests of product quantization against numpy references."""

import math

import jax
import jax.numpy as jnp
from kmeans_reference import np_lloyd
from kmeans_reference import np_seed
import numpy as np
import optax
import pytest

from sparsify import quantize


def _np_decode(codebooks, codes, shape):
  """The documented PQ layout, written out with loops."""
  codebooks, codes = np.asarray(codebooks), np.asarray(codes)
  s, _, d = codebooks.shape
  m = shape[-1]
  w = np.zeros((m, s * d), np.float32)
  for r in range(m):
    for j in range(s):
      w[r, j * d:(j + 1) * d] = codebooks[j, codes[r, j]]
  return w.T.reshape(shape)


def _np_matrix(kernel):
  kernel = np.asarray(kernel)
  return kernel.reshape(-1, kernel.shape[-1]).T


@pytest.mark.parametrize("shape,s,k", [((12, 6), 3, 4), ((3, 3, 4, 8), 4, 5)])
def test_encode_follows_the_layout_and_decode_equals_numpy(shape, s, k):
  rng = np.random.default_rng(6)
  kernel = rng.normal(size=shape).astype(np.float32)
  key = jax.random.key(1)
  code = quantize.pq_encode(kernel, subspaces=s, centroids=k, key=key,
                            iterations=6)
  m, n = shape[-1], math.prod(shape[:-1])
  assert code.codebooks.shape == (s, k, n // s)
  assert code.codebooks.dtype == jnp.float32
  assert code.codes.shape == (m, s) and code.codes.dtype == jnp.int32
  assert code.shape == shape
  codes = np.asarray(code.codes)
  assert codes.min() >= 0 and codes.max() < k
  w, d = _np_matrix(kernel), n // s
  for j, sub_key in enumerate(jax.random.split(key, s)):
    block = w[:, j * d:(j + 1) * d]
    centroids, assignment = quantize.kmeans(block, k, key=sub_key, iterations=6)
    np.testing.assert_array_equal(code.codebooks[j], centroids)
    np.testing.assert_array_equal(codes[:, j], assignment)
    dist = ((block[:, None, :] - np.asarray(code.codebooks[j])[None]) ** 2)
    np.testing.assert_array_equal(codes[:, j], dist.sum(-1).argmin(1))
  decoded = quantize.pq_decode(code)
  assert decoded.shape == shape
  np.testing.assert_array_equal(decoded, _np_decode(code.codebooks, codes,
                                                    shape))


@pytest.mark.parametrize("shape,s,distinct,k", [((12, 6), 3, 3, 4),
                                                ((3, 3, 4, 8), 4, 5, 5)])
def test_exact_reconstruction_with_enough_centroids(shape, s, distinct, k):
  rng = np.random.default_rng(7)
  m, n = shape[-1], math.prod(shape[:-1])
  d = n // s
  w = np.zeros((m, n), np.float32)
  for j in range(s):  # each block: rows drawn from `distinct` dyadic patterns
    patterns = rng.integers(-8, 8, size=(distinct, d)) / 4.0
    w[:, j * d:(j + 1) * d] = patterns[rng.integers(0, distinct, m)]
  kernel = w.T.reshape(shape)
  code = quantize.pq_encode(kernel, subspaces=s, centroids=k,
                            key=jax.random.key(2))
  np.testing.assert_array_equal(quantize.pq_decode(code), kernel)


def test_mask_fits_kept_weights_and_rezeroes_pruned_ones():
  rng = np.random.default_rng(8)
  kernel = rng.normal(size=(12, 6)).astype(np.float32)
  mask = rng.random(kernel.shape) < 0.6
  garbage = np.where(mask, kernel, 50.0 * rng.normal(size=kernel.shape))
  zeroed = np.where(mask, kernel, 0.0)
  key = jax.random.key(4)
  a = quantize.pq_encode(garbage, subspaces=3, centroids=4, key=key, mask=mask)
  b = quantize.pq_encode(zeroed, subspaces=3, centroids=4, key=key, mask=mask)
  jax.tree.map(np.testing.assert_array_equal, a, b)  # pruned values ignored
  w, mw = _np_matrix(garbage), _np_matrix(mask)
  u = np.asarray(jax.random.uniform(jax.random.split(key, 3)[1], (4,)),
                 np.float64)
  block, block_mask = w[:, 4:8], mw[:, 4:8]
  ref_c, ref_a = np_lloyd(block, np_seed(block, block_mask, u, 4), 25,
                          block_mask)
  np.testing.assert_allclose(a.codebooks[1], ref_c, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(a.codes[:, 1], ref_a)
  decoded = np.asarray(quantize.pq_decode(a, mask))
  assert np.all(decoded[~mask] == 0.0)
  np.testing.assert_array_equal(
      decoded, np.where(mask, _np_decode(a.codebooks, a.codes, (12, 6)), 0))
  full = quantize.pq_encode(garbage, subspaces=3, centroids=4, key=key,
                            mask=np.ones_like(mask))
  plain = quantize.pq_encode(garbage, subspaces=3, centroids=4, key=key)
  jax.tree.map(np.testing.assert_array_equal, full, plain)


@pytest.mark.parametrize("m,n,s,k,code_bits", [(300, 784, 4, 256, 8),
                                               (10, 100, 5, 3, 2),
                                               (7, 9, 3, 1, 0),
                                               (13, 6, 6, 5, 3)])
def test_storage_formula_matches_packed_bytes(m, n, s, k, code_bits):
  bits = 32 * k * n + code_bits * m * s
  assert quantize.pq_storage_bits(m, n, s, k) == bits
  assert quantize.pq_compression_rate(m, n, s, k) == pytest.approx(
      32 * m * n / bits)
  rng = np.random.default_rng(9)
  code = quantize.PQCode(
      codebooks=jnp.asarray(rng.normal(size=(s, k, n // s)), jnp.float32),
      codes=jnp.asarray(rng.integers(0, k, (m, s)), jnp.int32),
      shape=(n, m))
  assert quantize.pq_nbytes(code) == math.ceil(bits / 8)
  assert quantize.pq_nbytes(code) == 4 * k * n + math.ceil(
      code_bits * m * s / 8)


def test_pq_quantize_default_selects_dense_kernels():
  rng = np.random.default_rng(11)
  f32 = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  params = {"fc1": {"kernel": f32(12, 6), "bias": f32(6)},
            "conv": {"kernel": f32(3, 3, 2, 4)},
            "fc2": {"kernel": f32(6, 4)}}
  key = jax.random.key(5)
  out, codes = quantize.pq_quantize(params, subspaces=3, centroids=4, key=key)
  assert sorted(codes) == ["fc1/kernel", "fc2/kernel"]
  keys = jax.random.split(key, 2)  # flattening order: conv, fc1, fc2
  for name, sub_key in zip(["fc1", "fc2"], keys):
    code = quantize.pq_encode(params[name]["kernel"], subspaces=3, centroids=4,
                              key=sub_key)
    jax.tree.map(np.testing.assert_array_equal, codes[f"{name}/kernel"], code)
    np.testing.assert_array_equal(
        out[name]["kernel"], _np_decode(code.codebooks, code.codes,
                                        params[name]["kernel"].shape))
  assert out["conv"]["kernel"] is params["conv"]["kernel"]
  assert out["fc1"]["bias"] is params["fc1"]["bias"]
  assert not np.array_equal(out["fc1"]["kernel"], params["fc1"]["kernel"])


def test_pq_quantize_with_regex_mapping_and_masks():
  rng = np.random.default_rng(12)
  params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 8)),
                                           jnp.float32),
                     "bias": jnp.zeros(8)},
            "fc": {"kernel": jnp.asarray(rng.normal(size=(12, 6)),
                                         jnp.float32)}}
  mask = rng.random((3, 3, 4, 8)) < 0.5
  masks = {"conv": {"kernel": jnp.asarray(mask), "bias": optax.MaskedNode()},
           "fc": {"kernel": optax.MaskedNode()}}
  out, codes = quantize.pq_quantize(
      params, subspaces={"conv/kernel": 4, "fc/kernel": 3},
      centroids={"conv/kernel": 5, "fc/kernel": 4}, key=jax.random.key(0),
      where="kernel", masks=masks)
  assert codes["conv/kernel"].codebooks.shape == (4, 5, 9)
  assert codes["fc/kernel"].codebooks.shape == (3, 4, 4)
  assert out["conv"]["bias"] is params["conv"]["bias"]
  conv = np.asarray(out["conv"]["kernel"])
  assert np.all(conv[~mask] == 0.0)
  np.testing.assert_array_equal(
      conv, np.where(mask, _np_decode(codes["conv/kernel"].codebooks,
                                      codes["conv/kernel"].codes,
                                      mask.shape), 0.0))


def test_error_messages():
  kernel = np.ones((6, 4), np.float32)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"subspaces: got 4; allowed: a divisor"
                     r" of the 6 inputs.*\[1, 2, 3, 6\]"):
    quantize.pq_encode(kernel, subspaces=4, centroids=2, key=key)
  with pytest.raises(ValueError,
                     match=r"centroids: got 5; allowed: .*\[1, 4\]"):
    quantize.pq_encode(kernel, subspaces=2, centroids=5, key=key)
  with pytest.raises(ValueError, match="kernel: got shape"):
    quantize.pq_encode(np.ones(6), subspaces=2, centroids=2, key=key)
  with pytest.raises(ValueError, match="mask: got shape"):
    quantize.pq_encode(kernel, subspaces=2, centroids=2, key=key,
                       mask=np.ones((4, 6), bool))
  with pytest.raises(ValueError, match="do not fit a kernel"):
    quantize.pq_decode(quantize.PQCode(jnp.zeros((2, 3, 3)),
                                       jnp.zeros((4, 2), jnp.int32), (5, 4)))
  params = {"a": {"kernel": jnp.ones((9, 4))},
            "b": {"kernel": jnp.ones((8, 4))}}
  with pytest.raises(ValueError, match=r"^a/kernel: subspaces: got 2.*"
                     r"\[1, 3, 9\]"):
    quantize.pq_quantize(params, subspaces=2, centroids=2, key=key)
  with pytest.raises(ValueError, match=r"subspaces: no entry for 'a/kernel'"):
    quantize.pq_quantize(params, subspaces={"b/kernel": 2}, centroids=2,
                         key=key)
  with pytest.raises(ValueError, match="selects no parameter"):
    quantize.pq_quantize(params, subspaces=1, centroids=2, key=key,
                         where="bias")
  with pytest.raises(ValueError, match="subspaces: got 3"):
    quantize.pq_storage_bits(4, 8, 3, 2)
