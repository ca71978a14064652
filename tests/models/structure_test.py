"""The units `sparsify.structure_of` finds in the built-in models, by hand.

Each model's removable neurons and channels are read from its computation;
the expected units here are written from the architectures (layer names,
widths, which layer reads which), not from the tracer's output.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import numpy_init
import pytest

import sparsify
from sparsify import models
from sparsify.core import paths


def _structure(model, image_shape):
  x = jnp.ones((2, *image_shape))
  variables = numpy_init.init(model, x[:1])
  return sparsify.structure_of(model.apply, variables, x, train=False)


def _units(structure):
  """``{name: (size, kind, {(path, axis, consumer)})}`` of a structure."""
  assert all(u.exact for u in structure)
  return {u.name: (u.size, u.kind, {(s.path, s.axis, s.consumer)
                                    for s in u.slots}) for u in structure}


def _one_index_each(structure, but=()):
  """Element ``j`` of every slot owns index ``j`` alone (a neuron/channel)."""
  for u in structure:
    for s in u.slots:
      if (u.name, s.path) not in but:
        np.testing.assert_array_equal(s.index, np.arange(u.size)[:, None],
                                      err_msg=f"{u.name} {s.path}")


# Slots by hand: what computes a layer's outputs, and what reads them.
def _dense(layer):
  return {(f"params/{layer}/kernel", 1, False),
          (f"params/{layer}/bias", 0, False)}


def _conv(layer, bias=False):
  out = {(f"params/{layer}/kernel", 3, False)}
  return out | {(f"params/{layer}/bias", 0, False)} if bias else out


def _bn(layer):
  return {(f"params/{layer}/scale", 0, False),
          (f"params/{layer}/bias", 0, False),
          (f"batch_stats/{layer}/mean", 0, False),
          (f"batch_stats/{layer}/var", 0, False)}


def _gate(module):
  return {(f"params/{module}/gate", 0, False)}


def _reads(layer, axis):
  return {(f"params/{layer}/kernel", axis, True)}


@pytest.mark.parametrize("gates", [False, True])
@pytest.mark.parametrize("name,kwargs,image,widths", [
    ("mlp", {"hidden": [5, 9, 7]}, (4, 4, 1), (5, 9, 7)),  # lists are fine
    ("lenet_300_100", {}, (28, 28, 1), (300, 100)),
])
def test_mlp_hidden_layers(name, kwargs, image, widths, gates):
  structure = _structure(models.get_model(name, gates=gates, **kwargs), image)
  layers = [f"fc{i + 1}" for i in range(len(widths))] + ["head"]
  expected = {}
  for i, n in enumerate(widths):
    slots = _dense(layers[i]) | _reads(layers[i + 1], 0)
    if gates:
      slots |= _gate(f"fc{i + 1}_gate")
    expected[layers[i]] = (n, "neuron", slots)
  assert _units(structure) == expected
  _one_index_each(structure)


@pytest.mark.parametrize("features", [(3, 4, 5), (20, 50, 500)])
def test_lenet5_conv2_is_read_by_fc1_through_the_flatten(features):
  kwargs = {} if features == (20, 50, 500) else {"features": features}
  structure = _structure(models.get_model("lenet5", **kwargs), (28, 28, 1))
  c1, c2, hidden = features
  assert _units(structure) == {
      "conv1": (c1, "channel", _conv("conv1", bias=True) | _reads("conv2", 2)),
      "conv2": (c2, "channel", _conv("conv2", bias=True) | _reads("fc1", 0)),
      "fc1": (hidden, "neuron", _dense("fc1") | _reads("head", 0)),
  }
  _one_index_each(structure, but=[("conv2", "params/fc1/kernel")])
  # 28 -> conv 5x5 -> 24 -> pool -> 12 -> conv 5x5 -> 8 -> pool -> 4: the
  # flatten of (4, 4, c2) in C order puts channel c at rows (h*4 + w)*c2 + c.
  side = ((28 - 4) // 2 - 4) // 2
  rows = np.arange(side * side * c2).reshape(side, side, c2)
  fc1_rows = next(s for s in structure["conv2"].slots
                  if s.path == "params/fc1/kernel")
  assert fc1_rows.index.shape == (c2, side * side)
  np.testing.assert_array_equal(fc1_rows.index,
                                [rows[:, :, c].ravel() for c in range(c2)])


@pytest.mark.parametrize("gates", [False, True])
def test_vgg_channels_with_their_batchnorm(gates):
  model = models.get_model("vgg", stages=((8, 8), (16,)), width=0.5,
                           gates=gates)
  structure = _structure(model, (8, 8, 1))
  blocks = ["block1_0", "block1_1", "block2_0"]
  reads = [_reads("block1_1/conv", 2), _reads("block2_0/conv", 2),
           _reads("head", 0)]
  expected = {}
  for b, n, r in zip(blocks, (4, 4, 8), reads):  # 8 * 0.5, 8 * 0.5, 16 * 0.5
    slots = _conv(f"{b}/conv") | _bn(f"{b}/bn") | r
    if gates:
      slots |= _gate(f"{b}/gate")
    expected[f"{b}/conv"] = (n, "channel", slots)
  assert _units(structure) == expected
  _one_index_each(structure)


def test_vgg11_channels_per_block():
  model = models.get_model("vgg", depth=11, width=0.125, gates=True)
  structure = _structure(model, (8, 8, 1))
  # VGG-11 (configuration A): 64 | 128 | 256 256 | 512 512 | 512 512, / 8.
  assert [(u.name, u.size) for u in structure] == [
      ("block1_0/conv", 8), ("block2_0/conv", 16), ("block3_0/conv", 32),
      ("block3_1/conv", 32), ("block4_0/conv", 64), ("block4_1/conv", 64),
      ("block5_0/conv", 64), ("block5_1/conv", 64)]


def _resnet_units(depth, width, block, channel_gates, plan=None):
  """The units of a CIFAR ResNet, written from its architecture.

  Inside each residual branch, every inner layer but the last is a unit
  (read by the next conv). The branch's last layer is added to the
  shortcut: the features of a residual stream are one unit from the layer
  that starts it (the stem, or a projection block's last conv and its
  shortcut conv) through every identity block added to it, read by every
  block on it and by the next projection or the head.
  """
  inner, expansion = (1, 1) if block == "basic" else (2, 4)
  n = (depth - 2) // (3 * (inner + 1))
  plan = plan or ("full",) * (3 * n)
  units = {}
  stream = {"name": "stem_conv", "size": width, "added": False,
            "slots": _conv("stem_conv") | _bn("stem_bn")}

  def close(stream):
    units[stream["name"]] = (stream["size"], "stream" if stream["added"]
                             else "channel", stream["slots"])

  for s in range(3):
    for i in range(n):
      b, f = f"block{s + 1}_{i}", width * 2**s
      kind = plan[s * n + i]
      if kind == "none":
        continue
      projection = (s > 0 and i == 0) or stream["size"] != f * expansion
      if kind == "full":
        stream["slots"] |= _reads(f"{b}/conv1", 2)
        for j in range(1, inner + 1):
          slots = _conv(f"{b}/conv{j}") | _bn(f"{b}/bn{j}") | _reads(
              f"{b}/conv{j + 1}", 2)
          if channel_gates:
            slots |= _gate(f"{b}/gate{j}")
          units[f"{b}/conv{j}"] = (f, "channel", slots)
        last = _conv(f"{b}/conv{inner + 1}") | _bn(f"{b}/bn{inner + 1}")
      if not projection:  # identity shortcut: added to the stream
        stream["slots"] |= last
        stream["added"] = True
        continue
      stream["slots"] |= _reads(f"{b}/shortcut_conv", 2)
      close(stream)
      shortcut = _conv(f"{b}/shortcut_conv") | _bn(f"{b}/shortcut_bn")
      if kind == "full":
        stream = {"name": f"{b}/conv{inner + 1}", "size": f * expansion,
                  "added": True, "slots": last | shortcut}
      else:  # only the projection is left
        stream = {"name": f"{b}/shortcut_conv", "size": f * expansion,
                  "added": False, "slots": shortcut}
  stream["slots"] |= _reads("head", 0)
  close(stream)
  return units


@pytest.mark.parametrize("kwargs", [
    {"depth": 8},
    {"depth": 14, "channel_gates": True, "block_gates": True},
    {"depth": 20},  # 3 basic blocks per stage
    {"depth": 11, "block": "bottleneck", "channel_gates": True},
    {"depth": 20, "block": "bottleneck", "block_gates": True},
    # As remove_blocks leaves it: branches gone, a projection kept.
    {"depth": 14, "channel_gates": True,
     "block_plan": ("full", "none", "shortcut", "full", "full", "none")},
])
def test_resnet_inner_channels_and_streams(kwargs):
  model = models.get_model("resnet", width=2, **kwargs)
  structure = _structure(model, (8, 8, 3))
  expected = _resnet_units(kwargs["depth"], 2, kwargs.get("block", "basic"),
                           kwargs.get("channel_gates", False),
                           kwargs.get("block_plan"))
  assert _units(structure) == expected
  _one_index_each(structure)
  # A block gate is one scalar per branch: no unit owns it.
  assert not any("block_gate" in s.path for u in structure for s in u.slots)


def _leaf_shapes(variables):
  return {f"{c}/{n}": tuple(np.shape(leaf)) for c, tree in variables.items()
          for n, leaf in paths.named_leaves(tree)}


def test_remove_blocks_by_hand():
  kwargs = {"depth": 14, "width": 4, "block_gates": True}
  model = models.get_model("resnet", **kwargs)
  variables = numpy_init.init(model, jnp.ones((1, 8, 8, 3)))
  params = variables["params"]
  gates = {"block1_0": 0.5, "block1_1": 0.0, "block2_0": -0.01,
           "block2_1": 2.0, "block3_0": -0.3, "block3_1": 0.01}
  for b, g in gates.items():
    params[b]["block_gate"]["gate"] = np.full_like(
        params[b]["block_gate"]["gate"], g)
  before = jax.tree.map(np.copy, variables)
  slim, fields = model.remove_blocks(variables, threshold=0.01)
  # |gate| <= 0.01 removes the branch; block1_1 and block3_1 have identity
  # shortcuts, block2_0 a projection (stride 2).
  assert fields == {"block_gates": False,
                    "block_plan": ("full", "none", "shortcut", "full", "full",
                                   "none")}
  for collection in ("params", "batch_stats"):
    assert "block1_1" not in slim[collection]
    assert "block3_1" not in slim[collection]
  assert sorted(slim["params"]["block2_0"]) == ["shortcut_bn",
                                                "shortcut_conv"]
  assert sorted(slim["batch_stats"]["block2_0"]) == ["shortcut_bn"]
  # A surviving gate (of either sign) is folded into the branch's last
  # BatchNorm (bn2).
  for b in ("block1_0", "block2_1", "block3_0"):
    assert "block_gate" not in slim["params"][b]
    for leaf in ("scale", "bias"):
      np.testing.assert_allclose(slim["params"][b]["bn2"][leaf],
                                 gates[b] * before["params"][b]["bn2"][leaf])
  # The input is left as it was.
  jax.tree.map(np.testing.assert_array_equal, variables, before)
  smaller = models.ResNet(**{**kwargs, **fields})
  shapes = jax.eval_shape(smaller.init, jax.random.key(0),
                          jnp.ones((1, 8, 8, 3)))
  assert _leaf_shapes(slim) == _leaf_shapes(shapes)


def test_remove_blocks_only_where_there_are_block_gates():
  variables = {"params": {}}
  assert models.ResNet(depth=8).remove_blocks(variables) is None
  assert models.ResNet(depth=8, channel_gates=True).remove_blocks(
      variables) is None
  # The slim stage removes blocks of a model that has the method; only
  # ResNet does.
  for name, kwargs in [("mlp", {"gates": True}), ("vgg", {"gates": True}),
                       ("lenet5", {}), ("lenet_300_100", {})]:
    assert not hasattr(models.get_model(name, **kwargs), "remove_blocks")


def test_unknown_model_or_argument():
  with pytest.raises(ValueError, match=re.escape(
      "model.name: unknown model 'alexnet'; allowed: lenet5, lenet_300_100, "
      "mlp, resnet, vgg, or module.path:Attribute for a model of your own")):
    models.get_model("alexnet")
  with pytest.raises(ValueError, match=re.escape(
      "model: unknown argument(s) 'hiden' for model 'mlp'; allowed: gates, "
      "hidden, num_classes")):
    models.get_model("mlp", hiden=(3,))
  with pytest.raises(ValueError, match=re.escape(
      "model: unknown argument(s) 'channel_gate', 'deep' for model 'resnet'")):
    models.get_model("resnet", deep=8, channel_gate=True)
  with pytest.raises(ValueError, match=re.escape(
      "hidden: got (3,); allowed: two widths")):
    models.get_model("lenet_300_100", hidden=[3])
  assert models.MODELS["vgg"] is models.vgg
