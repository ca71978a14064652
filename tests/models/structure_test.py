"""What the models declare for surgery: units, slim arguments, blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_init
import pytest

import sparsify
from sparsify import models
from sparsify.core import paths
from sparsify.structure import surgery


def _shapes(model, image_shape):
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.ones((1, *image_shape)))
  return {f"{c}/{n}": tuple(leaf.shape) for c, tree in variables.items()
          for n, leaf in paths.named_leaves(tree)}


def _variables(model, image_shape, seed=0):
  return numpy_init.init(model, jnp.ones((1, *image_shape)), seed=seed)


def _leaf_shapes(variables):
  return {f"{c}/{n}": tuple(np.shape(leaf)) for c, tree in variables.items()
          for n, leaf in paths.named_leaves(tree)}


# Gated models, the image shape they take, and their units by hand: name,
# number of units.
GATED = [
    ("mlp", {"hidden": (5, 9, 7), "gates": True}, (4, 4, 1),
     [("fc1", 5), ("fc2", 9), ("fc3", 7)]),
    ("lenet_300_100", {"gates": True}, (28, 28, 1),
     [("fc1", 300), ("fc2", 100)]),
    ("lenet5", {}, (28, 28, 1), [("conv1", 20), ("conv2", 50), ("fc1", 500)]),
    ("vgg", {"stages": ((8, 8), (16,)), "width": 0.5, "gates": True},
     (8, 8, 1), [("block1_0", 4), ("block1_1", 4), ("block2_0", 8)]),
    ("vgg", {"depth": 11, "width": 0.125, "gates": True}, (8, 8, 1),
     [("block1_0", 8), ("block2_0", 16), ("block3_0", 32), ("block3_1", 32),
      ("block4_0", 64), ("block4_1", 64), ("block5_0", 64),
      ("block5_1", 64)]),
    ("resnet", {"depth": 8, "width": 4, "channel_gates": True}, (8, 8, 3),
     [("block1_0/gate1", 4), ("block2_0/gate1", 8), ("block3_0/gate1", 16)]),
    ("resnet", {"depth": 11, "width": 2, "block": "bottleneck",
                "channel_gates": True}, (8, 8, 3),
     [("block1_0/gate1", 2), ("block1_0/gate2", 2), ("block2_0/gate1", 4),
      ("block2_0/gate2", 4), ("block3_0/gate1", 8), ("block3_0/gate2", 8)]),
]


@pytest.mark.parametrize("name,kwargs,image,expected", GATED)
def test_units_are_the_slices_of_the_built_model(name, kwargs, image,
                                                 expected):
  spec = models.structure(name, **kwargs)
  assert [u.name for u in spec] == [n for n, _ in expected]
  shapes = _shapes(models.get_model(name, **kwargs), image)
  for unit, (_, n) in zip(spec, expected):
    if unit.gate is not None:
      assert shapes[f"params/{unit.gate}"] == (n,)
    for path, axis in unit.producers:
      found = [s for key, s in shapes.items() if key.split("/", 1)[1] == path]
      assert found and all(s[axis] == n for s in found), (unit.name, path)
    for path in unit.fold:
      assert path in dict(unit.producers)
    for path, axis in unit.consumers:
      # A flattened input (LeNet-5's conv2 -> fc1) is a multiple of n.
      assert shapes[f"params/{path}"][axis] % n == 0, (unit.name, path)
  assert sparsify.spec_for(name, **kwargs) == spec  # the flat API's name


def test_structure_of_the_models_by_hand():
  assert models.structure("lenet_300_100") == models.structure("mlp")
  fc1 = models.structure("mlp", hidden=[3])[0]  # config lists are fine
  assert fc1 == units.SpecUnit(name="fc1", gate="fc1_gate/gate",
                              producers=(("fc1/kernel", 1), ("fc1/bias", 0)),
                              consumers=(("head/kernel", 0),))
  conv2 = models.structure("lenet5")[1]
  assert conv2.gate is None and conv2.consumers == (("fc1/kernel", 0),)
  last = models.structure("vgg", stages=((8,), (16, 16)))[-1]
  assert last.consumers == (("head/kernel", 0),)
  assert last.producers == (
      ("block2_1/conv/kernel", 3), ("block2_1/bn/scale", 0),
      ("block2_1/bn/bias", 0), ("block2_1/bn/mean", 0),
      ("block2_1/bn/var", 0))
  assert last.fold == ("block2_1/bn/scale", "block2_1/bn/bias")
  # CIFAR ResNets: (depth - 2) / 6 basic blocks of one inner layer each, or
  # (depth - 2) / 9 bottleneck blocks of two, in each of 3 stages.
  assert len(models.structure("resnet", depth=20)) == 3 * 3 * 1
  assert len(models.structure("resnet", depth=56)) == 3 * 9 * 1
  assert len(models.structure("resnet", depth=29, block="bottleneck")) == (
      3 * 3 * 2)
  # Blocks whose branch was removed have no units.
  kept = models.structure("resnet", depth=14,
                          block_plan=("full", "none", "shortcut", "full",
                                      "full", "none"))
  assert [u.name for u in kept] == ["block1_0/gate1", "block2_1/gate1",
                                    "block3_0/gate1"]


def test_unknown_model_or_argument():
  with pytest.raises(ValueError, match=(
      "unknown model 'alexnet'; allowed: lenet5, lenet_300_100, mlp, resnet, "
      "vgg")):
    models.structure("alexnet")
  with pytest.raises(ValueError, match="unknown model 'alexnet'"):
    sparsify.spec_for("alexnet")
  with pytest.raises(ValueError, match="unknown model 'alexnet'"):
    models.slimmed_kwargs("alexnet", {}, {})
  with pytest.raises(ValueError, match="unknown model 'alexnet'"):
    models.remove_blocks("alexnet", {}, {})
  with pytest.raises(ValueError, match="'hiden'.*for model 'mlp'"):
    models.structure("mlp", hiden=(3,))


def test_registry_entries():
  for name, entry in models.MODELS.items():
    assert isinstance(entry, models.ModelEntry), name
    assert (entry.remove_blocks is None) == (name != "resnet"), name
  assert models.MODELS["vgg"].factory is models.vgg


def _random_keep(spec_sizes, kept, seed=0):
  """``{name: mask}`` keeping ``kept[name]`` random units out of ``size``."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, size in spec_sizes:
    if name in kept:
      mask = np.zeros(size, bool)
      mask[rng.choice(size, kept[name], replace=False)] = True
      out[name] = mask
  return out


def test_slimmed_vgg_builds_the_shapes_slim_leaves():
  kwargs = {"stages": ((8, 8), (16,)), "width": 0.5, "gates": True}
  gated = models.get_model("vgg", **kwargs)
  variables = _variables(gated, (8, 8, 1))
  spec = models.structure("vgg", **kwargs)
  keep = _random_keep([("block1_0", 4), ("block1_1", 4), ("block2_0", 8)],
                      {"block1_0": 3, "block1_1": 2, "block2_0": 5})
  slim_kwargs = models.slimmed_kwargs("vgg", kwargs, keep)
  assert slim_kwargs == {"stages": ((3, 2), (5,)), "width": 1.0}
  slim = surgery.slim(variables, spec, keep)
  assert _leaf_shapes(slim) == _shapes(models.get_model("vgg", **slim_kwargs),
                                       (8, 8, 1))
  # By hand: 3x3 convs of 1 -> 3 -> 2 -> 5 channels, a head of 5 -> 10.
  shapes = _leaf_shapes(slim)
  assert shapes["params/block1_0/conv/kernel"] == (3, 3, 1, 3)
  assert shapes["params/block1_1/conv/kernel"] == (3, 3, 3, 2)
  assert shapes["params/block2_0/conv/kernel"] == (3, 3, 2, 5)
  assert shapes["batch_stats/block2_0/bn/var"] == (5,)
  assert shapes["params/head/kernel"] == (5, 10)
  assert not any("gate" in k for k in shapes)


def test_slimmed_kwargs_by_hand():
  # Standard VGG-11 at width 1/8: depth goes, the stages are the channels.
  keep = {"block3_1": np.array([True] * 20 + [False] * 12)}
  assert models.slimmed_kwargs(
      "vgg", {"depth": 11, "width": 0.125, "gates": True}, keep) == {
          "stages": ((8,), (16,), (32, 20), (64, 64), (64, 64)),
          "width": 1.0}
  assert models.slimmed_kwargs("mlp", {"hidden": [5, 9], "gates": True}, {
      "fc2": np.arange(9) < 4}) == {"hidden": (5, 4)}
  assert models.slimmed_kwargs("lenet_300_100", {"gates": True}, {
      "fc1": np.arange(300) < 7, "fc2": np.arange(100) < 60}) == {
          "hidden": (7, 60)}
  assert models.slimmed_kwargs("lenet5", {"num_classes": 3}, {
      "conv2": np.arange(50) < 10}) == {"num_classes": 3,
                                         "features": (20, 10, 500)}
  # ResNet-14, width 4: inner widths 4, 4 | 8, 8 | 16, 16; every gate
  # switch goes.
  out = models.slimmed_kwargs(
      "resnet", {"depth": 14, "width": 4, "block_gates": False,
                 "channel_gates": True, "block_plan": ("full",) * 6},
      {"block1_1/gate1": np.arange(4) < 1, "block3_0/gate1": np.arange(16) < 9})
  assert out == {"depth": 14, "width": 4, "block_plan": ("full",) * 6,
                 "inner_widths": ((4,), (1,), (8,), (8,), (9,), (16,))}
  # A slimmed ResNet slimmed again keeps the widths it already had.
  again = models.slimmed_kwargs(
      "resnet", {"depth": 11, "block": "bottleneck",
                 "inner_widths": ((3, 5), (7, 9), (11, 13))},
      {"block2_0/gate2": np.arange(9) < 2})
  assert again["inner_widths"] == ((3, 5), (7, 2), (11, 13))


def test_slimmed_resnet_builds_the_shapes_slim_leaves():
  kwargs = {"depth": 11, "width": 2, "block": "bottleneck",
            "channel_gates": True}
  variables = _variables(models.get_model("resnet", **kwargs), (8, 8, 3))
  spec = models.structure("resnet", **kwargs)
  sizes = [(u.name, n) for u, n in zip(spec, (2, 2, 4, 4, 8, 8))]
  keep = _random_keep(sizes, {"block1_0/gate1": 1, "block1_0/gate2": 2,
                              "block2_0/gate1": 3, "block2_0/gate2": 1,
                              "block3_0/gate1": 5, "block3_0/gate2": 8})
  slim_kwargs = models.slimmed_kwargs("resnet", kwargs, keep)
  assert slim_kwargs["inner_widths"] == ((1, 2), (3, 1), (5, 8))
  assert "channel_gates" not in slim_kwargs
  slim = surgery.slim(variables, spec, keep)
  shapes = _leaf_shapes(slim)
  assert shapes == _shapes(models.get_model("resnet", **slim_kwargs),
                           (8, 8, 3))
  # By hand: block2_0 reads 8 channels (2 * 4 of stage 1), then 3, then 1.
  assert shapes["params/block2_0/conv1/kernel"] == (1, 1, 8, 3)
  assert shapes["params/block2_0/conv2/kernel"] == (3, 3, 3, 1)
  assert shapes["params/block2_0/conv3/kernel"] == (1, 1, 1, 16)


def test_remove_blocks_by_hand():
  kwargs = {"depth": 14, "width": 4, "block_gates": True}
  model = models.get_model("resnet", **kwargs)
  variables = _variables(model, (8, 8, 3))
  params = variables["params"]
  gates = {"block1_0": 0.5, "block1_1": 0.0, "block2_0": -0.01,
           "block2_1": 2.0, "block3_0": 0.3, "block3_1": 0.01}
  for b, g in gates.items():
    params[b]["block_gate"]["gate"] = np.full_like(
        params[b]["block_gate"]["gate"], g)
  before = jax.tree.map(np.copy, variables)
  slim, slim_kwargs = models.remove_blocks("resnet", variables, kwargs,
                                           threshold=0.01)
  # |gate| <= 0.01 removes the branch; block1_1 and block3_1 have identity
  # shortcuts, block2_0 a projection (stride 2).
  assert slim_kwargs == {**kwargs, "block_gates": False,
                         "block_plan": ("full", "none", "shortcut", "full",
                                        "full", "none")}
  assert "block1_1" not in slim["params"] and "block3_1" not in slim[
      "params"]
  assert "block1_1" not in slim["batch_stats"]
  assert sorted(slim["params"]["block2_0"]) == ["shortcut_bn",
                                                "shortcut_conv"]
  assert sorted(slim["batch_stats"]["block2_0"]) == ["shortcut_bn"]
  # A surviving gate is folded into the branch's last BatchNorm (bn2).
  for b in ("block1_0", "block2_1", "block3_0"):
    assert "block_gate" not in slim["params"][b]
    for leaf in ("scale", "bias"):
      np.testing.assert_allclose(slim["params"][b]["bn2"][leaf],
                                 gates[b] * before["params"][b]["bn2"][leaf])
  np.testing.assert_array_equal(variables["params"]["block1_0"]["bn2"]["scale"],
                                before["params"]["block1_0"]["bn2"]["scale"])
  assert _leaf_shapes(slim) == _shapes(
      models.get_model("resnet", **slim_kwargs), (8, 8, 3))


def test_remove_blocks_only_where_there_are_block_gates():
  variables = {"params": {}}
  assert models.remove_blocks("resnet", variables, {"depth": 8}) is None
  assert models.remove_blocks("resnet", variables, {
      "depth": 8, "channel_gates": True, "block_gates": False}) is None
  for name, kwargs in [("mlp", {"gates": True}), ("vgg", {"gates": True}),
                       ("lenet5", {}), ("lenet_300_100", {})]:
    assert models.remove_blocks(name, variables, kwargs) is None, name
