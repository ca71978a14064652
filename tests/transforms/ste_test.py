"""Straight-through magnitude and random masks against numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsify.core import masking
from sparsify.transforms import ste


def _params(seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return {"fc1": {"kernel": jnp.asarray(rng.normal(size=(16, 12)), dtype),
                  "bias": jnp.zeros(12, dtype)},
          "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 6)), dtype),
                   "bias": jnp.zeros(6, dtype)}}


def _mask_state(state):
  found = [s for s in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, masking.MaskState))
           if isinstance(s, masking.MaskState)]
  assert len(found) == 1
  return found[0]


def _stepper(tx):
  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def _grads(params, rng, scale=0.5):
  return jax.tree.map(lambda p: jnp.asarray(
      scale * rng.normal(size=p.shape), p.dtype), params)


def _top_k_reference(dense, sparsity):
  """Keeps |w| at or above the k-th largest (ties kept), as topk does."""
  scores = np.abs(np.asarray(dense, np.float64)).ravel()
  keep = scores.size - round(sparsity * scores.size)
  return np.abs(np.asarray(dense)) >= np.sort(scores)[::-1][keep - 1]


def test_params_are_always_the_masked_dense_copy():
  params = _params()
  tx = optax.chain(optax.sgd(0.1, momentum=0.9), ste.magnitude_ste(0.7))
  state, step = tx.init(params), _stepper(tx)
  rng = np.random.default_rng(1)
  revived = 0
  previous = None
  for _ in range(10):
    params, state = step(params, state, _grads(params, rng))
    mask_state = _mask_state(state)
    for layer in ("fc1", "conv"):
      kernel = np.asarray(params[layer]["kernel"])
      dense = np.asarray(mask_state.dense[layer]["kernel"])
      mask = np.asarray(mask_state.masks[layer]["kernel"])
      np.testing.assert_array_equal(kernel, np.where(mask, dense, 0.0))
      np.testing.assert_array_equal(mask, _top_k_reference(dense, 0.7))
      assert np.sum(kernel == 0) == round(0.7 * kernel.size)  # exactly
    masks = np.asarray(mask_state.masks["fc1"]["kernel"])
    if previous is not None:
      revived += int(np.sum(masks & ~previous))
    previous = masks
    assert isinstance(mask_state.masks["fc1"]["bias"], optax.MaskedNode)
  assert revived > 0  # with these gradients, some pruned weights come back


def test_a_pruned_weight_comes_back_when_its_dense_value_grows():
  # Six weights, three kept. The gradient pushes the first (pruned at once)
  # up by 0.5 a step and shrinks the others; numpy follows the dense copy
  # w <- w - lr g and the masks of its three largest magnitudes. The first
  # weight, 0.5 + 0.5 t, passes the fourth, 3 - 0.0625 t, at t = 5.
  w0 = np.array([[0.5], [1.0], [2.0], [3.0], [4.0], [-5.0]], np.float32)
  g = np.array([[-1.0], [0.0], [0.25], [0.125], [0.25], [-0.25]], np.float32)
  params = {"fc": {"kernel": jnp.asarray(w0)}}
  grads = {"fc": {"kernel": jnp.asarray(g)}}
  tx = optax.chain(optax.sgd(0.5), ste.magnitude_ste(0.5))
  state, step = tx.init(params), _stepper(tx)
  dense = w0.copy()
  kept_first = []
  for _ in range(8):
    params, state = step(params, state, grads)
    dense = dense + np.float32(-0.5) * g
    mask = _top_k_reference(dense, 0.5)
    assert mask.sum() == 3
    mask_state = _mask_state(state)
    np.testing.assert_array_equal(mask_state.dense["fc"]["kernel"], dense)
    np.testing.assert_array_equal(mask_state.masks["fc"]["kernel"], mask)
    np.testing.assert_array_equal(params["fc"]["kernel"],
                                  np.where(mask, dense, 0.0))
    kept_first.append(bool(mask[0, 0]))
  assert kept_first == [False] * 4 + [True] * 4
  # It came back with the value it trained to while pruned: 0.5 + 0.5 * 8.
  assert float(params["fc"]["kernel"][0, 0]) == 4.5
  assert float(params["fc"]["kernel"][3, 0]) == 0.0  # the one it replaced


def test_masks_update_every_k_steps_from_begin_step_with_a_schedule():
  params = _params()
  schedule = lambda t: jnp.minimum(0.1 * t, 0.8)
  tx = optax.chain(optax.sgd(0.1), ste.magnitude_ste(
      schedule, begin_step=2, update_every=3))
  state, step = tx.init(params), _stepper(tx)
  rng = np.random.default_rng(2)
  current = 0.0
  for t in range(12):
    before = np.asarray(_mask_state(state).masks["conv"]["kernel"])
    params, state = step(params, state, _grads(params, rng))
    mask_state = _mask_state(state)
    mask = np.asarray(mask_state.masks["conv"]["kernel"])
    dense = np.asarray(mask_state.dense["conv"]["kernel"])
    if t >= 2 and (t - 2) % 3 == 0:
      current = float(schedule(t))
      np.testing.assert_array_equal(mask, _top_k_reference(dense, current))
    else:
      np.testing.assert_array_equal(mask, before)  # no update: masks kept
    kernel = np.asarray(params["conv"]["kernel"])
    assert np.sum(kernel == 0) == round(np.float32(current) * kernel.size), t
    np.testing.assert_array_equal(kernel, np.where(mask, dense, 0.0))


def test_global_allocation_pools_the_layers():
  params = _params()
  tx = ste.magnitude_ste(0.6, allocation="global")
  state = tx.init(params)
  updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state,
                             params)
  kernels = [np.asarray(params[k]["kernel"]) for k in ("conv", "fc1")]
  pool = np.abs(np.concatenate([k.ravel() for k in kernels]))
  kth = np.sort(pool)[::-1][pool.size - round(0.6 * pool.size) - 1]
  masks = _mask_state(state).masks
  for layer, kernel in zip(("conv", "fc1"), kernels):
    np.testing.assert_array_equal(masks[layer]["kernel"],
                                  np.abs(kernel) >= kth)
  new = optax.apply_updates(params, updates)
  assert sum(int(np.sum(np.asarray(new[k]["kernel"]) == 0))
             for k in ("conv", "fc1")) == round(0.6 * pool.size)


def _nm_ok(mask):
  inputs_last = np.moveaxis(mask, -2, -1)
  return np.all(inputs_last.reshape(*inputs_last.shape[:-1], -1, 4).sum(-1)
                == 2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_two_of_four_every_step(dtype):
  params = _params(dtype=dtype)
  tx = optax.chain(optax.adam(0.05), ste.magnitude_ste(0.5, pattern="2:4"))
  state, step = tx.init(params), _stepper(tx)
  rng = np.random.default_rng(3)
  for _ in range(6):
    params, state = step(params, state, _grads(params, rng))
    mask_state = _mask_state(state)
    for layer in ("fc1", "conv"):
      kernel = params[layer]["kernel"]
      assert kernel.dtype == dtype
      assert mask_state.dense[layer]["kernel"].dtype == dtype
      mask = np.asarray(mask_state.masks[layer]["kernel"])
      dense = np.asarray(mask_state.dense[layer]["kernel"], np.float32)
      assert _nm_ok(mask), layer
      np.testing.assert_array_equal(np.asarray(kernel, np.float32),
                                    np.where(mask, dense, 0.0))
      # Each group keeps its two largest dense magnitudes.
      groups = np.moveaxis(np.abs(dense), -2, -1).reshape(-1, 4)
      kept = np.moveaxis(mask, -2, -1).reshape(-1, 4)
      lowest_kept = np.where(kept, groups, np.inf).min(axis=1)
      highest_pruned = np.where(kept, -np.inf, groups).max(axis=1)
      assert np.all(lowest_kept >= highest_pruned)


def test_random_ste_draws_a_fresh_exact_mask_and_trains_the_dense_copy():
  params = _params()
  tx = optax.chain(optax.sgd(0.5), ste.random_ste(0.75, seed=4,
                                                 update_every=2))
  state, step = tx.init(params), _stepper(tx)
  rng = np.random.default_rng(5)
  dense = np.asarray(params["fc1"]["kernel"])
  masks = []
  for _ in range(6):
    grads = _grads(params, rng)
    params, state = step(params, state, grads)
    dense = dense + np.float32(-0.5) * np.asarray(grads["fc1"]["kernel"])
    mask_state = _mask_state(state)
    mask = np.asarray(mask_state.masks["fc1"]["kernel"])
    np.testing.assert_array_equal(mask_state.dense["fc1"]["kernel"], dense)
    np.testing.assert_array_equal(params["fc1"]["kernel"],
                                  np.where(mask, dense, 0.0))
    assert np.sum(mask) == 192 - round(0.75 * 192)
    masks.append(mask)
  for t in (1, 3, 5):  # kept between updates, fresh at each
    np.testing.assert_array_equal(masks[t], masks[t - 1])
  assert not np.array_equal(masks[0], masks[2])
  assert np.any(masks[2] & ~masks[0])  # some pruned weights came back


def test_random_ste_two_of_four():
  params = _params()
  tx = ste.random_ste(0.5, seed=1, pattern="2:4")
  state = tx.init(params)
  _, state = tx.update(params, state, params)
  for layer in ("fc1", "conv"):
    assert _nm_ok(np.asarray(_mask_state(state).masks[layer]["kernel"]))


def test_bad_arguments_are_named_in_one_line():
  for factory in (ste.magnitude_ste, ste.random_ste):
    with pytest.raises(ValueError, match="^sparsity: got 1.0"):
      factory(1.0)
    with pytest.raises(ValueError, match="^pattern: got '5:4'"):
      factory(0.5, pattern="5:4")
    with pytest.raises(ValueError, match=r"^sparsity: got 0.7; allowed: 0.5 "
                       "with pattern '2:4'"):
      factory(0.7, pattern="2:4")
    with pytest.raises(ValueError, match="^update_every: got 0"):
      factory(0.5, update_every=0)
    with pytest.raises(ValueError, match="^begin_step: got -1"):
      factory(0.5, begin_step=-1)
    tx = factory(0.5)
    params = {"fc": {"kernel": jnp.ones((6, 4))}}
    with pytest.raises(ValueError, match="params"):
      tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match="^pattern '2:4': fc/kernel has 6 "):
      factory(0.5, pattern="2:4").init(params)
  with pytest.raises(ValueError, match="^allocation: got 'global'; allowed: "
                     "'layerwise' with pattern '2:4'"):
    ste.magnitude_ste(0.5, pattern="2:4", allocation="global")
  with pytest.raises(ValueError, match="^allocation: got 'erk'; allowed: "
                     "'uniform' with pattern '2:4'"):
    ste.random_ste(0.5, pattern="2:4", allocation="erk")
  with pytest.raises(ValueError, match="^allocation: got 'global'"):
    ste.random_ste(0.5, allocation="global")
