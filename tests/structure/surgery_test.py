"""Surgery: the slim model computes what the gated model computes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpy_init
import pytest

from sparsify import data
from sparsify import models
from sparsify.core import paths
from sparsify.structure import spec as spec_lib
from sparsify.structure import surgery


def _set_gates(variables, rng, zero_fraction):
  """Random non-negative gates, a fraction of them exactly zero."""
  def gate(name, x):
    if not name.endswith("/gate"):
      return x
    g = rng.uniform(0.2, 2.0, size=x.shape).astype(np.float32)
    g[rng.random(x.shape) < zero_fraction] = 0.0
    return jnp.asarray(g)
  return {**variables, "params": paths.map_with_name(gate, variables["params"])}


@pytest.mark.parametrize("name,kwargs", [
    ("mlp", {"hidden": (64, 32)}),
    ("lenet_300_100", {}),  # slims into a lenet_300_100 of other widths
    ("vgg", {"stages": ((8, 8), (16,))}),
    ("resnet", {"depth": 8, "width": 8}),
    ("resnet", {"depth": 11, "width": 4, "block": "bottleneck"}),
])
def test_slim_model_equals_gated_model_on_real_digits(name, kwargs):
  rng = np.random.default_rng(0)
  gate_arg = {"channel_gates": True} if name == "resnet" else {"gates": True}
  gated = models.get_model(name, **gate_arg, **kwargs)
  ds = data.load_dataset("embedded_mnist")
  x = next(data.eval_batches(ds.eval, batch_size=64, mean=ds.mean,
                             std=ds.std))["image"]
  variables = numpy_init.init(gated, x[:1])
  if "batch_stats" in variables:  # non-trivial running statistics
    _, updates = gated.apply(variables, x, train=True, mutable=["batch_stats"])
    variables = {**variables, **updates}
  variables = _set_gates(variables, rng, zero_fraction=0.4)
  spec = models.structure(name, **kwargs)
  keep = spec_lib.keep_nonzero(variables["params"], spec)
  slim_vars = surgery.slim(variables, spec, keep)
  slim_model = models.get_model(
      name, **models.slimmed_kwargs(name, {**kwargs, **gate_arg}, keep))
  np.testing.assert_allclose(slim_model.apply(slim_vars, x),
                             gated.apply(variables, x), rtol=1e-4, atol=1e-4)
  assert all(np.sum(k) > 0 for k in keep.values())  # no layer vanishes
  assert sum(np.sum(k) for k in keep.values()) < sum(k.size for k in
                                                      keep.values())
  n_slim = models.count_params(slim_vars["params"])
  assert n_slim < models.count_params(variables["params"])


@pytest.mark.parametrize("first_gate", [2.0, -2.0])
def test_mlp_slicing_by_hand(first_gate):
  # fc1: 3 -> 4 units, gate (+-2, 0, 1, 0): keep units 0 and 2.
  params = {
      "fc1": {"kernel": np.arange(12.0).reshape(3, 4), "bias": np.arange(4.0)},
      "fc1_gate": {"gate": np.array([first_gate, 0.0, 1.0, 0.0])},
      "head": {"kernel": np.arange(8.0).reshape(4, 2), "bias": np.zeros(2)},
  }
  # Declared to fold into fc1 (a relu sits between fc1 and its gate).
  spec = [dataclasses.replace(u, fold=("fc1/kernel", "fc1/bias"))
          for u in models.structure("mlp", hidden=(4,))]
  keep = spec_lib.keep_nonzero(params, spec)
  out = surgery.slim({"params": params}, spec, keep)["params"]
  if first_gate > 0:
    # Non-negative gates after a relu go into fc1's columns and bias.
    np.testing.assert_array_equal(out["fc1"]["kernel"],
                                  [[2 * 0.0, 2.0], [2 * 4.0, 6.0],
                                   [2 * 8.0, 10.0]])
    np.testing.assert_array_equal(out["fc1"]["bias"], [2 * 0.0, 2.0])
    np.testing.assert_array_equal(out["head"]["kernel"],
                                  [[0.0, 1.0], [4.0, 5.0]])
  else:  # a negative gate does not commute with the relu: into the head
    np.testing.assert_array_equal(out["fc1"]["kernel"],
                                  [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]])
    np.testing.assert_array_equal(out["fc1"]["bias"], [0.0, 2.0])
    np.testing.assert_array_equal(out["head"]["kernel"],
                                  [[-2 * 0.0, -2 * 1.0], [1 * 4.0, 1 * 5.0]])
  assert "fc1_gate" not in out


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_resnet_blocks_and_channels_removed_equal_gated_model(block):
  rng = np.random.default_rng(1)
  kwargs = {"depth": 14 if block == "basic" else 20, "width": 4,
            "block": block, "block_gates": True, "channel_gates": True}
  gated = models.get_model("resnet", **kwargs)
  ds = data.load_dataset("embedded_mnist")
  x = next(data.eval_batches(ds.eval, batch_size=32, mean=ds.mean,
                             std=ds.std))["image"]
  variables = numpy_init.init(gated, x[:1])
  _, updates = gated.apply(variables, x, train=True, mutable=["batch_stats"])
  variables = _set_gates({**variables, **updates}, rng, zero_fraction=0.3)
  # Zero the gates of an identity block and of a projection block.
  params = variables["params"]
  block_gates = {"block1_0": 1.3, "block1_1": 0.0, "block2_0": 0.0,
                 "block2_1": 0.5, "block3_0": 0.9, "block3_1": 0.7}
  for b, g in block_gates.items():
    params[b]["block_gate"]["gate"] = jnp.asarray(g, jnp.float32)

  slim_vars, slim_kw = models.remove_blocks("resnet", variables, kwargs)
  assert slim_kw["block_plan"] == ("full", "none", "shortcut", "full", "full",
                                   "full")
  assert "block1_1" not in slim_vars["params"]
  assert set(slim_vars["params"]["block2_0"]) == {"shortcut_conv",
                                                  "shortcut_bn"}
  spec = models.structure("resnet", **slim_kw)
  keep = spec_lib.keep_nonzero(slim_vars["params"], spec)
  slim_vars = surgery.slim(slim_vars, spec, keep)
  slim_model = models.get_model(
      "resnet", **models.slimmed_kwargs("resnet", slim_kw, keep))
  np.testing.assert_allclose(slim_model.apply(slim_vars, x),
                             gated.apply(variables, x), rtol=1e-4, atol=1e-4)
  assert (models.count_params(slim_vars["params"]) <
          models.count_params(variables["params"]))


def test_lenet5_filters_and_neurons_removed_like_zeroed_ones():
  # Zeroing a unit's kernel slice and bias is what pruning it means; the slim
  # LeNet-5 (fewer filters in both convolutions and fewer fc1 neurons, the
  # conv2 -> fc1 coupling going through a flatten) must compute the same.
  rng = np.random.default_rng(1)
  model = models.get_model("lenet5")
  ds = data.load_dataset("embedded_mnist")
  x = next(data.eval_batches(ds.eval, batch_size=32, mean=ds.mean,
                             std=ds.std))["image"]
  params = numpy_init.init(model, x[:1])["params"]
  spec = models.structure("lenet5")
  keep = {u.name: rng.random(n) < 0.6 for u, n in
          zip(spec, (20, 50, 500))}
  zeroed = jax.tree.map(np.copy, params)
  for unit in spec:
    for path, axis in unit.producers:
      layer, leaf = path.split("/")
      idx = [slice(None)] * zeroed[layer][leaf].ndim
      idx[axis] = ~keep[unit.name]
      zeroed[layer][leaf][tuple(idx)] = 0.0
  slim_vars = surgery.slim({"params": params}, spec, keep)
  kwargs = models.slimmed_kwargs("lenet5", {}, keep)
  assert kwargs["features"] == tuple(int(k.sum()) for k in keep.values())
  small = models.get_model("lenet5", **kwargs)
  assert slim_vars["params"]["fc1"]["kernel"].shape == (
      16 * kwargs["features"][1], kwargs["features"][2])
  np.testing.assert_allclose(
      small.apply(slim_vars, x), model.apply({"params": zeroed}, x),
      rtol=1e-5, atol=1e-5)
