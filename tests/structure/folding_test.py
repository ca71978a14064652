"""Removed elements that are nonzero constants are folded into their readers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zoo

import sparsify


class _Net(nn.Module):
  """Conv-BN-relu twice (the second conv padded, no bias), flatten, Dense."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(6, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.Conv(5, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(3)(x.reshape((x.shape[0], -1)))


def _zero_scales(variables, scales):
  out = jax.tree.map(np.array, variables)
  for module, (zeroed, bias) in scales.items():
    bn = out["params"][module]
    bn["scale"][zeroed] = 0.0
    bn["bias"][:] = bias
  return out


@pytest.fixture(scope="module")
def net():
  x = jax.random.normal(jax.random.key(1), (4, 6, 6, 2))
  v = _Net().init(jax.random.key(0), x)
  v = _zero_scales(v, {"BatchNorm_0": ([1, 4], np.linspace(-1, 1, 6)),
                       "BatchNorm_1": ([2], 0.5)})
  return v, x


def test_zero_scale_channels_are_removed_without_changing_the_function(net):
  v, x = net
  structure = sparsify.structure_of(_Net().apply, v, x)
  keep = sparsify.keep_nonzero(v, structure)
  assert {n: k.sum() for n, k in keep.items()} == {"Conv_0": 4, "Conv_1": 4}
  slim_apply, small = sparsify.slim_model(_Net().apply, v, keep, x)
  # Channel 4 of BatchNorm_0 outputs relu(0.6) and channel 1 relu(-0.6) = 0:
  # only the first is a fold into Conv_1; BatchNorm_1's channel 2 outputs
  # relu(0.5) at each of 36 positions the Dense layer reads.
  consts = {f.key[1]: f.constants for f in slim_apply.folds}
  np.testing.assert_allclose(consts[("params/Conv_1/kernel",)], [0.0, 0.6],
                             rtol=1e-6)
  np.testing.assert_allclose(consts[("params/Dense_0/kernel",)],
                             np.full(36, 0.5))
  other = jax.random.normal(jax.random.key(5), (7, 6, 6, 2))
  for inputs in (x, other):  # the padded borders too, at any batch size
    np.testing.assert_allclose(jax.jit(slim_apply)(small, inputs),
                               _Net().apply(v, inputs), atol=1e-5)
  # The masked model (shifts zeroed too) is another function.
  masked = sparsify.mask(v, structure, keep)
  assert np.abs(_Net().apply(masked, x) - _Net().apply(v, x)).max() > 0.1


def test_folds_hold_in_training_mode(net):
  v, x = net
  keep = sparsify.keep_nonzero(v, sparsify.structure_of(_Net().apply, v, x))
  slim_apply, small = sparsify.slim_model(_Net().apply, v, keep, x)
  out, state = slim_apply(small, x, train=True, mutable=["batch_stats"])
  ref, ref_state = _Net().apply(v, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(out, ref, atol=1e-5)
  # Conv_1's running mean keeps the folded constant of its input.
  kept = np.flatnonzero(keep["Conv_1"])
  np.testing.assert_allclose(state["batch_stats"]["BatchNorm_1"]["mean"],
                             ref_state["batch_stats"]["BatchNorm_1"]["mean"][
                                 kept], atol=1e-6)


def test_elements_that_vary_are_not_folded(net):
  v, x = net
  v = jax.tree.map(np.array, v)
  v["params"]["BatchNorm_0"]["scale"][[1, 4]] = 1e-3  # small, not zero
  structure = sparsify.structure_of(_Net().apply, v, x)
  keep = {"Conv_0": np.array([True, False, True, True, False, True])}
  slim_apply, small = sparsify.slim_model(_Net().apply, v, keep, x)
  assert all(f.key[1] != ("params/Conv_1/kernel",) for f in slim_apply.folds)
  masked = sparsify.mask(v, structure, keep)
  np.testing.assert_allclose(slim_apply(small, x), _Net().apply(masked, x),
                             atol=1e-5)


def test_a_resnet_with_zero_batchnorm_scales_keeps_its_logits():
  case = zoo.CASES["resnet18"]
  model = case.build()
  variables = jax.tree.map(np.array, zoo.variables(case))
  x = jnp.asarray(case.example())
  apply_fn = lambda v, x: model.apply(v, x, **case.apply_kwargs)
  structure = sparsify.structure_of(apply_fn, variables, x)
  rng = np.random.default_rng(0)
  keep = {}
  for unit in structure:
    if unit.kind != "channel":
      continue
    k = rng.random(unit.size) < 0.5
    k[0] = True
    keep[unit.name] = k
    kind, slots = sparsify.structure.scales.scale_slots(unit)
    assert kind == "batchnorm"
    for slot in slots:  # zero scale, nonzero shift: relu(beta) remains
      module = slot.path.split("/")[1:-1]
      bn = variables["params"]
      for part in module:
        bn = bn[part]
      bn["scale"][slot.index[~k].ravel()] = 0.0
      bn["bias"][slot.index[~k].ravel()] = rng.uniform(0.2, 1.0, (~k).sum())
  assert keep
  slim_apply, small = sparsify.slim_model(apply_fn, variables, keep, x)
  assert slim_apply.folds
  np.testing.assert_allclose(slim_apply(small, x), apply_fn(variables, x),
                             atol=1e-4)
