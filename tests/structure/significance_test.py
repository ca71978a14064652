"""LCT's layer significance: global magnitude masks and the layer order."""

import jax.numpy as jnp
import numpy as np
import pytest

from sparsify.core import paths
from sparsify.structure import significance


def _round16(sigma):
  """Reference rounding to 16 significant bits, ties to even (numpy)."""
  mantissa, exponent = np.frexp(np.float64(np.float32(sigma)))
  return np.float32(np.ldexp(np.round(mantissa * 2.0**16), exponent - 16))


def _numpy_global_masks(params, sparsity):
  kernels = {f"{k}/kernel": np.asarray(v["kernel"]) for k, v in params.items()}
  pooled = np.sort(np.concatenate([np.abs(w).ravel()
                                   for w in kernels.values()]))
  n_prune = int(round(sparsity * pooled.size))
  threshold = pooled[n_prune]  # smallest kept magnitude
  return {n: np.abs(w) >= threshold for n, w in kernels.items()}


def _three_layers():
  rng = np.random.default_rng(4)
  return {"a": {"kernel": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32),
                "bias": jnp.ones(8, jnp.float32)},
          "b": {"kernel": jnp.asarray(0.3 * rng.normal(size=(8, 20)),
                                      jnp.float32)},
          "c": {"kernel": jnp.asarray(3.0 * rng.normal(size=(20, 4)),
                                      jnp.float32)}}


@pytest.mark.parametrize("by", ["sparsity", "size"])
def test_layer_significance_matches_numpy(by):
  params = _three_layers()
  sig = significance.layer_significance(params, sparsity=0.7, by=by)
  expected = _numpy_global_masks(params, 0.7)
  for name, mask in expected.items():
    np.testing.assert_array_equal(dict(paths.named_leaves(sig.masks))[name],
                                  mask)
  np.testing.assert_array_equal(sig.masks["a"]["bias"], np.ones(8, bool))
  if by == "sparsity":
    scores = {n: 1.0 - m.mean() for n, m in expected.items()}
    order = sorted(scores, key=lambda n: -scores[n])
    assert order == ["b/kernel", "a/kernel", "c/kernel"]  # by construction
  else:
    scores = {n: float(m.size) for n, m in expected.items()}
    order = ["b/kernel", "c/kernel", "a/kernel"]  # 160, 80, 64 weights
  assert sig.order == tuple(order)
  assert sig.scores == pytest.approx(scores)


def test_layer_significance_by_quantization_calls_evaluate_per_layer():
  params = _three_layers()
  masks = _numpy_global_masks(params, 0.5)
  pruned = {n: np.where(m, dict(paths.named_leaves(params))[n], 0)
            for n, m in masks.items()}
  weight = {"a/kernel": 1.0, "b/kernel": 40.0, "c/kernel": 0.1}
  calls = []

  def evaluate(p):
    leaves = dict(paths.named_leaves(p))
    calls.append({n: len(np.unique(np.asarray(leaves[n]))) <= 3
                  for n in masks})
    return 1.0 - sum(weight[n] * np.mean((np.asarray(leaves[n]) - w) ** 2)
                     for n, w in pruned.items())

  sig = significance.layer_significance(params, sparsity=0.5, by="quantization",
                               evaluate=evaluate)
  assert len(calls) == 1 + 3
  assert calls[0] == {n: False for n in masks}  # the pruned network first
  for n, flags in zip(masks, calls[1:]):  # then one ternarized layer a call
    assert flags == {k: k == n for k in masks}
  drops = {}
  for n, w in pruned.items():
    m = masks[n]
    sigma = np.abs(w[m]).mean()
    t = np.where(m, np.sign(w) * _round16(sigma), 0)
    drops[n] = weight[n] * np.mean((t - w) ** 2)
  assert sig.scores == pytest.approx(drops, rel=1e-5)
  assert list(sig.order) == sorted(drops, key=drops.get)


def test_layer_significance_rejects_bad_input():
  params = _three_layers()
  with pytest.raises(ValueError, match="by"):
    significance.layer_significance(params, sparsity=0.5, by="entropy")
  with pytest.raises(ValueError, match="sparsity"):
    significance.layer_significance(params, sparsity=1.0)
  with pytest.raises(ValueError, match="evaluate"):
    significance.layer_significance(params, sparsity=0.5, by="quantization")
  with pytest.raises(ValueError, match="where"):
    significance.layer_significance(params, sparsity=0.5, where="conv")
