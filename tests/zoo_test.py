"""The zoo's models build, run, hold the variables they should, narrow."""

import functools

from flax import linen as nn
from flax import nnx
import jax
import numpy as np
import pytest
import zoo

from sparsify.core import paths

LINEN = [name for name, c in zoo.CASES.items() if c.kind == "linen"]
NNX = [name for name, c in zoo.CASES.items() if c.kind == "nnx"]


def shapes(c, **widths):
  """``{path: shape}`` of a case's variables, collections first for Linen."""
  if c.kind == "nnx":
    tree = nnx.state(c.build(**widths))
  else:
    module = c.build(**widths)
    tree = jax.eval_shape(functools.partial(module.init, **c.apply_kwargs),
                          jax.random.key(0), c.example())
  return {name: tuple(leaf.shape) for name, leaf in paths.named_leaves(tree)}


def test_both_kinds_and_every_family():
  assert len(LINEN) >= 12 and len(NNX) == 3
  tags = set().union(*(c.tags for c in zoo.CASES.values()))
  assert {"depthwise", "grouped", "squeeze_excite", "concat", "scan",
          "remat", "partitioned", "flax_attention"} <= tags


def test_unknown_case_names_the_known_ones():
  with pytest.raises(KeyError, match="resnet18"):
    zoo.case("resnet1000")


@pytest.mark.parametrize("name", list(zoo.CASES))
def test_example_is_a_batch_of_two(name):
  x = zoo.CASES[name].example()
  assert isinstance(x, np.ndarray) and x.shape[0] == 2
  if x.ndim == 4:
    assert x.dtype == np.float32
  else:
    assert x.dtype == np.int32 and x.min() >= 1 and x.max() < zoo.VOCAB


@pytest.mark.parametrize("name", list(zoo.CASES))
def test_forward_has_the_output_shape(name):
  c = zoo.CASES[name]
  y = np.asarray(zoo.forward(c))
  assert y.shape == c.output_shape
  assert np.all(np.isfinite(y))
  assert np.std(y) > 1e-3  # not a constant: the drawn values are used


@pytest.mark.parametrize("name", LINEN)
def test_linen_collections(name):
  c = zoo.CASES[name]
  variables = zoo.variables(c)
  assert tuple(sorted(variables)) == c.collections
  has_norm = any("BatchNorm" in n or n.startswith("bn") or "/norm_proj/" in n
                 for n, _ in paths.named_leaves(variables["params"]))
  assert ("batch_stats" in variables) == has_norm == ("batchnorm" in c.tags)
  if "batch_stats" in variables:
    names = {n.rsplit("/", 1)[-1]
             for n, _ in paths.named_leaves(variables["batch_stats"])}
    assert names == {"mean", "var"}


def test_variables_follow_the_seed():
  a = zoo.variables("mlp", seed=0)["params"]["Dense_0"]["kernel"]
  b = zoo.variables("mlp", seed=0)["params"]["Dense_0"]["kernel"]
  c = zoo.variables("mlp", seed=1)["params"]["Dense_0"]["kernel"]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  # variance 1 / fan-in, fan-in 64
  assert 0.5 / 64 < np.var(a) < 2 / 64


def test_nnx_variables_follow_the_seed_and_are_not_abstract():
  a = zoo.CASES["nnx_cnn"].build(seed=0)
  b = zoo.CASES["nnx_cnn"].build(seed=1)
  assert isinstance(a.linear1.kernel[...], (np.ndarray, jax.Array))
  assert not np.allclose(a.linear1.kernel[...], b.linear1.kernel[...])


def test_nnx_models_are_in_evaluation_mode():
  model = zoo.CASES["nnx_mlp"].build()
  assert model.bn.use_running_average and model.dropout.deterministic
  stats = nnx.state(model, nnx.BatchStat)
  assert {n for n, _ in paths.named_leaves(stats)} == {"bn/mean", "bn/var"}
  x = zoo.CASES["nnx_mlp"].example()
  np.testing.assert_array_equal(model(x), model(x))  # nothing updated


def test_partitioned_params_are_boxed():
  variables = zoo.variables("lm1b")
  boxes = jax.tree.leaves(variables["params"],
                          is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert boxes and all(isinstance(b, nn.Partitioned) for b in boxes)
  logical = [b for b in boxes if isinstance(b, nn.LogicallyPartitioned)]
  mesh = [b for b in boxes if not isinstance(b, nn.LogicallyPartitioned)]
  assert len(mesh) == 3 and len(logical) == len(boxes) - 3
  assert all(len(b.names) == b.value.ndim for b in boxes)
  params = variables["params"]
  assert params["logitdense"]["kernel"].names == (None, "model")
  query = params["encoderdecoderblock_0"]["MultiHeadDotProductAttention_0"][
      "query"]["kernel"]
  assert query.names == ("embed", "heads", "kv")
  unboxed = nn.unbox(variables)
  leaves = jax.tree.leaves(unboxed,
                           is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert len(leaves) == len(boxes)
  assert not any(isinstance(leaf, nn.Partitioned) for leaf in leaves)


# For each case: narrower widths, and shapes they must give, written from the
# architecture (not from the code's output).
NARROWER = {
    "resnet18": ({"widths": (4, 8), "inner": (3, 5)}, {
        "params/Conv_0/kernel": (7, 7, 3, 4),
        "params/BasicBlock_0/Conv_0/kernel": (3, 3, 4, 3),
        "params/BasicBlock_0/Conv_1/kernel": (3, 3, 3, 4),
        "params/BasicBlock_1/Conv_0/kernel": (3, 3, 4, 5),
        "params/BasicBlock_1/Conv_2/kernel": (1, 1, 4, 8),
        "batch_stats/BasicBlock_1/BatchNorm_2/mean": (8,),
        "params/Dense_0/kernel": (8, 10)}),
    "resnet50": ({"stem": 6, "widths": (12, 20),
                  "inner": ((2, 3), (4, 5), (6, 7))}, {
        "params/Bottleneck_0/Conv_0/kernel": (1, 1, 6, 2),
        "params/Bottleneck_0/Conv_1/kernel": (3, 3, 2, 3),
        "params/Bottleneck_0/Conv_2/kernel": (1, 1, 3, 12),
        "params/Bottleneck_0/conv_proj/kernel": (1, 1, 6, 12),
        "params/Bottleneck_1/Conv_0/kernel": (1, 1, 12, 4),
        "params/Bottleneck_2/Conv_1/kernel": (3, 3, 6, 7),
        "params/Bottleneck_2/conv_proj/kernel": (1, 1, 12, 20),
        "params/Dense_0/kernel": (20, 10)}),
    "mobilenet": ({"stem": 4, "separable": 8, "hidden": (12, 16),
                   "out": 10, "head": 20}, {
        "params/DepthwiseSeparable_0/Conv_0/kernel": (3, 3, 1, 4),
        "params/DepthwiseSeparable_0/Conv_1/kernel": (1, 1, 4, 8),
        "params/InvertedResidual_0/Conv_1/kernel": (3, 3, 1, 12),
        "params/InvertedResidual_0/Conv_2/kernel": (1, 1, 12, 8),
        "params/InvertedResidual_1/Conv_2/kernel": (1, 1, 16, 10),
        "params/Conv_1/kernel": (1, 1, 10, 20),
        "params/Dense_0/kernel": (20, 10)}),
    "regnet": ({"widths": (8, 16), "bottleneck": (8, 12), "se": (2, 3)}, {
        "params/ResNeXtBlock_0/Conv_1/kernel": (3, 3, 2, 8),  # 4 groups
        "params/ResNeXtBlock_1/Conv_1/kernel": (3, 3, 3, 12),
        "params/ResNeXtBlock_1/SqueezeExcite_0/Dense_0/kernel": (12, 3),
        "params/ResNeXtBlock_1/SqueezeExcite_0/Dense_1/kernel": (3, 12),
        "params/ResNeXtBlock_1/Conv_3/kernel": (1, 1, 8, 16),
        "params/Dense_0/kernel": (16, 10)}),
    "densenet": ({"stem": 6, "growth": (2, 3, 4),
                  "bottleneck": (8, 8, 8), "transition": 10}, {
        "params/DenseLayer_1/Conv_0/kernel": (1, 1, 8, 8),  # 6 + 2
        "params/DenseLayer_2/Conv_0/kernel": (1, 1, 11, 8),  # 6 + 2 + 3
        "params/DenseLayer_2/Conv_1/kernel": (3, 3, 8, 4),
        "params/BatchNorm_0/scale": (15,),
        "params/Conv_1/kernel": (1, 1, 15, 10),
        "params/Dense_0/kernel": (10, 10)}),
    "vit": ({"hidden": 8, "heads": (2, 1), "head_dim": 4, "mlp": (16, 12)}, {
        "params/embedding/kernel": (4, 4, 3, 8),
        "params/pos_embedding": (1, 5, 8),
        "params/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel":
            (8, 2, 4),
        "params/encoderblock_1/MultiHeadDotProductAttention_0/out/kernel":
            (1, 4, 8),
        "params/encoderblock_1/MlpBlock_0/Dense_0/kernel": (8, 12)}),
    "bert": ({"hidden": 8, "heads": 1, "head_dim": (4, 2), "mlp": 16}, {
        "params/Embed_0/embedding": (32, 8),
        "params/BertBlock_0/SelfAttention_0/Dense_0/kernel": (8, 12),
        "params/BertBlock_1/SelfAttention_0/Dense_0/kernel": (8, 6),
        "params/BertBlock_1/SelfAttention_0/Dense_1/kernel": (2, 8),
        "params/BertBlock_1/MlpBlock_0/Dense_1/kernel": (16, 8)}),
    "scanned_mlp": ({"features": 8, "hidden": 12}, {
        "params/Dense_0/kernel": (64, 8),
        "params/layers/Dense_0/kernel": (3, 8, 12),
        "params/layers/Dense_1/kernel": (3, 12, 8),
        "params/layers/LayerNorm_0/scale": (3, 8)}),
    "remat_mlp": ({"features": 8, "hidden": (12, 4)}, {
        "params/CheckpointDropoutMlp_0/Dense_0/kernel": (8, 12),
        "params/CheckpointDropoutMlp_1/Dense_0/kernel": (8, 4),
        "params/CheckpointDropoutMlp_1/Dense_1/kernel": (4, 8)}),
    "lm1b": ({"emb_dim": 8, "heads": (1, 2), "head_dim": 4, "mlp": 12}, {
        "params/Embed_0/embedding": (32, 8),
        "params/pos_embedding": (1, 16, 8),
        "params/encoderdecoderblock_0/MultiHeadDotProductAttention_0/query/"
        "kernel": (8, 1, 4),
        "params/encoderdecoderblock_1/MultiHeadDotProductAttention_0/key/"
        "kernel": (8, 2, 4),
        "params/encoderdecoderblock_1/Dense_0/kernel": (8, 12),
        "params/logitdense/kernel": (8, 32)}),
    "mlp": ({"features": (16, 8)}, {
        "params/Dense_0/kernel": (64, 16),
        "params/Dense_1/kernel": (16, 8),
        "params/Dense_2/kernel": (8, 10)}),
    "lenet": ({"conv": (4, 8), "dense": (16, 12)}, {
        "params/conv1/kernel": (5, 5, 1, 4),
        "batch_stats/bn1/mean": (4,),
        "params/Conv_0/kernel": (5, 5, 4, 8),
        "params/fc1/kernel": (2 * 2 * 8, 16),  # 16 -> pool 8 -> 4 -> pool 2
        "params/Dense_0/kernel": (16, 12),
        "params/logits/kernel": (12, 10)}),
    "nnx_cnn": ({"conv": (4, 6), "hidden": 16}, {
        "conv2/kernel": (3, 3, 4, 6),
        "linear1/kernel": (4 * 4 * 6, 16),
        "linear2/kernel": (16, 10)}),
    "nnx_mlp": ({"dmid": 12}, {
        "linear1/kernel": (64, 12),
        "bn/mean": (12,),
        "linear2/kernel": (12, 10)}),
    "nnx_resnet": ({"channels": 4, "inner": (3, 5)}, {
        "stem/kernel": (3, 3, 3, 4),
        "blocks/0/conv1/kernel": (3, 3, 4, 3),
        "blocks/1/conv2/kernel": (3, 3, 5, 4),
        "blocks/1/bn2/var": (4,),
        "head/kernel": (4, 10)}),
}


def test_every_case_has_narrower_widths():
  assert set(NARROWER) == set(zoo.CASES)
  for name, (widths, _) in NARROWER.items():
    assert set(widths) <= set(zoo.CASES[name].widths), name


@pytest.mark.parametrize("name", list(NARROWER))
def test_narrower_widths_change_the_shapes(name):
  c = zoo.CASES[name]
  widths, expected = NARROWER[name]
  default, narrow = shapes(c), shapes(c, **widths)
  assert set(narrow) == set(default)  # the same architecture
  assert {k: narrow[k] for k in expected} == expected
  assert all(default[k] != expected[k] for k in expected)
  size = lambda s: sum(int(np.prod(v)) for v in s.values())
  assert size(narrow) < size(default)
