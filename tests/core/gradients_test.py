"""The gradient-masking mechanism: exact selection, slot resets, the wrapper."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsify.core import gradients
from sparsify.core import topk
from sparsify.core import masking


def _reference_top_k(scores, k):
  """The k largest of the pooled scores, ties to the first (a stable sort)."""
  flat = np.concatenate([np.maximum(np.asarray(s, np.float64), 0).ravel()
                         for s in scores])
  keep = np.zeros(flat.size, bool)
  keep[np.argsort(-flat, kind="stable")[:k]] = True
  out, start = [], 0
  for s in scores:
    out.append(keep[start:start + s.size].reshape(s.shape))
    start += s.size
  return out


@pytest.mark.parametrize("k", [0, 1, 7, 13, 30, 31, 40])
def test_top_k_exact_matches_a_stable_sort_with_ties(k):
  rng = np.random.default_rng(0)
  # Few distinct values, so that the k-th largest is tied almost always.
  scores = [rng.integers(0, 4, size=(4, 5)).astype(np.float32),
            rng.integers(0, 4, size=(11,)).astype(np.float32)]
  scores[1][3] = -0.0  # a negative zero counts as zero
  got = jax.jit(topk.top_k_exact)([jnp.asarray(s) for s in scores], k)
  for g, want in zip(got, _reference_top_k(scores, k)):
    np.testing.assert_array_equal(np.asarray(g), want)
  assert sum(int(np.sum(g)) for g in got) == min(k, 31)


def test_reset_slots_zeroes_every_param_shaped_slot_only():
  params = {"a": jnp.ones((2, 3)), "b": jnp.ones(4)}
  opt = optax.chain(optax.scale_by_adam(), optax.trace(0.9))
  grads = jax.tree.map(jnp.ones_like, params)
  _, state = opt.update(grads, opt.init(params))
  where = {"a": jnp.array([[True, False, False], [False, False, True]]),
           "b": optax.MaskedNode()}
  reset = gradients.reset_slots(state, params, where)
  adam, trace = reset
  for slot in (adam.mu, adam.nu, trace.trace):
    np.testing.assert_array_equal(np.asarray(slot["a"]) == 0,
                                  np.asarray(where["a"]))
    assert np.all(np.asarray(slot["b"]) != 0)
  assert int(adam.count) == 1  # not a slot


def test_hold_steps_keep_the_weights_and_the_optimizer_still():
  params = {"fc": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
  tx = gradients.masked_optimizer(optax.sgd(1.0, momentum=0.5), hold_steps=2)
  state, update = tx.init(params), jax.jit(tx.update)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(2):
    updates, state = update(grads, state, params)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
  np.testing.assert_array_equal(state.inner[0].trace["fc"]["kernel"], 0.0)
  updates, state = update(grads, state, params)
  np.testing.assert_array_equal(updates["fc"]["kernel"], -1.0)  # first step


def test_the_optimizer_sees_only_kept_gradients_and_needs_params():
  params = {"fc": {"kernel": jnp.ones((2, 2))}}
  mask = jnp.array([[True, False], [True, True]])
  keep = lambda p: {"fc": {"kernel": mask}}
  tx = gradients.masked_optimizer(optax.sgd(1.0, momentum=0.9),
                                  init_masks=keep)
  state = tx.init(params)
  grads = {"fc": {"kernel": jnp.full((2, 2), 2.0)}}
  updates, state = tx.update(grads, state, params)
  np.testing.assert_array_equal(state.inner[0].trace["fc"]["kernel"],
                                [[2.0, 0.0], [2.0, 2.0]])
  new = optax.apply_updates(params, updates)["fc"]["kernel"]
  np.testing.assert_array_equal(new, [[-1.0, 0.0], [-1.0, -1.0]])
  assert masking.find_masks(state)["fc"]["kernel"].shape == (2, 2)
  with pytest.raises(ValueError, match="params"):
    tx.update(grads, state)
