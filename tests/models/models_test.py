"""Tests for sparsify.models: shapes, parameter counts, names, BatchNorm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import numpy_init
import pytest

from sparsify import models
from sparsify.core import paths
from sparsify.models import layers

# Small instances of every registered model: (name, kwargs).
SMALL = [
    ("lenet_300_100", {}),
    ("lenet5", {}),
    ("mlp", {"hidden": (16, 8)}),
    ("vgg", {"stages": ((4, 4), (8,)), "width": 1.0}),
    ("vgg", {"depth": 11, "width": 1 / 32}),
    ("resnet", {"depth": 8, "width": 4}),
    ("resnet", {"depth": 11, "block": "bottleneck", "width": 2}),
]
SMALL_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"
             for n, kw in SMALL]
BATCH_NORM = [SMALL[3], SMALL[5], SMALL[6]]  # VGG, ResNet basic, bottleneck.
INPUTS = [(28, 28, 1), (32, 32, 3)]


def _shapes(model, input_shape):
  """Returns the variables' shapes without running the model."""
  x = jnp.zeros((1, *input_shape), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)


def _images(n, input_shape, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, *input_shape))


# Tiny models compile faster op by op than under jit on CPU, so the numeric
# tests below run eagerly; shape tests use `jax.eval_shape` (no compilation).


def _init(model, x):
  return model.init(jax.random.key(0), x)


def _apply(model, variables, x):
  """Evaluation-mode logits."""
  return model.apply(variables, x)


def _train_apply(model, variables, x):
  """Training-mode logits and the updated ``batch_stats``."""
  return model.apply(variables, x, train=True, mutable=["batch_stats"])


# -- Independent parameter counts --------------------------------------------


def vgg_count(stages, in_channels, num_classes):
  """Parameters of VGG: 3x3 kernels without bias, BN scale + bias, head."""
  total, c_in = 0, in_channels
  for stage in stages:
    for c in stage:
      total += 3 * 3 * c_in * c + 2 * c
      c_in = c
  return total + c_in * num_classes + num_classes


def resnet_count(depth, block, width, in_channels, num_classes):
  """Parameters of the CIFAR ResNet, with projection shortcuts (no bias)."""
  bn = lambda c: 2 * c  # BatchNorm scale and bias.
  total = 3 * 3 * in_channels * width + bn(width)
  c_in = width
  if block == "basic":
    n = (depth - 2) // 6
  else:
    n = (depth - 2) // 9
  for s in range(3):
    inner = width * 2**s
    for i in range(n):
      stride = 2 if s > 0 and i == 0 else 1
      if block == "basic":
        out = inner
        total += 9 * c_in * inner + bn(inner) + 9 * inner * out + bn(out)
      else:
        out = 4 * inner
        total += (c_in * inner + bn(inner) + 9 * inner * inner + bn(inner)
                  + inner * out + bn(out))
      if stride != 1 or c_in != out:
        total += c_in * out + bn(out)
      c_in = out
  return total + c_in * num_classes + num_classes


def test_lenet_300_100_count():
  expected = (784 * 300 + 300) + (300 * 100 + 100) + (100 * 10 + 10)
  assert expected == 266_610
  variables = _shapes(models.get_model("lenet_300_100"), (28, 28, 1))
  assert models.count_params(variables["params"]) == expected


def test_lenet5_count():
  # 28 -conv5-> 24 -pool-> 12 -conv5-> 8 -pool-> 4; 4*4*50 = 800 features.
  expected = ((5 * 5 * 1 * 20 + 20) + (5 * 5 * 20 * 50 + 50)
              + (4 * 4 * 50 * 500 + 500) + (500 * 10 + 10))
  assert expected == 431_080
  variables = _shapes(models.get_model("lenet5"), (28, 28, 1))
  assert models.count_params(variables["params"]) == expected


def test_resnet20_count():
  # Stem 3x3x3x16 + BN; stage 1: 3 blocks of two 16->16 convs + 2 BNs.
  stem = 3 * 3 * 3 * 16 + 2 * 16
  stage1 = 3 * 2 * (3 * 3 * 16 * 16 + 2 * 16)
  # Stage 2: first block 16->32 conv, 32->32 conv, 1x1 16->32 projection.
  stage2 = ((9 * 16 * 32 + 64) + (9 * 32 * 32 + 64) + (16 * 32 + 64)
            + 2 * 2 * (9 * 32 * 32 + 64))
  stage3 = ((9 * 32 * 64 + 128) + (9 * 64 * 64 + 128) + (32 * 64 + 128)
            + 2 * 2 * (9 * 64 * 64 + 128))
  expected = stem + stage1 + stage2 + stage3 + (64 * 10 + 10)
  assert expected == 272_474
  assert resnet_count(20, "basic", 16, 3, 10) == expected
  variables = _shapes(models.get_model("resnet", depth=20), (32, 32, 3))
  assert models.count_params(variables["params"]) == expected


@pytest.mark.parametrize("depth,block,width,in_channels", [
    (20, "basic", 4, 1), (32, "basic", 8, 3), (110, "basic", 2, 3),
    (29, "bottleneck", 4, 3), (56, "bottleneck", 2, 1)])
def test_resnet_count(depth, block, width, in_channels):
  model = models.get_model("resnet", depth=depth, block=block, width=width,
                           num_classes=7)
  variables = _shapes(model, (28, 28, in_channels))
  expected = resnet_count(depth, block, width, in_channels, 7)
  assert models.count_params(variables["params"]) == expected


def test_vgg_default_count():
  expected = ((3 * 3 * 3 * 64 + 128) + (3 * 3 * 64 * 64 + 128)
              + (3 * 3 * 64 * 128 + 256) + (3 * 3 * 128 * 128 + 256)
              + (3 * 3 * 128 * 256 + 512) + 2 * (3 * 3 * 256 * 256 + 512)
              + (256 * 10 + 10))
  assert expected == vgg_count(((64, 64), (128, 128), (256, 256, 256)), 3, 10)
  variables = _shapes(models.get_model("vgg"), (32, 32, 3))
  assert models.count_params(variables["params"]) == expected


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
def test_vgg_depth_count(depth):
  convs = {11: [1, 1, 2, 2, 2], 13: [2, 2, 2, 2, 2], 16: [2, 2, 3, 3, 3],
           19: [2, 2, 4, 4, 4]}[depth]
  assert sum(convs) + 3 == depth  # The paper's depth counts 3 FC layers.
  stages = [[c] * k for c, k in zip([64, 128, 256, 512, 512], convs)]
  assert models.vgg_stages(depth) == tuple(tuple(s) for s in stages)
  width = 0.25
  small = [[round(c * width) for c in s] for s in stages]
  model = models.get_model("vgg", depth=depth, width=width, num_classes=100)
  variables = _shapes(model, (32, 32, 3))
  assert models.count_params(variables["params"]) == vgg_count(small, 3, 100)


def test_vgg_width_rounding():
  model = models.get_model("vgg", stages=[[64], [3]], width=0.3)
  params = _shapes(model, (8, 8, 1))["params"]
  assert params["block1_0"]["conv"]["kernel"].shape == (3, 3, 1, 19)
  assert params["block2_0"]["conv"]["kernel"].shape == (3, 3, 19, 1)


# -- Shapes and names ---------------------------------------------------------


@pytest.mark.parametrize("input_shape", INPUTS, ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("name,kwargs", SMALL, ids=SMALL_IDS)
def test_output_shape(name, kwargs, input_shape):
  model = models.get_model(name, num_classes=5, **kwargs)
  variables = _shapes(model, input_shape)
  x = jax.ShapeDtypeStruct((3, *input_shape), jnp.float32)
  logits = jax.eval_shape(model.apply, variables, x)
  assert logits.shape == (3, 5)
  assert logits.dtype == jnp.float32
  logits, _ = jax.eval_shape(
      lambda v, x: _train_apply(model, v, x), variables, x)
  assert logits.shape == (3, 5)


@pytest.mark.parametrize("name", ["lenet_300_100", "lenet5", "mlp"])
def test_dense_models_run(name):
  model = models.get_model(name)
  x = _images(2, (28, 28, 1))
  variables = _init(model, x)
  logits = _apply(model, variables, x)
  assert logits.shape == (2, 10)
  assert np.all(np.isfinite(logits))
  # No BatchNorm or dropout: train and eval modes agree.
  np.testing.assert_array_equal(model.apply(variables, x, train=True), logits)


@pytest.mark.parametrize("name,kwargs", SMALL, ids=SMALL_IDS)
def test_parameter_names(name, kwargs):
  params = _shapes(models.get_model(name, **kwargs), (28, 28, 1))["params"]
  named = paths.named_leaves(params)
  for path, leaf in named:
    last = path.split("/")[-1]
    assert last in ("kernel", "bias", "scale"), path
    assert (leaf.ndim >= 2) == (last == "kernel"), path
  # The default prunable selection is exactly the Dense and Conv kernels.
  selected = paths.named_leaves(paths.select(params))
  assert [p for p, s in selected if s] == [
      p for p, leaf in named if leaf.ndim >= 2]
  assert "head/kernel" in dict(named)


def test_resnet20_blocks_and_shortcuts():
  model = models.get_model("resnet", depth=20)
  params = _shapes(model, (32, 32, 3))["params"]
  blocks = sorted(k for k in params if k.startswith("block"))
  assert blocks == [f"block{s}_{i}" for s in (1, 2, 3) for i in range(3)]
  projected = sorted(k for k in blocks if "shortcut_conv" in params[k])
  assert projected == ["block2_0", "block3_0"]
  assert params["block2_0"]["shortcut_conv"]["kernel"].shape == (1, 1, 16, 32)
  assert "shortcut_bn" in params["block3_0"]
  for k in blocks:
    assert set(params[k]) - {"shortcut_conv", "shortcut_bn"} == {
        "conv1", "bn1", "conv2", "bn2"}


def test_resnet_bottleneck_shortcuts():
  model = models.get_model("resnet", depth=29, block="bottleneck", width=4)
  params = _shapes(model, (32, 32, 3))["params"]
  blocks = sorted(k for k in params if k.startswith("block"))
  assert len(blocks) == 9
  # The stem has 4 channels and block1_0 outputs 16: projection there too.
  projected = sorted(k for k in blocks if "shortcut_conv" in params[k])
  assert projected == ["block1_0", "block2_0", "block3_0"]
  assert params["block1_0"]["conv3"]["kernel"].shape == (1, 1, 4, 16)
  assert params["head"]["kernel"].shape == (64, 10)


def test_vgg_deep_on_small_input():
  # Five poolings on 28x28: 14, 7, 3, 1, then the last stage is not pooled.
  model = models.get_model("vgg", stages=[[2]] * 6, num_classes=3)
  x = _images(2, (28, 28, 1))
  variables = numpy_init.init(model, x)
  logits = _apply(model, variables, x)
  assert logits.shape == (2, 3)
  assert np.all(np.isfinite(logits))


# -- BatchNorm ----------------------------------------------------------------


@pytest.mark.parametrize("name,kwargs", BATCH_NORM,
                         ids=[SMALL_IDS[i] for i in (3, 5, 6)])
def test_batch_norm_modes(name, kwargs):
  model = models.get_model(name, **kwargs)
  x = _images(4, (8, 8, 3))
  variables = numpy_init.init(model, x)
  assert "batch_stats" in variables
  # Training: batch statistics are used and the running averages move.
  _, updates = _train_apply(model, variables, x)
  old = jax.tree.leaves(variables["batch_stats"])
  new = jax.tree.leaves(updates["batch_stats"])
  assert len(old) == len(new)
  assert all(not np.allclose(a, b) for a, b in zip(old, new))
  # Evaluation: deterministic, and each example independent of the batch.
  variables = {**variables, **updates}
  y1 = _apply(model, variables, x)
  y2 = _apply(model, variables, x)
  np.testing.assert_array_equal(y1, y2)
  np.testing.assert_allclose(_apply(model, variables, x[:1]), y1[:1],
                             rtol=1e-5, atol=1e-5)


def test_batch_norm_running_average():
  model = models.get_model("resnet", depth=8, width=4)
  x = _images(4, (8, 8, 3))
  variables = numpy_init.init(model, x)  # running statistics not 0 and 1
  _, updates = _train_apply(model, variables, x)
  kernel = variables["params"]["stem_conv"]["kernel"]
  h = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  mean = np.mean(np.asarray(h, np.float64), axis=(0, 1, 2))
  var = np.var(np.asarray(h, np.float64), axis=(0, 1, 2))
  stats = updates["batch_stats"]["stem_bn"]
  before = variables["batch_stats"]["stem_bn"]
  # Momentum 0.9: 90 % of the running value, 10 % of the batch's.
  np.testing.assert_allclose(stats["mean"], 0.9 * before["mean"] + 0.1 * mean,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 * before["var"] + 0.1 * var,
                             rtol=1e-4)


def test_no_batch_stats_for_dense_models():
  for name in ("lenet5", "lenet_300_100", "mlp"):
    variables = _shapes(models.get_model(name), (28, 28, 1))
    assert set(variables) == {"params"}


# -- Registry -----------------------------------------------------------------


def test_registry_names():
  assert sorted(models.MODELS) == [
      "lenet5", "lenet_300_100", "mlp", "resnet", "vgg"]


def test_unknown_model():
  with pytest.raises(ValueError) as e:
    models.get_model("foo")
  assert str(e.value) == (
      "model.name: unknown model 'foo'; allowed: "
      "lenet5, lenet_300_100, mlp, resnet, vgg, or module.path:Attribute "
      "for a model of your own")


def test_unknown_argument():
  with pytest.raises(ValueError, match=(
      r"'depht'.*allowed: block, block_gates, block_plan, channel_gates, "
      r"depth, inner_widths, num_classes, width")):
    models.get_model("resnet", depht=20)
  with pytest.raises(ValueError, match=r"allowed: features, num_classes$"):
    models.get_model("lenet5", hidden=[10])


@pytest.mark.parametrize("kwargs,pattern", [
    ({"depth": 21}, r"6n\+2.*20, 32, 44, 56, 110.*got 21"),
    ({"depth": 2}, r"6n\+2"),
    ({"depth": 21, "block": "bottleneck"}, r"9n\+2.*164.*got 21"),
    ({"block": "wide"}, r"basic, bottleneck.*'wide'"),
])
def test_resnet_invalid(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    models.get_model("resnet", **kwargs)


def test_vgg_invalid():
  with pytest.raises(ValueError, match=r"11, 13, 16, 19; got 12"):
    models.get_model("vgg", depth=12)
  with pytest.raises(ValueError, match="either depth or stages"):
    models.get_model("vgg", depth=11, stages=[[8]])
  with pytest.raises(ValueError, match="width"):
    models.get_model("vgg", width=0.0)


def test_config_lists_become_tuples():
  config = ml_collections.ConfigDict(
      {"name": "vgg", "stages": [[4, 4], [8]], "width": 0.5})
  kwargs = config.to_dict()
  model = models.get_model(kwargs.pop("name"), num_classes=3, **kwargs)
  assert model.stages == ((4, 4), (8,))
  hash(model.stages)
  mlp = models.get_model("mlp", hidden=[7, 5])
  assert mlp.hidden == (7, 5)
  params = _shapes(mlp, (4, 4, 1))["params"]
  assert params["fc2"]["kernel"].shape == (7, 5)


def test_count_params():
  tree = {"a": jnp.ones((3, 2)), "b": [jnp.ones(4), jax.ShapeDtypeStruct(
      (2, 5), jnp.float32)], "c": jnp.float32(1.0)}
  assert models.count_params(tree) == 6 + 4 + 10 + 1


def test_public_names_have_docstrings():
  for name in models.__all__:
    obj = getattr(models, name)
    if name != "MODELS":
      assert obj.__doc__, name


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 5, 1), (1, 1, 4, 2),
                                   (1, 3, 1, 2)])
def test_max_pool_2x2_matches_flax_max_pool(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  window = tuple(2 if s > 1 else 1 for s in shape[1:3])
  expected = nn.max_pool(x, window, strides=window, padding="VALID")
  np.testing.assert_array_equal(layers.max_pool_2x2(x), expected)
