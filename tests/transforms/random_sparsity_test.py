"""Random masks, from the start or cut at a step: exact counts, uniform or ERK."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsify.core import distributions
from sparsify.core import masking
from sparsify.transforms import random as random_lib


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


@pytest.mark.parametrize("allocation", ["uniform", "erk"])
def test_random_sparsity_total(allocation):
  params = _params()
  tx = random_lib.random_sparsity(0.75, seed=3, allocation=allocation)
  masks = masking.find_masks(tx.init(params))
  kept = sum(int(np.sum(m)) for m in (masks["Dense_0"]["kernel"],
                                      masks["Dense_1"]["kernel"]))
  assert abs(kept - 0.25 * 750) <= 1
  if allocation == "uniform":
    assert int(np.sum(masks["Dense_0"]["kernel"])) == 150


def test_erk_layers_keep_their_own_counts_with_a_traced_sparsity():
  params = _params()
  densities = distributions.erk_densities([(20, 30), (30, 5)], 0.75)
  init = jax.jit(lambda s: masking.find_masks(random_lib.random_sparsity(
      s, allocation="erk").init(params)))
  masks = init(0.75)
  for layer, size, d in (("Dense_0", 600, densities[0]),
                         ("Dense_1", 150, densities[1])):
    kept = int(np.sum(masks[layer]["kernel"]))
    assert kept == size - round((1 - d) * size), layer


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="sparsity: got 1.5"):
    random_lib.random_sparsity(1.5)
  with pytest.raises(ValueError, match="allocation: got 'global'"):
    random_lib.random_sparsity(0.5, allocation="global")


def _prune_at(step, steps, **kwargs):
  """Masks after each of ``steps`` SGD steps with `random_pruning`."""
  params = _params()
  tx = optax.chain(optax.sgd(0.01), random_lib.random_pruning(
      0.8, step=step, **kwargs))
  state, update = tx.init(params), jax.jit(tx.update)
  seen = []
  for _ in range(steps):
    updates, state = update(params, state, params)
    params = optax.apply_updates(params, updates)
    seen.append(masking.find_masks(state))
  return params, seen


@pytest.mark.parametrize("allocation", ["uniform", "erk"])
def test_random_pruning_cuts_once_at_its_step(allocation):
  params, seen = _prune_at(3, 6, allocation=allocation, seed=1)
  d = (distributions.erk_densities([(20, 30), (30, 5)], 0.8)
       if allocation == "erk" else [0.2, 0.2])
  for t, masks in enumerate(seen):
    for (layer, size), density in zip((("Dense_0", 600), ("Dense_1", 150)),
                                      d):
      kept = int(np.sum(masks[layer]["kernel"]))
      assert kept == (size if t < 3 else size - round((1 - density) * size))
      if t >= 3:  # fixed after the cut, and the pruned weights are zero
        np.testing.assert_array_equal(masks[layer]["kernel"],
                                      seen[3][layer]["kernel"])
        assert np.all(np.asarray(params[layer]["kernel"])[
            ~np.asarray(masks[layer]["kernel"])] == 0)


def test_random_pruning_ignores_magnitudes_and_follows_the_seed():
  params = _params()

  def cut(seed):
    tx = random_lib.random_pruning(0.8, step=0, seed=seed)
    _, state = tx.update(params, tx.init(params), params)
    return masking.find_masks(state)["Dense_0"]["kernel"]

  masks = np.asarray(jax.jit(jax.vmap(cut))(jnp.arange(40)))
  assert np.all(masks.sum(axis=(1, 2)) == 120)  # 20 % of 600, every seed
  assert len({m.tobytes() for m in masks}) == 40  # each seed its own cut
  # Each weight is kept with probability 0.2 whatever its magnitude: the
  # large half of the weights holds half of the kept ones (binomial
  # standard deviation of that share: about 0.7 %).
  magnitude = np.abs(np.asarray(params["Dense_0"]["kernel"]))
  big = magnitude > np.median(magnitude)
  assert abs(masks[:, big].sum() / masks.sum() - 0.5) < 0.05


def test_counts_are_exact_where_uniform_draws_tie():
  # 200,704 float32 draws in [0, 1) hold ties (2**24 values); the mask
  # still keeps exactly size - round(s * size).
  import sparsify  # pylint: disable=g-import-not-at-top
  params = {"hidden": {"kernel": jnp.zeros((784, 256))}}
  masks = sparsify.find_masks(sparsify.random_sparsity(0.9).init(params))
  assert int(np.sum(masks["hidden"]["kernel"])) == 200704 - round(
      0.9 * 200704)
