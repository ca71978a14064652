"""The mask mechanism: masks act through the updates; one "no mask" value."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsify
from sparsify.core import masking
from sparsify.core import paths
from sparsify.core import types


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


def test_mask_updates_rejects_bad_windows():
  with pytest.raises(ValueError, match="update_every: got 0"):
    masking.mask_updates(update_every=0)
  with pytest.raises(ValueError, match="end_step"):
    masking.mask_updates(begin_step=5, end_step=2)
  with pytest.raises(ValueError, match="begin_step: got -1"):
    masking.mask_updates(begin_step=-1)


def test_unselected_leaves_have_no_mask_everywhere():
  params = _params()
  masks = masking.find_masks(optax.chain(
      optax.sgd(0.1), sparsify.magnitude_pruning(0.5)).init(params))
  # The one "no mask" value: what optax.masked leaves for unselected leaves.
  for layer in ("Dense_0", "Dense_1"):
    assert types.is_no_mask(masks[layer]["bias"])
    assert masks[layer]["bias"] == types.NO_MASK
    assert not types.is_no_mask(masks[layer]["kernel"])
  # It has no leaves: the masks' leaves are the boolean arrays only.
  assert [m.dtype for m in jax.tree.leaves(masks)] == [jnp.bool_] * 2
  full = masking.fill_masks(masks, params)
  pruned = masking.apply_masks(params, masks)
  for layer in ("Dense_0", "Dense_1"):
    np.testing.assert_array_equal(full[layer]["bias"],
                                  np.ones_like(params[layer]["bias"], bool))
    np.testing.assert_array_equal(pruned[layer]["bias"],
                                  params[layer]["bias"])
    kernel = np.asarray(params[layer]["kernel"])
    np.testing.assert_array_equal(
        pruned[layer]["kernel"],
        np.where(np.asarray(masks[layer]["kernel"]), kernel, 0))
  assert masking.apply_masks(params, None) is params
  jax.tree.map(lambda m: np.testing.assert_array_equal(m, True),
               masking.fill_masks(None, params))


def test_init_masks_may_leave_leaves_without_a_mask():
  params = _params()
  rows = np.arange(20)[:, None] % 2 == 0
  given = {"Dense_0": {"kernel": jnp.asarray(np.broadcast_to(rows, (20, 30))),
                       "bias": types.NO_MASK},
           "Dense_1": {"kernel": types.NO_MASK, "bias": types.NO_MASK}}
  masks = masking.find_masks(masking.mask_updates(lambda p: given).init(
      params))
  np.testing.assert_array_equal(masks["Dense_0"]["kernel"],
                                np.broadcast_to(rows, (20, 30)))
  np.testing.assert_array_equal(masks["Dense_1"]["kernel"],
                                np.ones((30, 5), bool))  # keeps every weight
