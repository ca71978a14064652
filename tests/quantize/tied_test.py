"""Tests of tied updates (`quantize.tie_updates`) against numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsify import quantize

LR, MOMENTUM, STEPS = 0.05, 0.9, 6


def _pruned(rng, shape, kept):
  w = np.zeros(math.prod(shape), np.float32)
  w[rng.choice(w.size, kept, replace=False)] = rng.normal(size=kept)
  return w.reshape(shape)


def _np_momentum_tied(w, target, groups, signs, steps):
  """SGD with momentum on 0.5 ||w - target||^2, updates tied by group mean.

  The reference of the rule: u_i <- s_i mean_{j in G(i)} s_j u_j, and 0 for
  weights of no group (-1).
  """
  w = w.astype(np.float64)
  trace = np.zeros_like(w)
  g, s = groups.reshape(-1), signs.reshape(-1)
  for _ in range(steps):
    trace = (w - target) + MOMENTUM * trace
    u = (-LR * trace).reshape(-1) * s
    tied = np.zeros_like(u)
    for group in np.unique(g[g >= 0]):
      tied[g == group] = u[g == group].mean()
    w = w + (tied * s).reshape(w.shape)
  return w


def _train(w, target, tie):
  """The same steps with optax under jit: sgd + momentum, then the tie."""
  params = {"fc": {"kernel": jnp.asarray(w), "bias": jnp.zeros(3)}}
  tx = optax.chain(optax.sgd(LR, momentum=MOMENTUM),
                   quantize.tie_updates({"fc/kernel": tie}))
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = {"fc": {"kernel": params["fc"]["kernel"] - target,
                    "bias": params["fc"]["bias"] - 1.0}}
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(STEPS):
    params, state = step(params, state)
  return params


def test_shared_kernel_keeps_its_values_at_the_same_codes():
  rng = np.random.default_rng(0)
  bits = 3
  w = _pruned(rng, (30, 20), kept=120)
  code = quantize.share_weights(w, bits=bits)
  assert len(np.unique(np.asarray(code.codes))) == 2**bits  # no empty code
  shared = np.asarray(quantize.shared_decode(code))
  target = rng.normal(size=w.shape).astype(np.float32)
  params = _train(shared, target, code)
  got = np.asarray(params["fc"]["kernel"])
  keep = np.asarray(code.mask)
  # Exactly 2**bits distinct nonzero values, each at its code's positions,
  # and the pruned weights still zero.
  assert np.all(got[~keep] == 0)
  assert len(np.unique(got[keep])) == 2**bits
  codes = np.asarray(code.codes)
  for c in range(2**bits):
    assert len(np.unique(got[keep][codes == c])) == 1
  tie = quantize.shared_tie(code)
  want = _np_momentum_tied(shared, target, tie.groups,
                           np.ones(w.shape), STEPS)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  assert not np.allclose(got, shared)  # it did move
  # Untied leaves train as usual: bias -> 1 by momentum SGD.
  assert np.all(np.asarray(params["fc"]["bias"]) > 0)
  # The codebook read back off the weights decodes to them exactly.
  new = quantize.refit_shared(code, got)
  np.testing.assert_array_equal(np.asarray(new.codes), codes)
  np.testing.assert_array_equal(np.asarray(quantize.shared_decode(new)), got)


def test_pq_sub_vectors_of_a_centroid_move_together():
  rng = np.random.default_rng(1)
  n, m, s, k = 8, 12, 4, 3
  w = rng.normal(size=(n, m)).astype(np.float32)
  mask = rng.random((n, m)) < 0.8
  code = quantize.pq_encode(w, subspaces=s, centroids=k,
                            key=jax.random.key(0), mask=mask)
  start = np.asarray(quantize.pq_decode(code, mask))
  target = rng.normal(size=w.shape).astype(np.float32)
  tie = quantize.pq_tie(code, mask)
  got = np.asarray(_train(start, target, tie)["fc"]["kernel"])
  want = _np_momentum_tied(start, target, tie.groups, np.ones(w.shape), STEPS)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  assert np.all(got[~mask] == 0)
  # Every kept entry of a sub-vector is its centroid's entry: one value per
  # (sub-space, centroid, position) among the kept weights.
  d, codes = n // s, np.asarray(code.codes)
  for j in range(s):
    for c in range(k):
      rows = codes[:, j] == c
      for t in range(d):
        column = got[j * d + t, rows][mask[j * d + t, rows]]
        assert len(np.unique(column)) <= 1
  new = quantize.refit_pq(code, got, mask)
  np.testing.assert_array_equal(np.asarray(quantize.pq_decode(new, mask)),
                                got)
  assert not np.array_equal(np.asarray(new.codebooks),
                            np.asarray(code.codebooks))


def test_ternary_kernel_keeps_one_magnitude():
  rng = np.random.default_rng(2)
  signs = rng.choice([-1.0, 0.0, 1.0], size=(10, 6), p=[0.3, 0.4, 0.3])
  w = (0.5 * signs).astype(np.float32)
  target = rng.normal(size=w.shape).astype(np.float32)
  tie = quantize.sign_tie(w)
  got = np.asarray(_train(w, target, tie)["fc"]["kernel"])
  want = _np_momentum_tied(w, target, tie.groups, tie.signs, STEPS)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  magnitude = np.abs(got[signs != 0])
  assert len(np.unique(magnitude)) == 1 and magnitude[0] != 0.5
  np.testing.assert_array_equal(np.sign(got), np.sign(w))  # exact ±sigma


def test_pruned_weights_get_no_update_whatever_their_gradient():
  # Codes 0 (the 1.0s) and 1 (the 2.0s) move by their mean update; the
  # zeros, pruned, not at all.
  w = np.array([[1.0, 0.0, 1.0], [2.0, 2.0, 0.0]], np.float32)
  code = quantize.share_weights(w, bits=1)
  params = {"k": jnp.asarray(w)}
  tx = optax.chain(optax.sgd(1.0), quantize.tie_updates({"k": code}))
  grads = {"k": jnp.array([[1.0, 5.0, 3.0], [0.0, 2.0, 7.0]])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(
      np.asarray(updates["k"]), [[-2.0, 0.0, -2.0], [-1.0, -1.0, 0.0]])


def test_bad_ties_are_named():
  params = {"fc": {"kernel": jnp.zeros((3, 2))}}
  tie = quantize.Tie(np.zeros((3, 2), np.int32), 1)
  with pytest.raises(ValueError, match="'fc/bias' names no parameter"):
    quantize.tie_updates({"fc/bias": tie}).init(params)
  with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
    quantize.tie_updates({"fc/kernel": quantize.Tie(
        np.zeros((2, 3), np.int32), 1)}).init(params)
  with pytest.raises(ValueError, match="groups in"):
    quantize.tie_updates({"fc/kernel": quantize.Tie(
        np.full((3, 2), 4, np.int32), 2)})
  with pytest.raises(ValueError, match="allowed: a Tie, SharedCode or PQCode"):
    quantize.tie_updates({"fc/kernel": np.zeros((3, 2))})


def test_refit_refuses_a_kernel_that_was_not_tied():
  w = np.array([[1.0, 0.0], [1.0, -2.0]], np.float32)
  code = quantize.share_weights(w, bits=1)
  with pytest.raises(ValueError, match="1 of 4 weights differ"):
    quantize.refit_shared(code, np.array([[1.0, 0.0], [1.5, -2.0]]))
  with pytest.raises(ValueError, match="differ"):  # nonzero where pruned
    quantize.refit_shared(code, np.array([[1.0, 0.5], [1.0, -2.0]]))
