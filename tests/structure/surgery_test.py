"""Surgery on the built-in models: the slim model computes the masked one."""

import functools

import jax
import numpy as np
import numpy_init
import pytest

import sparsify
from sparsify import data
from sparsify import models
from sparsify.core import paths


@functools.cache
def _digits(n=32):
  ds = data.load_dataset("embedded_mnist")
  return next(data.eval_batches(ds.eval, batch_size=n, mean=ds.mean,
                                std=ds.std))["image"]


def _evaluate(apply_fn, variables, x):
  return jax.jit(functools.partial(apply_fn, train=False))(variables, x)


def _set_gates(variables, rng, zero_fraction):
  """Random per-unit gates of either sign, a fraction of them exactly zero."""
  def gate(name, x):
    if not name.endswith("/gate") or np.ndim(x) == 0:
      return x
    g = rng.uniform(0.2, 2.0, size=x.shape) * rng.choice([-1.0, 1.0],
                                                         size=x.shape)
    g[rng.random(x.shape) < zero_fraction] = 0.0
    return np.asarray(g, np.float32)
  return {**variables, "params": paths.map_with_name(gate, variables["params"])}


def _random_keep(structure, rng):
  """Keeps a random 30-70 % of the elements of every unit."""
  keep = {}
  for u in structure:
    k = np.zeros(u.size, bool)
    k[rng.choice(u.size, max(1, round(rng.uniform(0.3, 0.7) * u.size)),
                 replace=False)] = True
    keep[u.name] = k
  return keep


def _shapes(variables):
  return jax.tree.map(np.shape, variables)


def _resnet_widths(kwargs, kept):
  """``inner_widths`` of a ResNet: the kept channels of each inner layer."""
  model = models.ResNet(**kwargs)
  inner = 1 if model.block == "basic" else 2
  full = [model.width * 2**s for s in range(3)
          for _ in range(model.blocks_per_stage)]
  blocks = [f"block{s + 1}_{i}" for s in range(3)
            for i in range(model.blocks_per_stage)]
  return {"inner_widths": tuple(
      tuple(kept.get(f"{b}/conv{j}", f) for j in range(1, inner + 1))
      for b, f in zip(blocks, full))}


# Models, their gates, and the arguments that build them at the kept widths
# ``kept`` ({unit name: number kept}): the units those arguments can express.
CASES = [
    ("mlp", {"hidden": (16, 8)}, {"gates": True},
     lambda kw, k: {"hidden": (k["fc1"], k["fc2"])}),
    ("lenet_300_100", {}, {"gates": True},
     lambda kw, k: {"hidden": (k["fc1"], k["fc2"])}),
    ("lenet5", {"features": (6, 8, 16)}, None,
     lambda kw, k: {"features": (k["conv1"], k["conv2"], k["fc1"])}),
    ("vgg", {"stages": ((16, 16), (32,)), "width": 0.5}, {"gates": True},
     lambda kw, k: {"stages": ((k["block1_0/conv"], k["block1_1/conv"]),
                               (k["block2_0/conv"],)), "width": 1.0}),
    ("resnet", {"depth": 8, "width": 4}, {"channel_gates": True},
     _resnet_widths),
    ("resnet", {"depth": 11, "width": 2, "block": "bottleneck"},
     {"channel_gates": True}, _resnet_widths),
]


def _has_width_argument(unit):
  # A ResNet has widths for its inner layers, not for its streams or stem.
  return unit.kind != "stream" and unit.name != "stem_conv"


@pytest.mark.parametrize("name,kwargs,gate_arg,at_widths,gated", [
    (*case, gated) for case in CASES for gated in (False, True)
    if case[2] is not None or not gated])
def test_slim_model_equals_masked_model_on_real_digits(name, kwargs, gate_arg,
                                                       at_widths, gated):
  rng = np.random.default_rng(0)
  kwargs = {**kwargs, **(gate_arg if gated else {})}
  model = models.get_model(name, **kwargs)
  x = _digits()
  variables = numpy_init.init(model, x[:1])
  structure = sparsify.structure_of(model.apply, variables, x, train=False)
  if gated:  # SSS: the units whose gate is zero go
    variables = _set_gates(variables, rng, zero_fraction=0.4)
    keep = sparsify.keep_nonzero(variables, structure)
  else:
    keep = _random_keep(structure, rng)
  assert any(not k.all() for k in keep.values())
  slim_apply, small = sparsify.slim_model(model.apply, variables, keep, x,
                                          train=False)
  masked = sparsify.mask(variables, structure, keep)
  out = _evaluate(slim_apply, small, x)
  np.testing.assert_allclose(out, _evaluate(model.apply, masked, x),
                             rtol=1e-5, atol=1e-5)
  if gated:  # zero gates already remove what masking zeroes
    np.testing.assert_allclose(out, _evaluate(model.apply, variables, x),
                               rtol=1e-5, atol=1e-5)
  assert (models.count_params(small["params"]) <
          models.count_params(variables["params"]))
  # The same model built at the kept widths has the slim shapes (its gates
  # included: slim keeps them).
  widths = {n: k for n, k in keep.items()
            if _has_width_argument(structure[n])}
  kept = {n: int(k.sum()) for n, k in widths.items()}
  built = models.get_model(name, **{**kwargs, **at_widths(kwargs, kept)})
  expected = jax.eval_shape(built.init, jax.random.key(0), x[:1])
  assert _shapes(sparsify.slim(variables, structure, widths)) == _shapes(
      expected)
  if widths.keys() == keep.keys():
    assert _shapes(small) == _shapes(expected)


def test_mask_zeroes_the_producers_by_hand():
  # LeNet-5: conv1 -> conv2 -> (flatten) fc1; removing a filter or neuron
  # zeroes its kernel slice and bias, and nothing of the layer reading it.
  model = models.get_model("lenet5", features=(6, 8, 16))
  x = _digits()
  params = numpy_init.init(model, x[:1])["params"]
  structure = sparsify.structure_of(model.apply, {"params": params}, x)
  keep = _random_keep(structure, np.random.default_rng(1))
  zeroed = jax.tree.map(np.copy, params)
  for layer, axis in (("conv1", 3), ("conv2", 3), ("fc1", 1)):
    zeroed[layer]["kernel"][(slice(None),) * axis + (~keep[layer],)] = 0.0
    zeroed[layer]["bias"][~keep[layer]] = 0.0
  masked = sparsify.mask({"params": params}, structure, keep)
  jax.tree.map(np.testing.assert_array_equal, masked, {"params": zeroed})
  # Removed, fc1 reads 4 * 4 positions of each kept conv2 channel.
  small = sparsify.slim({"params": params}, structure, keep)["params"]
  n1, n2, n3 = (int(keep[n].sum()) for n in ("conv1", "conv2", "fc1"))
  assert small["conv2"]["kernel"].shape == (5, 5, n1, n2)
  assert small["fc1"]["kernel"].shape == (4 * 4 * n2, n3)
  assert small["head"]["kernel"].shape == (n3, 10)


@pytest.mark.parametrize("first_gate", [2.0, -2.0])
def test_gated_mlp_slicing_by_hand(first_gate):
  # fc1: 3 -> 4 units, gate (+-2, 0, 1, 0): keep units 0 and 2.
  params = {
      "fc1": {"kernel": np.arange(12.0).reshape(3, 4), "bias": np.arange(4.0)},
      "fc1_gate": {"gate": np.array([first_gate, 0.0, 1.0, 0.0])},
      "head": {"kernel": np.arange(8.0).reshape(4, 2), "bias": np.ones(2)},
  }
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  model = models.MLP(hidden=(4,), num_classes=2, gates=True)
  x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
  structure = sparsify.structure_of(model.apply, {"params": params}, x)
  keep = sparsify.keep_nonzero({"params": params}, structure)
  np.testing.assert_array_equal(keep["fc1"], [True, False, True, False])
  slim_apply, small = sparsify.slim_model(model.apply, {"params": params},
                                          keep, x)
  out = small["params"]
  # Sliced, not folded: the gate keeps its value (and its sign).
  np.testing.assert_array_equal(out["fc1"]["kernel"],
                                [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]])
  np.testing.assert_array_equal(out["fc1"]["bias"], [0.0, 2.0])
  np.testing.assert_array_equal(out["fc1_gate"]["gate"], [first_gate, 1.0])
  np.testing.assert_array_equal(out["head"]["kernel"], [[0.0, 1.0],
                                                        [4.0, 5.0]])
  np.testing.assert_array_equal(out["head"]["bias"], [1.0, 1.0])
  # numpy: relu(x K + b) * g, then the head, on the full parameters.
  hidden = np.maximum(x @ params["fc1"]["kernel"] + params["fc1"]["bias"], 0)
  expected = (hidden * params["fc1_gate"]["gate"]) @ params["head"][
      "kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(slim_apply(small, x), expected, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_resnet_blocks_then_channels_removed_equal_gated_model(block):
  rng = np.random.default_rng(1)
  kwargs = {"depth": 14 if block == "basic" else 20, "width": 4,
            "block": block, "block_gates": True, "channel_gates": True}
  gated = models.ResNet(**kwargs)
  x = _digits()
  variables = _set_gates(numpy_init.init(gated, x[:1]), rng,
                         zero_fraction=0.3)
  # Zero the gates of an identity block and of a projection block.
  block_gates = {"block1_0": 1.3, "block1_1": 0.0, "block2_0": 0.0,
                 "block2_1": 0.5, "block3_0": 0.9, "block3_1": -0.7}
  for b, g in block_gates.items():
    variables["params"][b]["block_gate"]["gate"] = np.float32(g)
  reference = _evaluate(gated.apply, variables, x)

  blocks, fields = gated.remove_blocks(variables)
  assert fields == {"block_gates": False, "block_plan": (
      "full", "none", "shortcut", "full", "full", "full")}
  assert "block1_1" not in blocks["params"]
  assert set(blocks["params"]["block2_0"]) == {"shortcut_conv",
                                               "shortcut_bn"}
  # Surviving gates folded into the last BatchNorm of their branch.
  last = "bn2" if block == "basic" else "bn3"
  for b in ("block1_0", "block2_1", "block3_0", "block3_1"):
    for leaf in ("scale", "bias"):
      np.testing.assert_allclose(
          blocks["params"][b][last][leaf],
          block_gates[b] * variables["params"][b][last][leaf], rtol=1e-6)
  fewer = models.ResNet(**{**kwargs, **fields})
  np.testing.assert_allclose(_evaluate(fewer.apply, blocks, x), reference,
                             rtol=1e-5, atol=1e-5)

  # Then the channels whose gate is zero, in the blocks that are left.
  structure = sparsify.structure_of(fewer.apply, blocks, x, train=False)
  keep = sparsify.keep_nonzero(blocks, structure)
  inner = ("conv1",) if block == "basic" else ("conv1", "conv2")
  assert sorted(keep) == sorted(
      f"{b}/{c}" for b in ("block1_0", "block2_1", "block3_0", "block3_1")
      for c in inner)
  assert any(not k.all() for k in keep.values())
  slim_apply, small = sparsify.slim_model(fewer.apply, blocks, keep, x,
                                          train=False)
  out = _evaluate(slim_apply, small, x)
  masked = sparsify.mask(blocks, structure, keep)
  np.testing.assert_allclose(out, _evaluate(fewer.apply, masked, x),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)
  # The slim variables are those of the ResNet at the kept inner widths.
  kept = {n: int(k.sum()) for n, k in keep.items()}
  smallest = models.ResNet(**{**kwargs, **fields,
                              **_resnet_widths(kwargs, kept)})
  assert _shapes(small) == _shapes(
      jax.eval_shape(smallest.init, jax.random.key(0), x[:1]))
