"""Tests of k-means and product quantization against numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsify import quantize


def _np_seed(x, mask, u, k):
  """k-means++ in float64 driven by the uniforms ``u`` (inverse-CDF draws)."""
  x = np.where(mask, x, 0.0).astype(np.float64)
  mask = mask.astype(np.float64)
  n = len(x)
  dist = lambda c: np.sum(mask * (x - c) ** 2, axis=1)
  centres = [x[min(int(np.floor(u[0] * n)), n - 1)]]
  d2 = dist(centres[0])
  for i in range(1, k):
    total = d2.sum()
    if total > 0:
      cum = np.cumsum(d2)
      rows = np.nonzero(cum > u[i] * total)[0]
      row = rows[0] if rows.size else int(np.argmax(d2))
    else:
      row = min(int(np.floor(u[i] * n)), n - 1)
    centres.append(x[row])
    d2 = np.minimum(d2, dist(x[row]))
  return np.stack(centres)


def _np_assign(x, mask, c):
  d = np.sum(mask[:, None, :] * (x[:, None, :] - c[None]) ** 2, axis=-1)
  return np.argmin(d, axis=1)


def _np_lloyd(x, c, iterations, mask=None):
  """Plain Lloyd in float64, coordinate-wise means over kept entries."""
  mask = np.ones(x.shape, bool) if mask is None else mask
  x = np.where(mask, x, 0.0).astype(np.float64)
  mask = mask.astype(np.float64)
  c = np.array(c, np.float64)
  for _ in range(iterations):
    a = _np_assign(x, mask, c)
    for j in range(len(c)):
      rows = a == j
      weight = mask[rows].sum(axis=0)
      total = (x[rows] * mask[rows]).sum(axis=0)
      c[j] = np.where(weight > 0, total / np.maximum(weight, 1), c[j])
  return c, _np_assign(x, mask, c)


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
  np.testing.assert_array_equal(got, _np_seed(x, np.ones(x.shape, bool), u,
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
  ref_c, ref_a = _np_lloyd(x, seeds, iterations)
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
  seeds = _np_seed(x, mask, u, 5)
  np.testing.assert_allclose(quantize.kmeans_plus_plus(x, 5, key=key, mask=mask),
                             seeds, rtol=1e-6)
  centroids, assignment = quantize.kmeans(x, 5, key=key, iterations=8, mask=mask)
  ref_c, ref_a = _np_lloyd(x, seeds, 8, mask)
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


@pytest.mark.parametrize("shape,s,k", [((12, 6), 3, 4), ((3, 3, 4, 8), 4, 5)])
def test_encode_follows_the_layout_and_decode_equals_numpy(shape, s, k):
  rng = np.random.default_rng(6)
  kernel = rng.normal(size=shape).astype(np.float32)
  key = jax.random.key(1)
  code = quantize.pq_encode(kernel, subspaces=s, centroids=k, key=key, iterations=6)
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
  code = quantize.pq_encode(kernel, subspaces=s, centroids=k, key=jax.random.key(2))
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
  ref_c, ref_a = _np_lloyd(block, _np_seed(block, block_mask, u, 4), 25,
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
  assert quantize.pq_compression_rate(m, n, s, k) == pytest.approx(32 * m * n / bits)
  rng = np.random.default_rng(9)
  code = quantize.PQCode(codebooks=jnp.asarray(rng.normal(size=(s, k, n // s)),
                                        jnp.float32),
                  codes=jnp.asarray(rng.integers(0, k, (m, s)), jnp.int32),
                  shape=(n, m))
  assert quantize.pq_nbytes(code) == math.ceil(bits / 8)
  assert quantize.pq_nbytes(code) == 4 * k * n + math.ceil(code_bits * m * s / 8)


def test_pack_codes_by_hand_and_round_trip():
  packed = quantize.pack_codes(np.array([1, 2, 3]), 2)  # 01 10 11 00 -> 0b01101100
  np.testing.assert_array_equal(packed, np.array([108], np.uint8))
  codes = np.random.default_rng(10).integers(0, 37, size=(23, 3))
  packed = quantize.pack_codes(codes, 6)
  assert packed.nbytes == math.ceil(23 * 3 * 6 / 8)
  np.testing.assert_array_equal(quantize.unpack_codes(packed, 6, codes.size),
                                codes.ravel())
  with pytest.raises(ValueError, match=r"allowed: \[0, 3\]"):
    quantize.pack_codes(np.array([4]), 2)


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
  out, codes = quantize.pq_quantize(params, subspaces={"conv/kernel": 4,
                                                "fc/kernel": 3},
                             centroids={"conv/kernel": 5, "fc/kernel": 4},
                             key=jax.random.key(0), where="kernel",
                             masks=masks)
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
  with pytest.raises(ValueError, match=r"k: got 11; allowed: .*\[1, 10\]"):
    quantize.kmeans(np.ones((10, 2)), 11, key=key)
  with pytest.raises(ValueError, match="k: got 0"):
    quantize.kmeans(np.ones((10, 2)), 0, key=key)
  with pytest.raises(ValueError, match="x: got shape"):
    quantize.kmeans(np.ones(10), 2, key=key)
  with pytest.raises(ValueError, match="iterations: got -1"):
    quantize.kmeans(np.ones((10, 2)), 2, key=key, iterations=-1)
  with pytest.raises(ValueError, match="do not fit a kernel"):
    quantize.pq_decode(quantize.PQCode(jnp.zeros((2, 3, 3)), jnp.zeros((4, 2), jnp.int32),
                         (5, 4)))
  params = {"a": {"kernel": jnp.ones((9, 4))},
            "b": {"kernel": jnp.ones((8, 4))}}
  with pytest.raises(ValueError, match=r"^a/kernel: subspaces: got 2.*"
                     r"\[1, 3, 9\]"):
    quantize.pq_quantize(params, subspaces=2, centroids=2, key=key)
  with pytest.raises(ValueError, match=r"subspaces: no entry for 'a/kernel'"):
    quantize.pq_quantize(params, subspaces={"b/kernel": 2}, centroids=2, key=key)
  with pytest.raises(ValueError, match="selects no parameter"):
    quantize.pq_quantize(params, subspaces=1, centroids=2, key=key, where="bias")
  with pytest.raises(ValueError, match="subspaces: got 3"):
    quantize.pq_storage_bits(4, 8, 3, 2)


# --- weight sharing ---------------------------------------------------------

KEPT = 100  # Kept weights per test kernel, so that tests share compilations.


def _pruned(rng, shape, kept=KEPT):
  """Normal weights with exactly ``kept`` of them nonzero."""
  w = np.zeros(math.prod(shape), np.float32)
  where = rng.choice(w.size, kept, replace=False)
  w[where] = rng.normal(size=kept)
  return w.reshape(shape)


def _np_linear(values, k):
  """Deep Compression's linear seeding: k points evenly over [min, max]."""
  lo, hi = float(values.min()), float(values.max())
  return np.array([lo + j * (hi - lo) / max(k - 1, 1) for j in range(k)],
                  np.float64).astype(np.float32)


def _np_shared_decode(codebook, codes, mask):
  out = np.zeros(mask.shape, np.float32)
  flat = out.reshape(-1)
  for code, pos in zip(np.asarray(codes), np.flatnonzero(mask)):
    flat[pos] = np.asarray(codebook)[code]
  return out


@pytest.mark.parametrize("shape,bits,iterations", [((40, 30), 3, 25),
                                                   ((40, 30), 2, 4),
                                                   ((3, 3, 4, 6), 4, 25)])
def test_share_weights_is_1d_lloyd_from_linear_seeds(shape, bits, iterations):
  rng = np.random.default_rng(20)
  kernel = _pruned(rng, shape)
  code = quantize.share_weights(kernel, bits=bits, iterations=iterations)
  keep = kernel != 0
  kept = kernel[keep]
  k = 2 ** bits
  ref_c, ref_a = _np_lloyd(kept[:, None], _np_linear(kept, k)[:, None],
                           iterations)
  assert code.codebook.shape == (k,) and code.codebook.dtype == jnp.float32
  assert code.codes.shape == (KEPT,) and code.codes.dtype == jnp.int32
  assert code.shape == shape
  np.testing.assert_array_equal(code.mask, keep)
  np.testing.assert_array_equal(code.codes, ref_a)
  np.testing.assert_allclose(code.codebook, ref_c[:, 0], rtol=1e-5, atol=1e-6)
  decoded = quantize.shared_decode(code)
  assert decoded.dtype == jnp.float32 and decoded.shape == shape
  np.testing.assert_array_equal(decoded, _np_shared_decode(
      code.codebook, code.codes, keep))
  # Each kept weight sits at its nearest shared value.
  dist = np.abs(kept[:, None] - np.asarray(code.codebook)[None])
  np.testing.assert_array_equal(
      np.take_along_axis(dist, np.asarray(code.codes)[:, None], 1)[:, 0],
      dist.min(1))


def test_share_weights_kmeans_plus_plus_seeding():
  rng = np.random.default_rng(21)
  kernel = _pruned(rng, (30, 20))
  key = jax.random.key(7)
  code = quantize.share_weights(kernel, bits=3, key=key, init="kmeans++",
                         iterations=10)
  kept = kernel[kernel != 0][:, None]
  u = np.asarray(jax.random.uniform(key, (8,)), np.float64)
  seeds = _np_seed(kept, np.ones(kept.shape, bool), u, 8)
  ref_c, ref_a = _np_lloyd(kept, seeds, 10)
  np.testing.assert_array_equal(code.codes, ref_a)
  np.testing.assert_allclose(code.codebook, ref_c[:, 0], rtol=1e-5, atol=1e-6)


def test_share_weights_with_a_mask_keeps_exactly_the_mask():
  rng = np.random.default_rng(22)
  kernel = rng.normal(size=(15, 10)).astype(np.float32)
  mask = _pruned(rng, kernel.shape) != 0
  kernel[np.nonzero(mask)[0][:7], np.nonzero(mask)[1][:7]] = 0.0  # kept zeros
  code = quantize.share_weights(kernel, bits=2, mask=mask)
  kept = kernel[mask]
  ref_c, ref_a = _np_lloyd(kept[:, None], _np_linear(kept, 4)[:, None], 25)
  np.testing.assert_array_equal(code.mask, mask)
  np.testing.assert_array_equal(code.codes, ref_a)
  np.testing.assert_allclose(code.codebook, ref_c[:, 0], rtol=1e-5, atol=1e-6)
  decoded = np.asarray(quantize.shared_decode(code))
  assert np.all(decoded[~mask] == 0.0)


def test_evenly_spaced_levels_are_reproduced_exactly():
  rng = np.random.default_rng(23)
  levels = np.array([-1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5], np.float32)
  kernel = levels[rng.integers(0, 8, size=(12, 10))]
  code = quantize.share_weights(kernel, bits=3)
  np.testing.assert_array_equal(code.codebook, levels)
  np.testing.assert_array_equal(quantize.shared_decode(code), kernel)


@pytest.mark.parametrize("kept,bits,k", [(5, 4, 4), (4, 4, 4), (1, 3, 1),
                                         (0, 2, 1), (9, 3, 8)])
def test_few_kept_weights_round_k_down_to_a_power_of_two(kept, bits, k):
  kernel = np.zeros((4, 5), np.float32)
  kernel.reshape(-1)[np.arange(kept) * 2] = np.arange(1, kept + 1) * 0.25
  code = quantize.share_weights(kernel, bits=bits)
  assert code.codebook.shape == (k,) and code.codes.shape == (kept,)
  if kept == 0:
    np.testing.assert_array_equal(code.codebook, [0.0])
  if kept == 1:
    np.testing.assert_array_equal(code.codebook, [0.25])
  if kept == k:  # Evenly spaced kept values: one centroid each.
    np.testing.assert_array_equal(quantize.shared_decode(code), kernel)
  np.testing.assert_array_equal(quantize.shared_decode(code), _np_shared_decode(
      code.codebook, code.codes, kernel != 0))


def test_share_params_default_selection_bits_per_layer_and_masks():
  rng = np.random.default_rng(24)
  params = {"fc1": {"kernel": jnp.asarray(_pruned(rng, (30, 12))),
                    "bias": jnp.ones(12)},
            "conv": {"kernel": jnp.asarray(_pruned(rng, (3, 3, 2, 8)))},
            "fc2": {"kernel": jnp.asarray(rng.normal(size=(20, 6)),
                                          jnp.bfloat16)}}
  mask = _pruned(rng, (20, 6)) != 0
  masks = {"fc2": {"kernel": jnp.asarray(mask)}}
  out, codes = quantize.share_params(params, bits={"fc1/kernel": 3, "fc2/kernel": 2},
                              masks=masks)
  assert sorted(codes) == ["fc1/kernel", "fc2/kernel"]
  assert codes["fc1/kernel"].codebook.shape == (8,)
  assert codes["fc2/kernel"].codebook.shape == (4,)
  np.testing.assert_array_equal(codes["fc2/kernel"].mask, mask)
  np.testing.assert_array_equal(codes["fc1/kernel"].mask,
                                np.asarray(params["fc1"]["kernel"]) != 0)
  direct = quantize.share_weights(params["fc1"]["kernel"], bits=3)
  jax.tree.map(np.testing.assert_array_equal, codes["fc1/kernel"], direct)
  assert out["fc2"]["kernel"].dtype == jnp.bfloat16
  for name in ("fc1", "fc2"):
    c = codes[f"{name}/kernel"]
    np.testing.assert_array_equal(
        np.asarray(out[name]["kernel"], np.float32),
        np.asarray(_np_shared_decode(c.codebook, c.codes, np.asarray(c.mask))
                   .astype(params[name]["kernel"].dtype), np.float32))
  assert out["conv"]["kernel"] is params["conv"]["kernel"]
  assert out["fc1"]["bias"] is params["fc1"]["bias"]


def test_share_params_kmeans_plus_plus_splits_the_key():
  rng = np.random.default_rng(25)
  params = {"a": {"kernel": jnp.asarray(_pruned(rng, (20, 6)))},
            "b": {"kernel": jnp.asarray(_pruned(rng, (10, 12)))}}
  key = jax.random.key(3)
  _, codes = quantize.share_params(params, bits=3, key=key, init="kmeans++",
                            where="kernel")
  for name, sub_key in zip(["a", "b"], jax.random.split(key, 2)):
    want = quantize.share_weights(params[name]["kernel"], bits=3, key=sub_key,
                           init="kmeans++")
    jax.tree.map(np.testing.assert_array_equal, codes[f"{name}/kernel"], want)


def test_weight_sharing_error_messages():
  kernel = np.ones((10, 10), np.float32)
  for bits in (0, 17, 2.5, True):
    with pytest.raises(ValueError, match=r"bits: got .*; allowed: an integer "
                       r"in \[1, 16\]"):
      quantize.share_weights(kernel, bits=bits)
  with pytest.raises(ValueError, match=r"mask: got shape \(10, 5\); allowed: "
                     r"the kernel's shape \(10, 10\)"):
    quantize.share_weights(kernel, bits=2, mask=np.ones((10, 5), bool))
  with pytest.raises(ValueError, match=r"init: got 'random'; allowed: "
                     r"\['linear', 'kmeans\+\+'\]"):
    quantize.share_weights(kernel, bits=2, init="random")
  with pytest.raises(ValueError, match="key: got None"):
    quantize.share_weights(kernel, bits=2, init="kmeans++")
  with pytest.raises(ValueError, match="iterations: got -1"):
    quantize.share_weights(kernel, bits=2, iterations=-1)
  code = quantize.share_weights(kernel, bits=2)
  with pytest.raises(ValueError, match=r"codes shape \(3,\); allowed: "
                     r"\(100,\)"):
    quantize.shared_decode(code._replace(codes=jnp.zeros(3, jnp.int32)))
  with pytest.raises(ValueError, match="mask shape"):
    quantize.shared_decode(code._replace(shape=(4, 25)))
  params = {"a": {"kernel": jnp.ones((9, 4))},
            "b": {"kernel": jnp.ones((8, 4))}}
  with pytest.raises(ValueError, match=r"^a/kernel: bits: got 20"):
    quantize.share_params(params, bits=20)
  with pytest.raises(ValueError, match=r"bits: no entry for 'b/kernel'"):
    quantize.share_params(params, bits={"a/kernel": 2})
  with pytest.raises(ValueError, match="selects no parameter"):
    quantize.share_params(params, bits=2, where="bias")
