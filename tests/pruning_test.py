"""Tests of the mask mechanism and the magnitude / random pruners."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsify

from sparsify.core import paths
from sparsify.core import masking
from sparsify.core import distributions
from sparsify.core import topk
from sparsify.transforms import magnitude
from sparsify.transforms import random as random_pruning


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "Dense_0": {"kernel": jnp.asarray(rng.normal(size=(20, 30)),
                                        jnp.float32),
                  "bias": jnp.asarray(rng.normal(size=30), jnp.float32)},
      "Dense_1": {"kernel": jnp.asarray(rng.normal(size=(30, 5)),
                                        jnp.float32),
                  "bias": jnp.zeros(5, jnp.float32)},
  }


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


@pytest.mark.parametrize("opt", [
    optax.sgd(0.1), optax.sgd(0.1, momentum=0.9), optax.adam(0.1),
    optax.adamw(0.1, weight_decay=0.1)], ids=["sgd", "momentum", "adam",
                                              "adamw"])
def test_masked_weights_stay_exactly_zero(opt):
  params = _params()
  fixed = {"Dense_0": {"kernel": np.random.default_rng(2).random((20, 30))
                       > 0.5}}

  def init_masks(p):  # p holds only the selected kernels
    return paths.map_with_name(
        lambda name, x: jnp.asarray(fixed["Dense_0"]["kernel"])
        if name == "Dense_0/kernel" else jnp.ones(x.shape, bool), p)

  tx = optax.chain(opt, masking.mask_updates(init_masks))
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    # Constant gradients push every weight, masked or not, every step.
    grads = jax.tree.map(lambda p: jnp.ones_like(p) + 0.1 * p, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(5):
    params, state = step(params, state)
    kernel = np.asarray(params["Dense_0"]["kernel"])
    assert np.all(kernel[~fixed["Dense_0"]["kernel"]] == 0.0)
    assert np.all(kernel[fixed["Dense_0"]["kernel"]] != 0.0)
  # Biases are not selected by default and keep training.
  assert np.all(np.asarray(params["Dense_1"]["bias"]) != 0.0)


def test_kept_weights_get_the_chain_update_bit_for_bit():
  params = _params()
  grads = jax.tree.map(lambda p: 0.3 * p + 0.01, params)
  plain = optax.sgd(0.1, momentum=0.9)
  masked = optax.chain(plain, masking.mask_updates())
  u_plain, _ = plain.update(grads, plain.init(params), params)
  u_mask, _ = masked.update(grads, masked.init(params), params)
  jax.tree.map(np.testing.assert_array_equal, u_plain, u_mask)


def test_mask_updates_needs_params():
  tx = masking.mask_updates()
  params = _params()
  with pytest.raises(ValueError, match="params"):
    tx.update(params, tx.init(params))


def test_gmp_follows_cubic_schedule():
  params = _params()
  final, begin, end, every = 0.8, 2, 11, 2  # 11: the end is off the grid
  tx = optax.chain(optax.sgd(0.01), magnitude.gradual_magnitude_pruning(
      final, begin_step=begin, end_step=end, update_every=every))
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  current = 0.0
  for t in range(16):
    params, state = step(params, state)
    if begin <= t <= end and ((t - begin) % every == 0 or t == end):
      current = final * (1 - (1 - (t - begin) / (end - begin)) ** 3)
    for layer, size in (("Dense_0", 600), ("Dense_1", 150)):
      zeros = int(np.sum(np.asarray(params[layer]["kernel"]) == 0))
      assert zeros == round(current * size), (t, layer)


def test_one_shot_magnitude_prunes_smallest():
  params = _params()
  tx = magnitude.magnitude_pruning(0.5, step=0)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params),
                         params)
  new = optax.apply_updates(params, updates)
  kernel = np.asarray(params["Dense_0"]["kernel"])
  expected = np.abs(kernel) >= np.sort(np.abs(kernel).ravel())[300]
  np.testing.assert_array_equal(np.asarray(new["Dense_0"]["kernel"]) != 0,
                                expected)


@pytest.mark.parametrize("allocation", ["uniform", "erk"])
def test_random_sparsity_total(allocation):
  params = _params()
  tx = random_pruning.random_sparsity(0.75, seed=3, allocation=allocation)
  masks = masking.find_masks(tx.init(params))
  kept = sum(int(np.sum(m)) for m in (masks["Dense_0"]["kernel"],
                                      masks["Dense_1"]["kernel"]))
  assert abs(kept - 0.25 * 750) <= 1
  if allocation == "uniform":
    assert int(np.sum(masks["Dense_0"]["kernel"])) == 150


def test_erk_densities_closed_form():
  # Two layers: raw densities (a+b)/(ab): 50/600 and 35/150; no layer capped.
  shapes, s = [(20, 30), (30, 5)], 0.75
  eps = 0.25 * 750 / (50 / 600 * 600 + 35 / 150 * 150)
  np.testing.assert_allclose(distributions.erk_densities(shapes, s),
                             [eps * 50 / 600, eps * 35 / 150])


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


@pytest.mark.parametrize("factory,kwargs", [
    (sparsify.gradual_magnitude_pruning,
     dict(sparsity=0.9, begin_step=0, end_step=10, update_every=1)),
    (sparsify.magnitude_pruning, dict(sparsity=0.5, step=3)),
    (sparsify.dynamic_adaptive_threshold,
     dict(c=1.0, begin_step=0, end_step=10, update_every=2)),
])
def test_every_argument_can_be_injected(factory, kwargs):
  # No static_args: step windows and counts are traced too, and the result
  # equals the plain transform's, step by step.
  params = {"w": {"kernel": jnp.arange(64.0).reshape(8, 8) - 20.0}}
  injected, plain = optax.inject_hyperparams(factory)(**kwargs), factory(
      **kwargs)
  a, b = params, params
  sa, sb = injected.init(a), plain.init(b)
  for _ in range(12):
    ua, sa = jax.jit(injected.update)(a, sa, a)
    ub, sb = jax.jit(plain.update)(b, sb, b)
    a, b = optax.apply_updates(a, ua), optax.apply_updates(b, ub)
    np.testing.assert_array_equal(a["w"]["kernel"], b["w"]["kernel"])
  assert np.sum(np.asarray(a["w"]["kernel"]) == 0) > 0
