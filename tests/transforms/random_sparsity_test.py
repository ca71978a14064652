"""Static random sparsity: exact kept counts, uniform or ERK."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsify.core import distributions
from sparsify.core import masking
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


def test_erk_layers_keep_their_own_counts_with_a_traced_sparsity():
  params = _params()
  densities = distributions.erk_densities([(20, 30), (30, 5)], 0.75)
  init = jax.jit(lambda s: masking.find_masks(random_pruning.random_sparsity(
      s, allocation="erk").init(params)))
  masks = init(0.75)
  for layer, size, d in (("Dense_0", 600, densities[0]),
                         ("Dense_1", 150, densities[1])):
    kept = int(np.sum(masks[layer]["kernel"]))
    assert kept == size - round((1 - d) * size), layer


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="sparsity: got 1.5"):
    random_pruning.random_sparsity(1.5)
  with pytest.raises(ValueError, match="allocation: got 'global'"):
    random_pruning.random_sparsity(0.5, allocation="global")
