"""SNIP and gradual saliency pruning against numpy references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsify.core import masking
from sparsify.transforms import saliency

SHAPES = {"fc1": (12, 10), "fc2": (10, 6)}


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {name: {"kernel": jnp.asarray(rng.normal(size=shape), jnp.float32),
                 "bias": jnp.zeros(shape[1], jnp.float32)}
          for name, shape in SHAPES.items()}


def _grads(step):
  rng = np.random.default_rng(100 + step)
  return {name: {"kernel": jnp.asarray(rng.normal(size=shape), jnp.float32),
                 "bias": jnp.asarray(rng.normal(size=shape[1]), jnp.float32)}
          for name, shape in SHAPES.items()}


def _masks(state):
  return {n: np.asarray(m["kernel"])
          for n, m in masking.find_masks(state).items()}


def _keep_top(scores, sparsity, allocation):
  """Per layer or pooled, the largest scores kept (a stable sort, numpy)."""
  names = list(scores)
  pools = [names] if allocation == "global" else [[n] for n in names]
  out = {}
  for pool in pools:
    flat = np.concatenate([scores[n].ravel() for n in pool])
    keep = np.zeros(flat.size, bool)
    k = flat.size - int(np.round(sparsity * flat.size))
    keep[np.argsort(-flat, kind="stable")[:k]] = True
    start = 0
    for n in pool:
      out[n] = keep[start:start + scores[n].size].reshape(scores[n].shape)
      start += scores[n].size
  return out


def _run(tx, steps, params=None):
  params = _params() if params is None else params
  state = tx.init(params)
  shapes = jax.eval_shape(lambda: state)
  update = jax.jit(tx.update)
  history = [(params, state)]
  for t in range(steps):
    updates, state = update(_grads(t), state, params)
    params = optax.apply_updates(params, updates)
    assert jax.eval_shape(lambda s=state: s) == shapes  # checkpointable
    history.append((params, state))
  return history


@pytest.mark.parametrize("batches,allocation", [(1, "layerwise"),
                                                (3, "layerwise"),
                                                (3, "global")])
def test_snip_mask_is_the_top_k_of_summed_saliency_at_initialisation(
    batches, allocation):
  sparsity, lr = 0.75, 0.1
  tx = saliency.snip(optax.sgd(lr), sparsity=sparsity, batches=batches,
                     allocation=allocation)
  history = _run(tx, batches + 2)
  initial = _params()
  scores = {n: sum(np.abs(np.asarray(_grads(b)[n]["kernel"], np.float64) *
                          np.asarray(initial[n]["kernel"], np.float64))
                   for b in range(batches)) for n in SHAPES}
  want = _keep_top(scores, sparsity, allocation)
  for t, (params, state) in enumerate(history[1:]):
    masks = _masks(state)
    if t < batches - 1:  # held at the initial weights, not pruned yet
      assert all(m.all() for m in masks.values())
      jax.tree.map(np.testing.assert_array_equal, params, initial)
      continue
    for n in SHAPES:
      np.testing.assert_array_equal(masks[n], want[n])
      kernel = np.asarray(params[n]["kernel"])
      assert np.all(kernel[~want[n]] == 0)
    if t == batches - 1:  # the pruning update is the optimizer's first step
      for n in SHAPES:
        w0 = np.asarray(initial[n]["kernel"])
        g = np.asarray(_grads(t)[n]["kernel"])
        np.testing.assert_allclose(np.asarray(params[n]["kernel"]),
                                   np.where(want[n], w0 - lr * g, 0.0),
                                   rtol=1e-6)
  if allocation == "layerwise":
    for n in SHAPES:  # by hand: 120 - 90, 60 - 45
      assert masks[n].sum() == {"fc1": 30, "fc2": 15}[n]


def _cubic(t, final, begin, end):
  progress = min(max((t - begin) / (end - begin), 0.0), 1.0)
  return final * (1 - (1 - progress) ** 3)


def test_gradual_saliency_follows_the_cubic_schedule_and_the_average():
  sparsity, begin, end, every, decay = 0.8, 2, 11, 3, 0.5
  tx = saliency.gradual_saliency_pruning(
      optax.sgd(0.05), sparsity=sparsity, begin_step=begin, end_step=end,
      update_every=every, decay=decay)
  history = _run(tx, end + 3)
  average = {n: np.zeros(s) for n, s in SHAPES.items()}
  for t, ((before, state_before), (_, after)) in enumerate(
      itertools.pairwise(history)):
    for n in SHAPES:
      w = np.asarray(before[n]["kernel"], np.float64)
      g = np.asarray(_grads(t)[n]["kernel"], np.float64)
      average[n] = decay * average[n] + (1 - decay) * np.abs(g * w)
    old, new = _masks(state_before), _masks(after)
    assert all(np.all(new[n] <= old[n]) for n in SHAPES)  # only shrink
    due = begin <= t <= end and ((t - begin) % every == 0 or t == end)
    if not due:
      assert all(np.array_equal(new[n], old[n]) for n in SHAPES), t
      continue
    s_t = _cubic(t, sparsity, begin, end)
    for n, shape in SHAPES.items():
      size = int(np.prod(shape))
      assert (~new[n]).sum() == int(np.round(s_t * size)), (t, n)
      # The kept weights of largest average saliency (pruned ones score -1).
      scores = {n: np.where(old[n], average[n], -1.0)}
      np.testing.assert_array_equal(new[n],
                                    _keep_top(scores, s_t, "layerwise")[n])


def test_decay_zero_uses_the_step_saliency_and_stores_nothing():
  tx = saliency.gradual_saliency_pruning(
      optax.sgd(0.0), sparsity=0.5, begin_step=0, end_step=0, decay=0.0)
  params = _params()
  state = tx.init(params)
  assert state.scores == ()
  _, state = tx.update(_grads(0), state, params)
  scores = {n: np.abs(np.asarray(_grads(0)[n]["kernel"]) *
                      np.asarray(params[n]["kernel"])) for n in SHAPES}
  want = _keep_top(scores, 0.5, "layerwise")
  for n in SHAPES:
    np.testing.assert_array_equal(_masks(state)[n], want[n])


def test_arguments_are_checked_and_patterns_named():
  with pytest.raises(ValueError, match="batches"):
    saliency.snip(optax.sgd(0.1), sparsity=0.5, batches=0)
  with pytest.raises(ValueError, match="decay"):
    saliency.gradual_saliency_pruning(optax.sgd(0.1), sparsity=0.5,
                                      begin_step=0, end_step=4, decay=1.0)
  with pytest.raises(ValueError, match="pattern: got '3:2'"):
    saliency.snip(optax.sgd(0.1), sparsity=0.5, pattern="3:2")
  with pytest.raises(ValueError, match="sparsity: got 0.75; allowed: 0.5"):
    saliency.snip(optax.sgd(0.1), sparsity=0.75, pattern="2:4")
  with pytest.raises(ValueError, match="fc2/kernel has 10 inputs"):
    saliency.snip(optax.sgd(0.1), sparsity=0.75, pattern="1:4").init(
        _params())


def test_snip_n_by_m_keeps_the_most_salient_of_every_group():
  params = {"fc": {"kernel": _params()["fc1"]["kernel"]}}  # (12, 10)
  grads = {"fc": {"kernel": _grads(0)["fc1"]["kernel"]}}
  tx = saliency.snip(optax.sgd(0.1), sparsity=0.5, pattern="2:4")
  _, state = jax.jit(tx.update)(grads, tx.init(params), params)
  mask = np.asarray(masking.find_masks(state)["fc"]["kernel"])
  scores = np.abs(np.asarray(grads["fc"]["kernel"]) *
                  np.asarray(params["fc"]["kernel"]))
  want = np.zeros_like(mask)
  for start in range(0, 12, 4):  # groups of 4 consecutive inputs
    for j in range(10):
      top = np.argsort(-scores[start:start + 4, j], kind="stable")[:2]
      want[start + top, j] = True
  np.testing.assert_array_equal(mask, want)


# How flax's TrainState and nnx.Optimizer drive these transforms (no extra
# call, state shapes fixed, masks applied) is tests/transforms/contract_test.py's.
