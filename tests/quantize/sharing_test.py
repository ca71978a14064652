"""Tests of weight sharing against numpy references."""

import math

import jax
import jax.numpy as jnp
from kmeans_reference import np_lloyd
from kmeans_reference import np_seed
import numpy as np
import pytest

from sparsify import quantize

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
  ref_c, ref_a = np_lloyd(kept[:, None], _np_linear(kept, k)[:, None],
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
  seeds = np_seed(kept, np.ones(kept.shape, bool), u, 8)
  ref_c, ref_a = np_lloyd(kept, seeds, 10)
  np.testing.assert_array_equal(code.codes, ref_a)
  np.testing.assert_allclose(code.codebook, ref_c[:, 0], rtol=1e-5, atol=1e-6)


def test_share_weights_with_a_mask_keeps_exactly_the_mask():
  rng = np.random.default_rng(22)
  kernel = rng.normal(size=(15, 10)).astype(np.float32)
  mask = _pruned(rng, kernel.shape) != 0
  kernel[np.nonzero(mask)[0][:7], np.nonzero(mask)[1][:7]] = 0.0  # kept zeros
  code = quantize.share_weights(kernel, bits=2, mask=mask)
  kept = kernel[mask]
  ref_c, ref_a = np_lloyd(kept[:, None], _np_linear(kept, 4)[:, None], 25)
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
  out, codes = quantize.share_params(
      params, bits={"fc1/kernel": 3, "fc2/kernel": 2}, masks=masks)
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
