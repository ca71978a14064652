"""Tests for sparsify.flops: counts checked against XLA's, and by hand.

Three independent references: XLA's cost analysis of the same operation
compiled alone (`xla_flops`, or `xla_products` for each product of a whole
model); closed forms for padded convolutions; and, for the FLOPs of nonzero
weights, the model itself run on an input of ones with each weight replaced
by ``weight != 0``: every output then sums the multiply-accumulates of
nonzero weights that reach a real input entry (padding and dilation holes
hold zeros), so the sum of the outputs is the effective MAC count.
"""

import functools

from flax import nnx
import flax.linen as nn
import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import numpy_init
import optax
import pytest
import zoo

import sparsify
from sparsify import flops as flops_lib

B = 2  # the example batch


def xla_flops(fn, *args, compiled=True):
  """XLA's FLOPs of ``jax.jit(fn)`` on ``args`` (arrays or shapes).

  ``compiled=False`` reads them from the HLO before XLA's optimizations
  (`jax.stages.Lowered.cost_analysis`), which nothing has rewritten yet.
  """
  lowered = jax.jit(fn).lower(*args)
  cost = lowered.compile().cost_analysis() if compiled else (
      lowered.cost_analysis())
  if isinstance(cost, (list, tuple)):  # one dict per device in older JAX
    cost = cost[0]
  return cost["flops"]


def xla_products(fn, *args, compiled=True):
  """XLA's FLOPs of each dot_general and convolution of ``fn``, alone.

  Walks the jaxpr for the products only (scan bodies count ``length``
  times); the count of each is XLA's, the elementwise work (bias,
  normalisation, activations, pooling) is left out.
  """
  total = 0.

  def walk(jaxpr, times):
    nonlocal total
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
        shapes = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype)
                  for v in eqn.invars]
        op = functools.partial(eqn.primitive.bind, **eqn.params)
        total += times * xla_flops(op, *shapes, compiled=compiled)
      for value in eqn.params.values():
        for j in value if isinstance(value, (tuple, list)) else (value,):
          if isinstance(j, (jax_core.Jaxpr, jax_core.ClosedJaxpr)):
            walk(getattr(j, "jaxpr", j), times * eqn.params.get("length", 1))

  walk(jax.make_jaxpr(fn)(*args).jaxpr, 1)
  return total


def total(counts):
  return sum(leaf.flops for leaf in counts.values())


def shapes_of(module, *args):
  return jax.eval_shape(module.init, jax.random.key(0), *args)


def ones(*shape):
  return np.ones(shape, np.float32)


# Single products: each is the only product, and the only work, of its model.


def test_dense_on_tokens_counts_every_position():
  model, x = nn.Dense(5, use_bias=False), ones(B, 7, 3)
  variables = shapes_of(model, x)
  counts = sparsify.param_flops(model.apply, variables, x)
  assert counts["kernel"].flops == 2 * 7 * 3 * 5
  assert B * total(counts) == xla_flops(model.apply, variables, x)
  np.testing.assert_array_equal(counts["kernel"].macs, np.full((3, 5), 7))


@pytest.mark.parametrize("features,axis,x_shape", [
    ((4, 6), -1, (B, 7, 3)),  # the q projection: kernel (d, heads, head_dim)
    (3, (-2, -1), (B, 7, 4, 6)),  # the output one: (heads, head_dim, d)
])
def test_dense_general_with_a_heads_axis(features, axis, x_shape):
  model, x = nn.DenseGeneral(features, axis, use_bias=False), ones(*x_shape)
  variables = shapes_of(model, x)
  counts = sparsify.param_flops(model.apply, variables, x)
  kernel = variables["params"]["kernel"]
  assert counts["kernel"].flops == 2 * 7 * np.prod(kernel.shape)  # 7 tokens
  assert B * total(counts) == xla_flops(model.apply, variables, x)


K3 = {"kernel_size": (3, 3)}
CONVS = {  # name: (nn.Conv's arguments, one example's shape)
    "same": ({"features": 4, **K3}, (5, 5, 2)),
    "valid": ({"features": 4, **K3, "padding": "VALID"}, (5, 5, 2)),
    "strided": ({"features": 4, **K3, "strides": 2}, (6, 5, 2)),
    "explicit": ({"features": 3, "kernel_size": (3, 2),
                  "padding": ((2, 1), (0, 3))}, (4, 5, 2)),
    "dilated": ({"features": 4, **K3, "kernel_dilation": 2}, (5, 6, 2)),
    "input_dilated": ({"features": 4, **K3, "input_dilation": 2,
                       "padding": ((2, 1), (1, 2))}, (4, 3, 2)),
    "transposed": ({"features": 3, **K3, "strides": 2, "transpose": True},
                   (3, 4, 2)),
    "grouped": ({"features": 6, **K3, "feature_group_count": 2}, (5, 5, 4)),
    "depthwise": ({"features": 8, **K3, "strides": 2,
                   "feature_group_count": 4}, (5, 5, 4)),
    "one_pixel": ({"features": 4, **K3}, (1, 1, 3)),
    "conv1d": ({"features": 4, "kernel_size": (5,)}, (6, 2)),
}


def conv_model(name):
  kwargs, shape = CONVS[name]
  kwargs = dict(kwargs)
  cls = nn.ConvTranspose if kwargs.pop("transpose", False) else nn.Conv
  return cls(use_bias=False, **kwargs), ones(B, *shape)


@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv_matches_xla(name):
  model, x = conv_model(name)
  variables = shapes_of(model, x)
  counts = sparsify.param_flops(model.apply, variables, x)
  assert B * total(counts) == xla_flops(model.apply, variables, x)
  assert counts["activations"].flops == 0


@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv_counts_only_taps_on_the_input(name):
  # Every kernel weight set to 1 on an input of ones: each output sums the
  # taps that land on the input, so the outputs sum to the dense MACs, and
  # with weights `w != 0` to the effective ones.
  model, x = conv_model(name)
  shape = shapes_of(model, x)["params"]["kernel"].shape
  w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  w[np.random.default_rng(1).random(shape) < 0.5] = 0
  counts = sparsify.param_flops(model.apply, {"params": {"kernel": w}}, x)
  run = lambda kernel: float(model.apply({"params": {"kernel": kernel}}, x)
                             .sum()) / B
  assert counts["kernel"].flops == 2 * run(np.ones_like(w))
  assert counts["kernel"].effective(w) == 2 * run((w != 0).astype(w.dtype))


def test_padded_conv_by_hand():
  # 3x3 SAME on 5x5: along each axis the taps reach 4, 5, 4 of 5 positions.
  model, x = nn.Conv(3, (3, 3), use_bias=False), ones(B, 5, 5, 2)
  counts = sparsify.param_flops(model.apply, shapes_of(model, x), x)
  per_axis = np.array([4, 5, 4])
  assert counts["kernel"].flops == 2 * 2 * 3 * per_axis.sum() ** 2  # 2028
  for i in range(2):
    for o in range(3):
      np.testing.assert_array_equal(counts["kernel"].macs[:, :, i, o],
                                    np.outer(per_axis, per_axis))
  # Stride 2 on 6 rows: SAME pads (0, 1); tap 2 reaches rows 2 and 4 only.
  model, x = nn.Conv(1, (3, 1), strides=(2, 1), use_bias=False), ones(B, 6, 1, 1)
  counts = sparsify.param_flops(model.apply, shapes_of(model, x), x)
  np.testing.assert_array_equal(counts["kernel"].macs.ravel(), [3, 3, 2])


def test_effective_conv_by_a_loop_over_positions():
  # A numpy loop over output positions and taps of a zero-padded image.
  rng = np.random.default_rng(2)
  w = rng.standard_normal((3, 3, 2, 3)).astype(np.float32)
  w[rng.random(w.shape) < 0.6] = 0
  w[0, 0] = 1  # a corner tap, used at 16 of 25 positions
  model, x = nn.Conv(3, (3, 3), use_bias=False), ones(1, 5, 5, 2)
  counts = sparsify.param_flops(model.apply, {"params": {"kernel": w}}, x)
  image = np.pad(np.ones((5, 5)), 1)  # 1 on the input, 0 on the padding
  macs = 0
  for oy in range(5):
    for ox in range(5):
      for ky in range(3):
        for kx in range(3):
          macs += image[oy + ky, ox + kx] * np.count_nonzero(w[ky, kx])
  assert counts["kernel"].effective(w) == 2 * macs


def test_effective_matches_xla_of_the_narrower_layers():
  # Zeroing output channels of a padded conv leaves the FLOPs of the conv
  # without them, as XLA counts that conv.
  w = np.random.default_rng(0).standard_normal((3, 3, 2, 6)).astype(
      np.float32)
  keep = np.array([True, False, True, True, False, False])
  model, x = nn.Conv(6, (3, 3), use_bias=False), ones(B, 4, 5, 2)
  counts = sparsify.param_flops(model.apply, {"params": {"kernel": w}}, x)
  narrow = nn.Conv(3, (3, 3), use_bias=False)
  xla = xla_flops(narrow.apply, {"params": {"kernel": w[..., keep]}}, x)
  assert B * counts["kernel"].effective(w * keep) == xla
  # Dense on tokens: nnz * tokens MACs; zero input rows as a narrower dot.
  k = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
  rows = np.array([True, False, False, True, True])
  model, x = nn.Dense(4, use_bias=False), ones(B, 3, 5)
  counts = sparsify.param_flops(model.apply, {"params": {"kernel": k}}, x)
  assert counts["kernel"].effective(k * rows[:, None]) == 2 * 3 * 3 * 4
  xla = xla_flops(model.apply, {"params": {"kernel": k[rows]}}, x[..., rows])
  assert B * counts["kernel"].effective(k * rows[:, None]) == xla


def test_effective_flops_of_a_params_tree_with_masks():
  model, x = nn.Dense(4), ones(B, 3, 5)
  params = numpy_init.init(model, x)["params"]
  counts = sparsify.param_flops(model.apply, {"params": params}, x)
  keep = np.zeros((5, 4), bool)
  keep[:2] = True  # 8 weights
  masks = {"kernel": keep, "bias": optax.MaskedNode()}
  assert sparsify.effective_flops(counts, params, masks) == {
      "bias": 0, "kernel": 2 * 3 * 8, "activations": 0}
  assert sparsify.effective_flops(counts, params)["kernel"] == 2 * 3 * 20


class Attention(nn.Module):
  """Einsum projections (3-D kernels) and the two activation products."""
  heads: int = 2
  head_dim: int = 3

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    proj = lambda name: nn.Einsum((d, self.heads, self.head_dim),
                                  "btd,dhk->bthk", use_bias=False, name=name)
    q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)
    scores = jnp.einsum("bqhk,bshk->bhqs", q, k)
    y = jnp.einsum("bhqs,bshk->bqhk", scores, v)
    return nn.Einsum((self.heads, self.head_dim, d), "bthk,hkd->btd",
                     use_bias=False, name="out")(y)


def test_einsum_attention():
  model, x = Attention(), ones(B, 5, 4)
  variables = shapes_of(model, x)
  counts = sparsify.param_flops(model.apply, variables, x)
  for name in ("query", "key", "value", "out"):
    assert counts[f"{name}/kernel"].flops == 2 * 5 * 4 * 2 * 3
  assert counts["activations"].flops == 2 * 2 * (5 * 5 * 2 * 3)
  assert B * total(counts) == xla_flops(model.apply, variables, x)


def test_batch_groups_and_a_parameter_as_the_convolved_input():
  # What a kernel's gradient computes: the batch split in groups, and a
  # parameter image convolved by an activation (the lhs operand).
  rng = np.random.default_rng(3)
  image = rng.standard_normal((4, 5, 5, 2)).astype(np.float32)
  image[rng.random(image.shape) < 0.5] = 0

  def fn(p, x, conv=jax.lax.conv_general_dilated):
    return conv(p["image"], x, (1, 1), "SAME", batch_group_count=2,
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  params, x = {"image": image}, ones(3, 3, 2, 6)  # 3x3 taps, 2 in, 6 out
  counts = sparsify.param_flops(fn, params, x)
  batch = 3  # x's leading axis, read as the batch
  assert batch * total(counts) == xla_flops(fn, params, x)
  run = lambda img: float(fn({"image": img}, x).sum()) / batch
  assert counts["image"].flops == 2 * run(np.ones_like(image))
  assert counts["image"].effective(image) == 2 * run(
      (image != 0).astype(np.float32))


# Whole models: every product, each as XLA counts it alone.


def linen_case(name):
  case = zoo.case(name)
  model, x = case.build(), case.example()
  apply_fn = functools.partial(model.apply, **case.apply_kwargs)
  init = functools.partial(model.init, **case.apply_kwargs)
  return apply_fn, jax.eval_shape(init, jax.random.key(0), x), x


@pytest.mark.parametrize("name", [name for name, case in zoo.CASES.items()
                                  if case.kind == "linen"])
def test_linen_zoo_models_match_xla_per_product(name):
  apply_fn, variables, x = linen_case(name)
  counts = sparsify.param_flops(apply_fn, variables, x)
  assert B * total(counts) == xla_products(apply_fn, variables, x)


@pytest.mark.parametrize("name", ["mobilenet", "regnet", "scanned_mlp"])
def test_a_training_steps_products_match_xla(name):
  # The gradient's products too: depthwise and grouped kernels' gradients
  # are convolutions with batch groups. XLA's CPU compiler rewrites those
  # into a dense convolution (here 32 times the work) and a select, and
  # counts that, so the reference is XLA's count before its rewrites.
  apply_fn, variables, x = linen_case(name)
  step = jax.grad(lambda v, x: jnp.sum(apply_fn(v, x) ** 2))
  counts = sparsify.param_flops(step, variables, x)
  assert B * total(counts) == xla_products(step, variables, x,
                                           compiled=False)


def test_linen_cnn_with_batchnorm_by_layer():
  # LeNet at 16x16: conv1 5x5 SAME (tap k reaches 16 - |k - 2| rows),
  # conv2 5x5 VALID on 8x8 (4x4 positions), pool to 2x2, three Dense.
  case = zoo.case("lenet")
  model, x = case.build(), case.example()
  variables = zoo.variables(case)
  counts = sparsify.param_flops(model.apply, variables, x, train=False)
  assert counts["conv1/kernel"].flops == 2 * 6 * (14 + 15 + 16 + 15 + 14) ** 2
  assert counts["Conv_0/kernel"].flops == 2 * 25 * 6 * 16 * 16
  assert counts["fc1/kernel"].flops == 2 * 2 * 2 * 16 * 32
  assert counts["logits/kernel"].flops == 2 * 16 * 10
  assert counts["batch_stats/bn1/mean"].flops == 0
  assert counts["conv1/bias"].flops == 0 and counts["activations"].flops == 0


def test_scan_counts_every_layer_on_its_slice():
  case = zoo.case("scanned_mlp")
  model, x = case.build(), case.example()
  variables = zoo.variables(case)
  counts = sparsify.param_flops(model.apply, variables, x)
  stacked = counts["layers/Dense_0/kernel"]
  assert stacked.shape == (3, 16, 32)
  np.testing.assert_array_equal(stacked.macs, np.ones((3, 16, 32)))
  # Pruning the second layer's slice only removes its own FLOPs.
  kernel = np.asarray(variables["params"]["layers"]["Dense_0"]["kernel"])
  keep = np.ones(kernel.shape, bool)
  keep[1] = False
  assert stacked.effective(kernel * keep) == 2 * 2 * 16 * 32


@pytest.mark.parametrize("name", ["nnx_cnn", "nnx_resnet", "nnx_mlp"])
def test_nnx_models_match_xla_per_product(name):
  case = zoo.case(name)
  model, x = case.build(), case.example()
  apply_fn, state = sparsify.nnx_apply(model)
  counts = sparsify.param_flops(apply_fn, state, x)
  assert B * total(counts) == xla_products(apply_fn, state, x)


def test_nnx_cnn_names_and_counts():
  # The NNX MNIST tutorial's CNN at 16x16: two 3x3 SAME convs (on 16x16 and
  # 8x8), pools, Linear(4*4*16, 32), Linear(32, 10).
  model = zoo.case("nnx_cnn").build()
  counts = sparsify.param_flops(*sparsify.nnx_apply(model), ones(B, 16, 16, 1))
  assert list(counts) == ["conv1/bias", "conv1/kernel", "conv2/bias",
                          "conv2/kernel", "linear1/bias", "linear1/kernel",
                          "linear2/bias", "linear2/kernel", "activations"]
  assert counts["conv1/kernel"].flops == 2 * 8 * (15 + 16 + 15) ** 2
  assert counts["conv2/kernel"].flops == 2 * 8 * 16 * (7 + 8 + 7) ** 2
  assert counts["linear1/kernel"].flops == 2 * 256 * 32


# Following parameters: masks, transposes, calls, control flow.


class MaskedDense(nn.Module):
  """A kernel stored transposed, masked from another collection."""

  @nn.compact
  def __call__(self, x, how="mul"):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 3))
    mask = self.variable("masks", "kernel", jnp.ones, (4, 3)).value
    kernel = {"mul": lambda: kernel * mask, "mask_first": lambda: mask * kernel,
              "where": lambda: jnp.where(mask, kernel, 0)}[how]()
    return x @ kernel.astype(jnp.bfloat16).T.astype(x.dtype)


@pytest.mark.parametrize("how", ["mul", "mask_first", "where"])
def test_a_masked_transposed_kernel_is_still_the_kernel(how):
  model, x = MaskedDense(), ones(B, 5, 3)
  variables = shapes_of(model, x)
  counts = sparsify.param_flops(model.apply, variables, x, how=how)
  assert counts["kernel"].flops == 2 * 5 * 12
  assert counts["masks/kernel"].flops == 0
  np.testing.assert_array_equal(counts["kernel"].macs, np.full((4, 3), 5))


def test_a_tied_embedding_counts_its_logits():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, tokens):
      embed = nn.Embed(11, 4)
      return embed.attend(embed(tokens))  # the lookup is no product
  model, tokens = Net(), np.zeros((B, 3), np.int32)
  counts = sparsify.param_flops(model.apply, shapes_of(model, tokens), tokens)
  assert counts["Embed_0/embedding"].flops == 2 * 3 * 11 * 4


def test_normalised_activations_stay_activations():
  # LayerNorm's scale multiplies the activations: the Dense after it still
  # reads its kernel, and a CLS parameter concatenated to the tokens is
  # part of the activations.
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      cls = self.param("cls", nn.initializers.zeros, (1, 1, x.shape[-1]))
      x = jnp.concatenate([jnp.tile(cls, (x.shape[0], 1, 1)), x], axis=1)
      return nn.Dense(2)(nn.LayerNorm()(x))
  model, x = Net(), ones(B, 3, 4)
  counts = sparsify.param_flops(model.apply, shapes_of(model, x), x)
  assert counts["Dense_0/kernel"].flops == 2 * 4 * 8
  assert counts["cls"].flops == counts["LayerNorm_0/scale"].flops == 0
  assert counts["activations"].flops == 0


@pytest.mark.parametrize("name,tokens", [("vit", 5), ("bert", zoo.TOKENS)])
def test_transformers_count_every_kernel_at_every_token(name, tokens):
  # ViT: 4 patches (the embedding conv's positions) and a CLS token, its
  # head on CLS only; BERT: its head on the mean. Attention's two products
  # per block: 2 heads x tokens^2 x head_dim 8 MACs each.
  case = zoo.case(name)
  model, x = case.build(), case.example()
  variables = shapes_of(model, x)
  counts = sparsify.param_flops(model.apply, variables, x)
  for leaf_name, leaf in sparsify.named_leaves(variables["params"]):
    positions = {"embedding/kernel": 4, "head/kernel": 1,
                 "Dense_0/kernel": 1}.get(leaf_name, tokens)
    if leaf_name.endswith("kernel"):
      assert counts[leaf_name].flops == 2 * positions * leaf.size, leaf_name
    else:
      assert counts[leaf_name].flops == 0, leaf_name
  assert counts["activations"].flops == 2 * 2 * 2 * (2 * tokens**2 * 8)


def w_and_x():
  return {"w": ones(3, 4), "v": ones(4, 4)}, ones(B, 3)


@jax.custom_vjp
def product(x, w):
  return x @ w


product.defvjp(lambda x, w: (x @ w, (x, w)), lambda r, g: (g, g))


def test_products_inside_calls_are_followed():
  def fn(p, x):
    y = jax.checkpoint(lambda x: jnp.dot(x, p["w"]))(x)
    y = jax.jit(lambda y, v: jax.nn.relu(y @ v))(y, p["v"])  # custom_jvp
    return product(y, p["v"].T)
  params, x = w_and_x()
  counts = sparsify.param_flops(fn, params, x)
  assert counts["w"].flops == 2 * 12 and counts["v"].flops == 2 * 2 * 16
  assert B * total(counts) == xla_products(fn, params, x)


def test_cond_counts_its_dearest_branch():
  def fn(p, x):
    return jax.lax.cond(x.sum() > 0, lambda x: x @ p["w"] @ p["v"],
                        lambda x: x @ p["w"], x)
  counts = sparsify.param_flops(fn, *w_and_x())
  assert counts["w"].flops == 2 * 12 and counts["v"].flops == 2 * 16


def test_a_while_loop_that_multiplies_is_refused():
  def fn(p, x):
    return jax.lax.while_loop(lambda c: c.sum() < 10, lambda c: c @ p["v"],
                              x @ p["w"])
  with pytest.raises(ValueError, match="'while'"):
    sparsify.param_flops(fn, *w_and_x())

  def counting(p, x):  # a while without products is fine
    y = jax.lax.while_loop(lambda i: i < 3, lambda i: i + 1, 0)
    return x @ p["w"] * y
  assert sparsify.param_flops(counting, *w_and_x())["w"].flops == 24


def test_products_of_two_parameters_or_none_are_activations():
  def fn(p, x):
    low_rank = p["w"] @ p["v"]  # no example in it: 3 * 4 * 4 MACs a call
    y = x @ low_rank
    return (y[:, :, None] * y[:, None, :]).sum() + jnp.vdot(x, x)
  counts = sparsify.param_flops(fn, *w_and_x())
  assert counts["w"].flops == 0 and counts["v"].flops == 0
  # Per example: (48 + 2 * 12 + 2 * 3) / 2 MACs; a float, since the first
  # product does not scale with the batch.
  assert counts["activations"].flops == 2 * (48 + B * 12 + B * 3) / B


def test_flops_are_per_example():
  model = nn.Dense(3)
  one, three = ones(1, 4), ones(3, 4)
  variables = shapes_of(model, one)
  a = sparsify.param_flops(model.apply, variables, one)
  b = sparsify.param_flops(model.apply, variables, three)
  assert a["kernel"].flops == b["kernel"].flops == 24
  assert a == b


def test_a_leaf_named_activations_is_refused():
  with pytest.raises(ValueError, match="activations"):
    sparsify.param_flops(lambda p, x: x @ p["activations"],
                         {"activations": ones(3, 2)}, ones(B, 3))


def test_nnx_apply_leaves_the_module_alone():
  model = nnx.eval_shape(lambda: nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
  apply_fn, state = flops_lib.nnx_apply(model)
  assert jax.eval_shape(apply_fn, state, ones(B, 3)).shape == (B, 2)
  assert all(isinstance(leaf, jax.ShapeDtypeStruct)
             for leaf in jax.tree.leaves(nnx.state(model)))
