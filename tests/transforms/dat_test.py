"""DAT masks against a numpy reference of the documented rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsify


def _weights(seed=0):
  rng = np.random.default_rng(seed)
  return {"a": {"kernel": rng.normal(size=(30, 20)).astype(np.float32)},
          "b": {"kernel": rng.laplace(size=(20, 8)).astype(np.float32)}}


def _stats_threshold(w, keep, c):
  """mean + c * std (population) of |w| over the kept entries, in numpy."""
  m = np.abs(w[keep]).astype(np.float64)
  return m.mean() + c * m.std()


def _masks_after(tx, params, steps):
  """Masks after ``steps`` updates with zero gradients (weights unchanged)."""
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  update = jax.jit(tx.update)
  for _ in range(steps):
    _, state = update(zeros, state, params)
  return jax.tree.map(np.asarray, sparsify.find_masks(state))


@pytest.mark.parametrize("c", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("statistics", ["surviving", "all"])
def test_masks_follow_the_rule(c, statistics):
  params = _weights()
  # begin 0, end 2, every step: f = 0, 7/8, 1 at steps 0, 1, 2.
  tx = sparsify.dynamic_adaptive_threshold(
      c, begin_step=0, end_step=2, update_every=1, statistics=statistics)
  masks = _masks_after(tx, params, 3)
  for layer in ("a", "b"):
    w = params[layer]["kernel"]
    keep = np.ones(w.shape, bool)
    for f in (0.0, 7 / 8, 1.0):
      if statistics == "surviving":
        tau = f * _stats_threshold(w, keep, c)
      else:  # whole layer, pruned weights as zeros
        tau = f * _stats_threshold(np.where(keep, w, 0), np.ones_like(keep), c)
      keep = keep & (np.abs(w) >= tau)
    np.testing.assert_array_equal(masks[layer]["kernel"], keep)


@pytest.mark.parametrize("mode", ["clamp", "solve"])
def test_target_sparsity(mode):
  params = _weights(1)
  c, target = 0.2, 0.6
  tx = sparsify.dynamic_adaptive_threshold(
      c, begin_step=0, end_step=1, update_every=1, target_sparsity=target,
      target_mode=mode)
  masks = _masks_after(tx, params, 2)
  for layer in ("a", "b"):
    w = np.abs(params[layer]["kernel"])
    q = np.sort(w.ravel())[round(target * w.size)]  # smallest kept magnitude
    tau = min(_stats_threshold(w, np.ones_like(w, bool), c), q) if (
        mode == "clamp") else q
    np.testing.assert_array_equal(masks[layer]["kernel"], w >= tau)
  if mode == "solve":
    for layer in ("a", "b"):
      kernel = masks[layer]["kernel"]
      assert np.sum(~kernel) == round(target * kernel.size)


def test_hysteresis_prunes_below_a_tau_and_revives_above_b_tau():
  params = _weights(2)
  c, a, b = 0.5, 0.9, 1.1
  tx = sparsify.dynamic_adaptive_threshold(
      c, begin_step=0, end_step=2, update_every=1, recovery=True,
      prune_factor=a, revive_factor=b)
  masks = _masks_after(tx, params, 3)
  for layer in ("a", "b"):
    w = params[layer]["kernel"]  # zero gradients: trained values stay w
    keep = np.ones(w.shape, bool)
    for f in (0.0, 7 / 8, 1.0):
      tau = f * _stats_threshold(w, keep, c)
      # The band closes at the last update (f = 1).
      low, high = (a, b) if f < 1 else (1.0, 1.0)
      keep = np.where(keep, np.abs(w) >= low * tau, np.abs(w) >= high * tau)
    np.testing.assert_array_equal(masks[layer]["kernel"], keep)


def test_revived_weight_returns_with_its_trained_value():
  # c = 0, end step 4: f(t) = 1 - (1 - t/4)^3 = 0, 0.578, 0.875, 0.984, 1.
  params = {"l": {"kernel": jnp.array([[0.05, 1.0, -1.0, 0.9]])}}
  tx = optax.chain(optax.sgd(1.0), sparsify.dynamic_adaptive_threshold(
      0.0, begin_step=0, end_step=4, update_every=1, recovery=True))
  state = tx.init(params)
  values = []
  for push in (0.0, 0.0, 0.6, 0.6, 0.0):
    grads = {"l": {"kernel": jnp.array([[-push, 0.0, 0.0, 0.0]])}}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    values.append(float(params["l"]["kernel"][0, 0]))
  # Step 1: tau = 0.578 * mean(0.05, 1, 1, 0.9) = 0.426 and 0.05 < 0.9 tau:
  # pruned. Steps 2, 3: it trains on (0.05 -> 0.65 -> 1.25) but was below
  # 1.1 tau = 1.1 * 0.875 * 0.967 and 1.1 * 0.984 * 0.967 when measured.
  # Step 4: 1.25 > 1.1 * 0.967: back, with the value it trained to.
  np.testing.assert_allclose(values, [0.05, 0.0, 0.0, 0.0, 1.25], rtol=1e-6)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="target_sparsity: got 1.0"):
    sparsify.dynamic_adaptive_threshold(target_sparsity=1.0, begin_step=0,
                                        end_step=1)
  with pytest.raises(ValueError, match="target_mode: got 'exact'"):
    sparsify.dynamic_adaptive_threshold(target_mode="exact", begin_step=0,
                                        end_step=1)
  with pytest.raises(ValueError, match="end_step"):
    sparsify.dynamic_adaptive_threshold(begin_step=5, end_step=1)


def test_global_target_shares_one_quantile_of_normalised_magnitudes():
  params = _weights(3)
  c, target = 1.0, 0.7
  tx = sparsify.dynamic_adaptive_threshold(
      c, begin_step=0, end_step=1, update_every=1, target_sparsity=target,
      target_mode="global")
  masks = _masks_after(tx, params, 2)
  # Step 0: f = 0, nothing pruned. Step 1: f = 1; statistics over all weights.
  w = {l: np.abs(params[l]["kernel"]) for l in ("a", "b")}
  base = {l: _stats_threshold(w[l], np.ones_like(w[l], bool), c) for l in w}
  pooled = np.sort(np.concatenate([(w[l] / base[l]).ravel() for l in w]))
  q = pooled[round(target * pooled.size)]  # smallest kept normalised score
  total_pruned = 0
  for l in w:
    expected = w[l] / base[l] >= q
    np.testing.assert_array_equal(masks[l]["kernel"], expected)
    total_pruned += np.sum(~expected)
  assert total_pruned == round(target * pooled.size)
  # Layers end with different sparsities: the budget is shared, not split.
  assert np.mean(~masks["a"]["kernel"]) != np.mean(~masks["b"]["kernel"])
