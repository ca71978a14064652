"""structure_of, slim and slim_model on models sparsify did not define."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zoo

import sparsify
from sparsify import flops
from sparsify.structure import surgery


_model = zoo.functional
_random_keep = zoo.random_keep


@pytest.mark.parametrize("name", sorted(zoo.CASES))
def test_slimmed_outputs_equal_the_masked_model(name):
  case, apply_fn, variables, x = _model(name)
  structure = sparsify.structure_of(apply_fn, variables, x)
  assert len(structure) > 0, f"{name}: no removable structure found"
  keep = _random_keep(structure)
  masked = sparsify.mask(variables, structure, keep)
  slim_apply, small = sparsify.slim_model(apply_fn, variables, keep, x)
  before = sum(np.size(v) for v in jax.tree.leaves(variables))
  after = sum(np.size(v) for v in jax.tree.leaves(small))
  assert after < before
  np.testing.assert_allclose(slim_apply(small, x), apply_fn(masked, x),
                             atol=1e-5, rtol=1e-5)


def test_a_residual_stream_is_one_unit_of_every_block():
  case, apply_fn, variables, x = _model("resnet18")
  structure = sparsify.structure_of(apply_fn, variables, x)
  kinds = {u.kind for u in structure}
  assert {"stream", "channel"} <= kinds
  stream = next(u for u in structure if u.kind == "stream")
  producers = {s.path for s in stream.producers()}
  # The stem and the last conv of the first block's branch add into it.
  assert sum(p.endswith("/kernel") for p in producers) >= 2


def test_grouped_convolutions_remove_whole_groups():
  case, apply_fn, variables, x = _model("regnet")
  structure = sparsify.structure_of(apply_fn, variables, x)
  groups = [u for u in structure if u.kind == "group"]
  assert groups
  for u in groups:
    assert u.size == 4  # the zoo's RegNet has 4 groups per grouped conv


def test_attention_heads_are_units_and_layernorm_features_are_not():
  case, apply_fn, variables, x = _model("vit")
  exact = sparsify.structure_of(apply_fn, variables, x)
  assert any(u.kind == "head" and u.size == 2 for u in exact)
  every = sparsify.structure_of(apply_fn, variables, x, approximate=True)
  inexact = [u for u in every if not u.exact]
  assert inexact and all("reduce" in u.note for u in inexact)
  assert not set(u.name for u in inexact) & set(exact.names())


def test_concatenated_inputs_keep_their_offsets():
  # Two branches of 3 and 5 channels concatenated, read by one Dense.
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      a = nn.relu(nn.Dense(3)(x))
      b = nn.relu(nn.Dense(5)(x))
      return nn.Dense(2)(jnp.concatenate([a, b], -1))

  x = jnp.ones((2, 4))
  variables = Net().init(jax.random.key(0), x)
  structure = sparsify.structure_of(Net().apply, variables, x)
  head = {u.name: next(s for s in u.consumers()) for u in structure}
  np.testing.assert_array_equal(head["Dense_0"].index.ravel(), [0, 1, 2])
  np.testing.assert_array_equal(head["Dense_1"].index.ravel(),
                                [3, 4, 5, 6, 7])


def test_slimmed_shapes_equal_the_model_built_narrower():
  case, apply_fn, variables, x = _model("mlp")
  structure = sparsify.structure_of(apply_fn, variables, x)
  keep = {u.name: np.arange(u.size) < u.size // 2 for u in structure}
  small = sparsify.slim(variables, structure, keep)
  narrow = zoo.variables(case, features=(16, 8))
  assert jax.tree.map(np.shape, small) == jax.tree.map(np.shape, narrow)


def test_the_export_reloads_and_matches():
  case, apply_fn, variables, x = _model("lenet")
  structure = sparsify.structure_of(apply_fn, variables, x)
  keep = _random_keep(structure, seed=1)
  slim_apply, small = sparsify.slim_model(apply_fn, variables, keep, x)
  loaded = jax.export.deserialize(sparsify.export_slim(slim_apply, small, x))
  np.testing.assert_allclose(loaded.call(small, x), slim_apply(small, x),
                             atol=1e-6)


def test_an_nnx_export_takes_its_variables_by_path():
  case, apply_fn, state, x = _model("nnx_cnn")
  structure = sparsify.structure_of(apply_fn, state, x)
  slim_apply, small = sparsify.slim_model(apply_fn, state,
                                          _random_keep(structure), x)
  loaded = jax.export.deserialize(sparsify.export_slim(slim_apply, small, x))
  flat = surgery.flat_variables(small)
  assert all(isinstance(v, (np.ndarray, jax.Array)) for v in flat.values())
  np.testing.assert_allclose(loaded.call(flat, x), slim_apply(small, x),
                             atol=1e-6)


def test_bad_keeps_name_what_is_allowed():
  case, apply_fn, variables, x = _model("mlp")
  structure = sparsify.structure_of(apply_fn, variables, x)
  name = structure[0].name
  with pytest.raises(ValueError, match="unknown unit"):
    sparsify.slim(variables, structure, {"nope": np.ones(3, bool)})
  with pytest.raises(ValueError, match="boolean array of shape"):
    sparsify.slim(variables, structure, {name: np.ones(3, bool)})
  with pytest.raises(ValueError, match="keep at least one"):
    sparsify.slim(variables, structure,
                  {name: np.zeros(structure[0].size, bool)})


def test_an_unknown_primitive_is_an_error_naming_it():
  def apply_fn(variables, x):
    return jax.lax.cumsum(x @ variables["params"]["w"], axis=0) @ (
        variables["params"]["v"])

  variables = {"params": {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}}
  x = jnp.ones((2, 3))
  # cumsum over the batch is followed; a primitive with no rule is refused.
  sparsify.structure_of(apply_fn, variables, x)
  with pytest.raises(sparsify.StructureError, match="fft"):
    sparsify.structure_of(
        lambda v, x: jnp.fft.fft(x @ v["params"]["w"]).real @ v["params"]["v"],
        variables, x)


def test_relu6_and_depthwise_convolutions_keep_units_exact():
  # relu6 = min(max(x, 0), 6) keeps a removed channel at zero, and a
  # depthwise convolution's groups are single channels.
  case, apply_fn, variables, x = _model("mobilenet")
  structure = sparsify.structure_of(apply_fn, variables, x, approximate=True)
  assert all(u.exact for u in structure)
  hidden = structure["InvertedResidual_0/Conv_0"]
  assert (hidden.kind, hidden.size) == ("channel", 32)
  paths = {(s.path, s.axis) for s in hidden.producers()}
  assert ("params/InvertedResidual_0/Conv_1/kernel", 3) in paths  # depthwise


def test_dropout_in_training_keeps_the_units_it_drops_from():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(16)(x)))
      return nn.Dense(3)(x)

  x = jnp.ones((4, 5))
  variables = Net().init(jax.random.key(0), x)
  rngs = {"dropout": jax.random.key(1)}
  train = sparsify.structure_of(Net().apply, variables, x, train=True,
                                rngs=rngs)
  assert [(u.name, u.size) for u in train] == [("Dense_0", 16)]
  keep = {"Dense_0": np.arange(16) < 4}
  slim_apply, small = sparsify.slim_model(Net().apply, variables, keep, x)
  out = jax.jit(functools.partial(slim_apply, train=True))(small, x,
                                                            rngs=rngs)
  # In training the slim model draws its own dropout mask, at its width.
  assert out.shape == (4, 3) and np.isfinite(out).all()
  np.testing.assert_allclose(  # and without dropout it is the masked model
      slim_apply(small, x), Net().apply(sparsify.mask(variables, train, keep),
                                        x), atol=1e-6)


@pytest.mark.parametrize("name", ["nnx_cnn", "nnx_resnet"])
def test_an_nnx_model_comes_back_as_a_smaller_module(name):
  case = zoo.CASES[name]
  module = case.build()
  x = jnp.asarray(case.example())
  apply_fn, state = flops.nnx_apply(module)
  structure = sparsify.structure_of(apply_fn, state, x)
  keep = _random_keep(structure, seed=2)
  small = sparsify.slim_nnx(module, keep, x)
  slim_apply, slim_state = sparsify.slim_model(apply_fn, state, keep, x)
  np.testing.assert_allclose(small(x), slim_apply(slim_state, x), atol=1e-6)
  masked = sparsify.mask(state, structure, keep)
  np.testing.assert_allclose(small(x), apply_fn(masked, x), atol=1e-5)
  sizes = lambda m: sum(np.size(v) for v in jax.tree.leaves(
      flops.nnx_apply(m)[1]))
  assert sizes(small) < sizes(module)


def _macs_lenet(conv, dense, size=16, classes=10):
  """Multiply-adds of the zoo's LeNet on size x size x 1 images, by hand."""
  c1, c2 = conv
  # SAME padding: only the taps inside the image multiply (as XLA counts).
  taps = sum(min(i + 2, size - 1) - max(i - 2, 0) + 1 for i in range(size))
  first = taps * taps * 1 * c1
  second = (size // 2 - 4) ** 2 * 5 * 5 * c1 * c2  # VALID after the pool
  flat = (size // 2 - 4) // 2
  return first + second + flat * flat * c2 * dense[0] + (
      dense[0] * dense[1] + dense[1] * classes)


@pytest.mark.parametrize("kept", [((3, 8), (16, 4)), ((6, 1), (1, 16))])
def test_slim_counts_equal_a_hand_count(kept):
  case, apply_fn, variables, x = _model("lenet")
  structure = sparsify.structure_of(apply_fn, variables, x)
  widths = dict(zip(["conv1", "Conv_0", "fc1", "Dense_0"],
                    [*kept[0], *kept[1]]))
  keep = {u.name: np.arange(u.size) < widths[u.name] for u in structure}
  slim_apply, small = sparsify.slim_model(apply_fn, variables, keep, x)
  (c1, c2), (d1, d2) = kept
  # Weights and biases, BatchNorm's four vectors per channel, by hand.
  params = (25 * c1 + c1 + 2 * c1) + (25 * c1 * c2 + c2 + 2 * c2) + (
      4 * c2 * d1 + d1) + (d1 * d2 + d2) + (d2 * 10 + 10)
  count = lambda tree: sum(np.size(v) for v in jax.tree.leaves(tree))
  assert count(small["params"]) == params
  assert count(small["batch_stats"]) == 2 * (c1 + c2)
  counted = flops.param_flops(slim_apply, small, x)
  assert sum(f.flops for f in counted.values()) == 2 * _macs_lenet(*kept)
