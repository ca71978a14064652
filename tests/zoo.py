"""Small Flax models written the way other libraries write them.

The structure tracer and the slimmer must handle models as people write
them, not only sparsify's own: torchvision's ResNets as flax's
examples/imagenet writes them, MobileNet's depthwise convolutions, grouped
convolutions with squeeze-excitation, DenseNet's concatenations, ViT and
BERT encoders, `nn.scan` and `nn.remat` stacks, lm1b's partitioned
parameters, and the NNX tutorials' models. Each model here is tiny (widths
of 4 to 32, images of 8x8 or 16x16, 8 tokens) but keeps its family's
structure: the same layer types, the same names (flax's automatic names
where the original writes none), the same shortcuts and reshapes.

`CASES` maps a name to a `Case`; ``case.build(**widths)`` builds the model
(a Linen module, or an NNX module with its values drawn), every width being
a keyword argument with a default, so a test can rebuild the same
architecture narrower. `variables` draws a Linen model's variables with
numpy (see `numpy_init`); NNX models are drawn the same way inside
``build``, since NNX draws each parameter with `jax.random` on construction
and that costs about 0.2 s per new shape on CPU.

Example::

  case = zoo.CASES["resnet18"]
  model, x = case.build(widths=(4, 8)), case.example()
  y = model.apply(zoo.variables(case, widths=(4, 8)), x, **case.apply_kwargs)
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import inspect
import types
from typing import Any

from flax import linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import numpy_init

from sparsify.core import paths

ModuleDef = Any
NUM_CLASSES = 10
VOCAB = 32
TOKENS = 8


def _per_layer(value, n):
  """``value`` repeated ``n`` times if it is one int, else as a tuple."""
  if isinstance(value, int):
    return (value,) * n
  assert len(value) == n, (value, n)
  return tuple(value)


# ResNet-18 and ResNet-50, as flax's examples/imagenet/models.py writes them
# (torchvision's BasicBlock and Bottleneck: strides on the 3x3 conv, a 1x1
# projection with BatchNorm where the shape changes). Each block also takes
# its inner widths, so every group of channels that can shrink on its own has
# its own argument.


class BasicBlock(nn.Module):
  """torchvision's BasicBlock: conv3x3-BN-relu-conv3x3-BN, add, relu."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[..., Any] = nn.relu
  strides: tuple[int, int] = (1, 1)
  inner: int | None = None  # the first conv's width; torchvision: filters

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.inner or self.filters, (3, 3), self.strides)(x)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:  # automatic names: Conv_2, BatchNorm_2
      residual = self.conv(self.filters, (1, 1), self.strides)(residual)
      residual = self.norm()(residual)
    return self.act(residual + y)


class Bottleneck(nn.Module):
  """torchvision's Bottleneck: 1x1-3x3-1x1, the output 4x the inner width."""
  filters: int  # the output width: 4 x the inner width in torchvision
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[..., Any] = nn.relu
  strides: tuple[int, int] = (1, 1)
  inner: tuple[int, int] | None = None  # widths of the 1x1 and the 3x3

  @nn.compact
  def __call__(self, x):
    first, second = self.inner or (self.filters // 4,) * 2
    residual = x
    y = self.conv(first, (1, 1))(x)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(second, (3, 3), self.strides)(y)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides,
                           name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return self.act(residual + y)


class ResNet(nn.Module):
  """ResNet: stem conv7x7/2-BN-relu-maxpool, stages of blocks, pool, Dense.

  ``widths`` are the stages' output widths (each stage's blocks share theirs
  through the identity shortcuts), ``inner`` the blocks' own inner widths,
  block by block. The first block of a stage strides by 2 (but the first
  stage's), and a block projects its shortcut where its input's shape
  differs from its output's.
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  stem: int
  widths: Sequence[int]
  inner: Sequence[Any] | None = None  # per block, in order: its `inner`
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(nn.Conv, use_bias=False)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5)
    x = conv(self.stem, (7, 7), (2, 2), padding=[(3, 3), (3, 3)])(x)
    x = norm()(x)
    x = nn.relu(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    inner = iter(self.inner or (None,) * sum(self.stage_sizes))
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = self.block_cls(self.widths[i], conv=conv, norm=norm,
                           strides=strides, inner=next(inner))(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


# MobileNet: V1's depthwise-separable block and V2's inverted residual.


class DepthwiseSeparable(nn.Module):
  """MobileNetV1: depthwise 3x3-BN-relu6, pointwise 1x1-BN-relu6."""
  features: int
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    channels = x.shape[-1]
    x = nn.Conv(channels, (3, 3), self.strides, feature_group_count=channels,
                use_bias=False)(x)
    x = nn.relu6(norm()(x))
    x = nn.Conv(self.features, (1, 1), use_bias=False)(x)
    return nn.relu6(norm()(x))


class InvertedResidual(nn.Module):
  """MobileNetV2: expand 1x1, depthwise 3x3, linear project 1x1, add."""
  features: int
  hidden: int  # the expanded width: input width x expansion ratio
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    y = nn.Conv(self.hidden, (1, 1), use_bias=False)(x)
    y = nn.relu6(norm()(y))
    y = nn.Conv(self.hidden, (3, 3), self.strides,
                feature_group_count=self.hidden, use_bias=False)(y)
    y = nn.relu6(norm()(y))
    y = nn.Conv(self.features, (1, 1), use_bias=False)(y)
    y = norm()(y)
    if self.strides == (1, 1) and x.shape[-1] == self.features:
      y = x + y
    return y


class MobileNet(nn.Module):
  """Stem conv/2, a separable block, two inverted residuals, 1x1 head."""
  stem: int = 8
  separable: int = 16
  hidden: Sequence[int] = (32, 32)
  out: int = 24
  head: int = 32
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(self.stem, (3, 3), (2, 2), use_bias=False)(x)
    x = nn.relu6(nn.BatchNorm(use_running_average=not train)(x))
    x = DepthwiseSeparable(self.separable)(x, train)
    x = InvertedResidual(self.separable, self.hidden[0])(x, train)  # adds
    x = InvertedResidual(self.out, self.hidden[1], strides=(2, 2))(x, train)
    x = nn.Conv(self.head, (1, 1), use_bias=False)(x)
    x = nn.relu6(nn.BatchNorm(use_running_average=not train)(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


# ResNeXt / RegNetY: grouped 3x3 convolution and squeeze-excitation.


class SqueezeExcite(nn.Module):
  """Global mean pool, Dense reduce, relu, Dense expand, sigmoid, scale."""
  features: int

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(nn.Dense(self.features)(s))
    s = nn.sigmoid(nn.Dense(x.shape[-1])(s))
    return x * s


class ResNeXtBlock(nn.Module):
  """1x1-BN-relu, grouped 3x3-BN-relu, SE, 1x1-BN, shortcut, add, relu."""
  filters: int
  bottleneck: int
  groups: int
  se: int
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    residual = x
    y = nn.Conv(self.bottleneck, (1, 1), use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.bottleneck, (3, 3), self.strides,
                feature_group_count=self.groups, use_bias=False)(y)
    y = nn.relu(norm()(y))
    y = SqueezeExcite(self.se)(y)
    y = nn.Conv(self.filters, (1, 1), use_bias=False)(y)
    y = norm()(y)
    if residual.shape != y.shape:
      residual = nn.Conv(self.filters, (1, 1), self.strides,
                         use_bias=False)(residual)
      residual = norm()(residual)
    return nn.relu(residual + y)


class RegNet(nn.Module):
  """Stem conv-BN-relu, one block per width (the later ones stride 2)."""
  widths: Sequence[int] = (16, 32)
  bottleneck: Sequence[int] = (16, 32)
  se: Sequence[int] = (4, 4)
  groups: int = 4
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    for i, (w, b, s) in enumerate(zip(self.widths, self.bottleneck, self.se)):
      strides = (2, 2) if i > 0 else (1, 1)
      x = ResNeXtBlock(w, b, self.groups, s, strides)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


# DenseNet-BC: every layer's output concatenated to its input.


class DenseLayer(nn.Module):
  """BN-relu-conv1x1 (bottleneck), BN-relu-conv3x3 (growth), concatenate."""
  growth: int
  bottleneck: int

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    y = nn.relu(norm()(x))
    y = nn.Conv(self.bottleneck, (1, 1), use_bias=False)(y)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.growth, (3, 3), use_bias=False)(y)
    return jnp.concatenate([x, y], axis=-1)


class DenseNet(nn.Module):
  """Stem conv, a dense block, a transition (BN-relu-1x1-avgpool), head."""
  stem: int = 8
  growth: Sequence[int] = (4, 4, 4)
  bottleneck: Sequence[int] = (16, 16, 16)
  transition: int = 12
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    x = nn.Conv(self.stem, (3, 3), use_bias=False)(x)
    for growth, bottleneck in zip(self.growth, self.bottleneck):
      x = DenseLayer(growth, bottleneck)(x, train)
    x = nn.relu(norm()(x))
    x = nn.Conv(self.transition, (1, 1), use_bias=False)(x)
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(norm()(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


# Transformers: ViT with flax's attention, BERT with attention by hand.


class MlpBlock(nn.Module):
  """Dense-gelu-Dense back to the input's width."""
  mlp_dim: int

  @nn.compact
  def __call__(self, x):
    y = nn.gelu(nn.Dense(self.mlp_dim)(x))
    return nn.Dense(x.shape[-1])(y)


class Encoder1DBlock(nn.Module):
  """Pre-LN block with `nn.MultiHeadDotProductAttention` (3-D kernels)."""
  num_heads: int
  head_dim: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm()(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=self.num_heads * self.head_dim,
        deterministic=True)(y, y)
    x = x + y
    y = nn.LayerNorm()(x)
    return x + MlpBlock(self.mlp_dim)(y)


class ViT(nn.Module):
  """google-research/vision_transformer's ViT: patches, CLS token, encoder.

  Its names are that code's: ``embedding``, ``cls``, ``pos_embedding``,
  ``encoderblock_i``, ``encoder_norm``, ``head``.
  """
  patch: int = 4
  hidden: int = 16
  heads: int | Sequence[int] = 2
  head_dim: int | Sequence[int] = 8
  mlp: int | Sequence[int] = 32
  depth: int = 2
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.hidden, (self.patch, self.patch),
                strides=(self.patch, self.patch), padding="VALID",
                name="embedding")(x)
    n, h, w, c = x.shape
    x = jnp.reshape(x, (n, h * w, c))
    cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
    x = jnp.concatenate([jnp.tile(cls, (n, 1, 1)), x], axis=1)
    x = x + self.param("pos_embedding", nn.initializers.normal(0.02),
                       (1, x.shape[1], c))
    layers = zip(_per_layer(self.heads, self.depth),
                 _per_layer(self.head_dim, self.depth),
                 _per_layer(self.mlp, self.depth))
    for i, (heads, head_dim, mlp) in enumerate(layers):
      x = Encoder1DBlock(heads, head_dim, mlp, name=f"encoderblock_{i}")(x)
    x = nn.LayerNorm(name="encoder_norm")(x)
    return nn.Dense(self.num_classes, name="head")(x[:, 0])


class SelfAttention(nn.Module):
  """Attention by hand: Dense(3 x heads x head_dim), einsums, Dense out."""
  num_heads: int
  head_dim: int

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    qkv = nn.Dense(3 * self.num_heads * self.head_dim)(x)
    qkv = qkv.reshape(b, t, 3, self.num_heads, self.head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(self.head_dim)
    weights = jax.nn.softmax(logits, axis=-1)
    y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    y = y.reshape(b, t, self.num_heads * self.head_dim)
    return nn.Dense(d)(y)


class BertBlock(nn.Module):
  """Pre-LN block with hand-written attention (2-D kernels)."""
  num_heads: int
  head_dim: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x):
    x = x + SelfAttention(self.num_heads, self.head_dim)(nn.LayerNorm()(x))
    return x + MlpBlock(self.mlp_dim)(nn.LayerNorm()(x))


class Bert(nn.Module):
  """Token and position embeddings, encoder, final LN, mean pool, Dense."""
  hidden: int = 16
  heads: int | Sequence[int] = 2
  head_dim: int | Sequence[int] = 8
  mlp: int | Sequence[int] = 32
  depth: int = 2
  vocab: int = VOCAB
  max_len: int = 16
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, self.hidden)(tokens)
    pos = self.param("position_embeddings", nn.initializers.normal(0.02),
                     (1, self.max_len, self.hidden))
    x = x + pos[:, :tokens.shape[1]]
    layers = zip(_per_layer(self.heads, self.depth),
                 _per_layer(self.head_dim, self.depth),
                 _per_layer(self.mlp, self.depth))
    for heads, head_dim, mlp in layers:
      x = BertBlock(heads, head_dim, mlp)(x)
    x = nn.LayerNorm()(x)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=1))


# Lifted transforms: nn.scan and nn.remat.


class ResidualMlp(nn.Module):
  """LN-Dense-relu-Dense with a residual; ``(carry, _) -> (carry, None)``."""
  hidden: int

  @nn.compact
  def __call__(self, x, _):
    y = nn.relu(nn.Dense(self.hidden)(nn.LayerNorm()(x)))
    return x + nn.Dense(x.shape[-1])(y), None


class ScannedMlp(nn.Module):
  """Dense in, ``layers`` identical residual MLPs under `nn.scan`, Dense out.

  The scanned parameters are stacked: ``layers/Dense_0/kernel`` has shape
  ``(layers, features, hidden)``.
  """
  features: int = 16
  hidden: int = 32
  layers: int = 3
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.features)(x.reshape((x.shape[0], -1)))
    stack = nn.scan(ResidualMlp, variable_axes={"params": 0},
                    split_rngs={"params": True}, length=self.layers)
    x, _ = stack(self.hidden, name="layers")(x, None)
    return nn.Dense(self.num_classes)(x)


class DropoutMlp(nn.Module):
  """Dense-relu-dropout-Dense with a residual; ``train`` is static."""
  hidden: int

  @nn.compact
  def __call__(self, x, train: bool = True):
    y = nn.relu(nn.Dense(self.hidden)(x))
    y = nn.Dropout(0.1, deterministic=not train)(y)
    return x + nn.Dense(x.shape[-1])(y)


class RematMlp(nn.Module):
  """Residual MLPs under `nn.remat`, named ``CheckpointDropoutMlp_i``.

  `nn.remat` prefixes the class's name with ``Checkpoint``; ``train`` has to
  be a static argument (``static_argnums=(2,)``, counting the module) for
  Dropout's Python ``not train`` to work under the checkpoint.
  """
  features: int = 16
  hidden: Sequence[int] = (32, 32)
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, train: bool = True):
    block = nn.remat(DropoutMlp, static_argnums=(2,))
    x = nn.Dense(self.features)(x.reshape((x.shape[0], -1)))
    for hidden in self.hidden:
      x = block(hidden)(x, train)
    return nn.Dense(self.num_classes)(x)


# lm1b's decoder-only Transformer: every parameter boxed with its axis names.


def _logical(init, *names):
  return nn.with_logical_partitioning(init, names)


class LmBlock(nn.Module):
  """lm1b's decoder block: LN, causal attention, add, LN, MLP, add."""
  num_heads: int
  head_dim: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x, mask):
    kernel = nn.initializers.xavier_uniform()
    norm = functools.partial(
        nn.LayerNorm, bias_init=_logical(nn.initializers.zeros, "embed"),
        scale_init=_logical(nn.initializers.ones, "embed"))
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=self.num_heads * self.head_dim,
        kernel_init=_logical(kernel, "embed", "heads", "kv"),
        out_kernel_init=_logical(kernel, "heads", "kv", "embed"),
        use_bias=False, deterministic=True)(norm()(x), mask=mask)
    x = x + y
    y = nn.Dense(self.mlp_dim, kernel_init=_logical(kernel, "embed", "mlp"),
                 bias_init=_logical(nn.initializers.zeros, "mlp"))(norm()(x))
    y = nn.Dense(x.shape[-1], kernel_init=_logical(kernel, "mlp", "embed"),
                 bias_init=_logical(nn.initializers.zeros, "embed"))(
                     nn.relu(y))
    return x + y


class TransformerLM(nn.Module):
  """lm1b's TransformerLM: shifted tokens, causal and padding masks, logits.

  Parameters are `nn.LogicallyPartitioned` (``nn.with_logical_partitioning``)
  but for the position embedding and the logits' kernel and bias, which are
  `nn.Partitioned` over mesh axes (``nn.with_partitioning``). lm1b names the
  attention's 3-D kernels with two axes, ``('embed', 'kv')``; here they have
  three, ``('embed', 'heads', 'kv')`` and ``('heads', 'kv', 'embed')``.
  """
  emb_dim: int = 16
  heads: int | Sequence[int] = 2
  head_dim: int | Sequence[int] = 8
  mlp: int | Sequence[int] = 32
  depth: int = 2
  vocab: int = VOCAB
  max_len: int = 16

  @nn.compact
  def __call__(self, tokens):
    mask = nn.combine_masks(nn.make_attention_mask(tokens > 0, tokens > 0),
                            nn.make_causal_mask(tokens))
    y = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]  # shift right
    y = nn.Embed(self.vocab, self.emb_dim, embedding_init=_logical(
        nn.initializers.normal(1.0), "vocab", "embed"))(y)
    pos = self.param("pos_embedding", nn.with_partitioning(
        nn.initializers.normal(0.02), (None, None, "model")),
                     (1, self.max_len, self.emb_dim))
    y = y + pos[:, :tokens.shape[1]]
    layers = zip(_per_layer(self.heads, self.depth),
                 _per_layer(self.head_dim, self.depth),
                 _per_layer(self.mlp, self.depth))
    for i, (heads, head_dim, mlp) in enumerate(layers):
      y = LmBlock(heads, head_dim, mlp, name=f"encoderdecoderblock_{i}")(
          y, mask)
    y = nn.LayerNorm(name="encoderdecoder_norm",
                     bias_init=_logical(nn.initializers.zeros, "embed"),
                     scale_init=_logical(nn.initializers.ones, "embed"))(y)
    return nn.Dense(
        self.vocab, name="logitdense",
        kernel_init=nn.with_partitioning(nn.initializers.xavier_uniform(),
                                         (None, "model")),
        bias_init=nn.with_partitioning(nn.initializers.zeros, ("model",)))(y)


# Plain models, with explicit names mixed with automatic ones.


class MLP(nn.Module):
  """Flatten, Dense-relu layers, Dense logits (all names automatic)."""
  features: Sequence[int] = (32, 16)
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for features in self.features:
      x = nn.relu(nn.Dense(features)(x))
    return nn.Dense(self.num_classes)(x)


class LeNet(nn.Module):
  """conv-BN-relu-pool twice, flatten, Dense-relu-dropout, Dense, logits.

  Names: ``conv1``, ``bn1``, then ``Conv_0``, ``BatchNorm_0``; ``fc1``,
  ``Dense_0``, ``logits``.
  """
  conv: Sequence[int] = (6, 16)
  dense: Sequence[int] = (32, 16)
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(self.conv[0], (5, 5), padding="SAME", name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn1")(x)
    x = nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = nn.Conv(self.conv[1], (5, 5), padding="VALID")(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.dense[0], name="fc1")(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.dense[1])(x))
    return nn.Dense(self.num_classes, name="logits")(x)


# NNX: the MNIST tutorial's CNN, an MLP with BatchNorm, residual blocks.


class NnxCNN(nnx.Module):
  """The CNN of Flax's NNX MNIST tutorial (at 16x16 and narrower)."""

  def __init__(self, conv=(8, 16), hidden=32, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, conv[0], kernel_size=(3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(conv[0], conv[1], kernel_size=(3, 3), rngs=rngs)
    self.avg_pool = functools.partial(nnx.avg_pool, window_shape=(2, 2),
                                      strides=(2, 2))
    self.linear1 = nnx.Linear(4 * 4 * conv[1], hidden, rngs=rngs)
    self.linear2 = nnx.Linear(hidden, NUM_CLASSES, rngs=rngs)

  def __call__(self, x):
    x = self.avg_pool(nnx.relu(self.conv1(x)))
    x = self.avg_pool(nnx.relu(self.conv2(x)))
    x = x.reshape(x.shape[0], -1)  # flatten
    x = nnx.relu(self.linear1(x))
    return self.linear2(x)


class NnxMLP(nnx.Module):
  """Linear-BatchNorm-dropout-relu, Linear (Flax's NNX basics example)."""

  def __init__(self, din=64, dmid=32, dout=NUM_CLASSES, *, rngs: nnx.Rngs):
    self.linear1 = nnx.Linear(din, dmid, rngs=rngs)
    self.bn = nnx.BatchNorm(dmid, rngs=rngs)
    self.dropout = nnx.Dropout(0.2, rngs=rngs)
    self.linear2 = nnx.Linear(dmid, dout, rngs=rngs)

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.dropout(self.bn(self.linear1(x))))
    return self.linear2(x)


class NnxResidualBlock(nnx.Module):
  """conv3x3-BN-relu-conv3x3-BN, identity shortcut, add, relu."""

  def __init__(self, channels, inner, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(channels, inner, (3, 3), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(inner, rngs=rngs)
    self.conv2 = nnx.Conv(inner, channels, (3, 3), use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(channels, rngs=rngs)

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return nnx.relu(x + y)


class NnxResNet(nnx.Module):
  """Stem conv-BN-relu, residual blocks (an `nnx.List`), pool, Linear."""

  def __init__(self, channels=8, inner=(8, 8), *, rngs: nnx.Rngs):
    self.stem = nnx.Conv(3, channels, (3, 3), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(channels, rngs=rngs)
    self.blocks = nnx.List(
        [NnxResidualBlock(channels, w, rngs=rngs) for w in inner])
    self.head = nnx.Linear(channels, NUM_CLASSES, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.stem(x)))
    for block in self.blocks:
      x = block(x)
    return self.head(jnp.mean(x, axis=(1, 2)))


def _draw(rng, name, shape, dtype):
  """One leaf drawn as `numpy_init.init` draws it."""
  last = name.rsplit("/", 1)[-1]
  if last in ("scale", "var"):
    values = rng.uniform(0.5, 1.5, shape)
  elif last in ("bias", "mean") or len(shape) < 2:
    values = 0.1 * rng.standard_normal(shape)
  else:
    values = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
  return np.asarray(values, dtype)


def nnx_init(make: Callable[[nnx.Rngs], nnx.Module], seed: int = 0):
  """``make(rngs)`` with numpy's values, in evaluation mode.

  The module is built under `nnx.eval_shape` (no array is computed), then
  its parameters and batch statistics are drawn as `numpy_init.init` draws
  them; random-key state (a `nnx.Dropout`'s stream) gets real keys.

  Args:
    make: builds the module from an `nnx.Rngs`.
    seed: numpy's seed.

  Returns:
    The module, after ``.eval()`` (BatchNorm uses its running averages,
    Dropout is deterministic).
  """
  graphdef, state = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(seed))))
  rng = np.random.default_rng(seed)

  def draw(name, leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return jax.random.key(seed)
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      return np.zeros(leaf.shape, leaf.dtype)
    return _draw(rng, name, leaf.shape, leaf.dtype)

  model = nnx.merge(graphdef, paths.map_with_name(draw, state))
  model.eval()
  return model


@dataclasses.dataclass(frozen=True)
class Case:
  """One model of the zoo.

  Attributes:
    name: the key in `CASES`.
    kind: ``'linen'`` or ``'nnx'``.
    build: ``build(**widths)`` returns the model: a Linen module, or an NNX
      module with values drawn by numpy (NNX builds also take ``seed``).
      Every width has a default (`widths`).
    example: returns the example batch (numpy, batch 2): float32 NHWC images
      or int32 token ids.
    output_shape: the shape of the model's output on `example`.
    apply_kwargs: keyword arguments of a Linen ``apply`` (``train=False``
      where the model has BatchNorm or Dropout).
    collections: the Linen variables' collections.
    tags: the structures the model has: ``'residual'``, ``'batchnorm'``,
      ``'depthwise'``, ``'grouped'``, ``'squeeze_excite'``, ``'concat'``,
      ``'attention'``, ``'flax_attention'``, ``'embed'``, ``'scan'``,
      ``'remat'``, ``'partitioned'``, ``'flatten'``, ``'dropout'``.
  """
  name: str
  kind: str
  build: Callable[..., Any]
  example: Callable[[], np.ndarray]
  output_shape: tuple[int, ...]
  apply_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  collections: tuple[str, ...] = ("params",)
  tags: frozenset[str] = frozenset()

  @property
  def widths(self) -> dict[str, Any]:
    """The width arguments of `build` and their defaults."""
    return {name: p.default
            for name, p in inspect.signature(self.build).parameters.items()
            if name != "seed"}


def images(height, width, channels):
  """Returns ``example()`` for a batch of 2 float32 images, NHWC."""
  def example():
    rng = np.random.default_rng(1)
    return rng.standard_normal((2, height, width, channels)).astype(np.float32)
  return example


def tokens():
  """A batch of 2 int32 token sequences, ids in ``[1, VOCAB)``."""
  return np.random.default_rng(1).integers(1, VOCAB, (2, TOKENS), np.int32)


def resnet18(widths=(8, 16), inner=(8, 16)):
  """Two stages of one BasicBlock: identity shortcut, then projection /2.

  Args:
    widths: the stages' output widths (the stem's is the first).
    inner: each block's first conv's width.
  """
  return ResNet(stage_sizes=(1, 1), block_cls=BasicBlock, stem=widths[0],
                widths=widths, inner=inner)


def resnet50(stem=8, widths=(16, 32), inner=((4, 4), (4, 4), (8, 8))):
  """Bottlenecks: stage 1 of two (projection, identity), stage 2 of one (/2).

  Args:
    stem: the stem conv's width.
    widths: the stages' output widths (4 x the inner widths by default).
    inner: each block's 1x1 and 3x3 widths.
  """
  return ResNet(stage_sizes=(2, 1), block_cls=Bottleneck, stem=stem,
                widths=widths, inner=inner)


def mobilenet(stem=8, separable=16, hidden=(32, 32), out=24, head=32):
  """Separable block, inverted residual (adds), inverted residual /2.

  Args:
    stem: the stem conv's width (and the first depthwise conv's).
    separable: the separable block's output width, which the first inverted
      residual keeps (its shortcut adds).
    hidden: the inverted residuals' expanded widths.
    out: the second inverted residual's output width.
    head: the 1x1 head conv's width.
  """
  return MobileNet(stem, separable, hidden, out, head)


def regnet(widths=(16, 32), bottleneck=(16, 32), se=(4, 4)):
  """Two blocks: identity shortcut, then projection /2; convs of 4 groups.

  Args:
    widths: the blocks' output widths (the stem's is the first).
    bottleneck: the blocks' inner widths, multiples of the 4 groups.
    se: the squeeze-excitations' reduced widths.
  """
  return RegNet(widths, bottleneck, se, groups=4)


def densenet(stem=8, growth=(4, 4, 4), bottleneck=(16, 16, 16),
             transition=12):
  """A dense block of three layers, the transition, the head.

  Args:
    stem: the stem conv's width.
    growth: each layer's 3x3 conv's width (what it concatenates).
    bottleneck: each layer's 1x1 conv's width.
    transition: the transition's 1x1 conv's width.
  """
  return DenseNet(stem, growth, bottleneck, transition)


def vit(hidden=16, heads=2, head_dim=8, mlp=32):
  """ViT on 8x8 images, patches of 4: 4 patches and a CLS token, depth 2.

  ``heads``, ``head_dim`` and ``mlp`` are an int or one per block.
  """
  return ViT(patch=4, hidden=hidden, heads=heads, head_dim=head_dim, mlp=mlp)


def bert(hidden=16, heads=2, head_dim=8, mlp=32):
  """``heads``, ``head_dim`` and ``mlp`` are an int or one per block."""
  return Bert(hidden=hidden, heads=heads, head_dim=head_dim, mlp=mlp)


def scanned_mlp(features=16, hidden=32):
  """Three scanned layers: one ``hidden`` for all (their kernels stack)."""
  return ScannedMlp(features, hidden, layers=3)


def remat_mlp(features=16, hidden=(32, 32)):
  """Two rematerialized residual MLPs, of hidden widths ``hidden``."""
  return RematMlp(features, hidden)


def lm1b(emb_dim=16, heads=2, head_dim=8, mlp=32):
  """``heads``, ``head_dim`` and ``mlp`` are an int or one per block."""
  return TransformerLM(emb_dim=emb_dim, heads=heads, head_dim=head_dim,
                       mlp=mlp)


def mlp(features=(32, 16)):
  """Hidden layers of widths ``features``."""
  return MLP(features)


def lenet(conv=(6, 16), dense=(32, 16)):
  """On 16x16 images: ``conv`` widths, then ``dense`` widths."""
  return LeNet(conv, dense)


def nnx_cnn(conv=(8, 16), hidden=32, *, seed=0):
  """On 16x16 images: the two convs' widths and the hidden Linear's."""
  return nnx_init(lambda rngs: NnxCNN(conv, hidden, rngs=rngs), seed)


def nnx_mlp(dmid=32, *, seed=0):
  """On 8x8 images (64 inputs): ``dmid`` the hidden width."""
  return nnx_init(lambda rngs: NnxMLP(64, dmid, rngs=rngs), seed)


def nnx_resnet(channels=8, inner=(8, 8), *, seed=0):
  """Residual stream of ``channels``, blocks of inner widths ``inner``."""
  return nnx_init(lambda rngs: NnxResNet(channels, inner, rngs=rngs), seed)


_EVAL = types.MappingProxyType({"train": False})
_BN = ("batch_stats", "params")
_LOGITS = (2, NUM_CLASSES)

CASES: dict[str, Case] = {c.name: c for c in [
    Case("resnet18", "linen", resnet18, images(16, 16, 3), _LOGITS, _EVAL,
         _BN, frozenset({"residual", "batchnorm"})),
    Case("resnet50", "linen", resnet50, images(16, 16, 3), _LOGITS, _EVAL,
         _BN, frozenset({"residual", "batchnorm"})),
    Case("mobilenet", "linen", mobilenet, images(16, 16, 3), _LOGITS, _EVAL,
         _BN, frozenset({"residual", "batchnorm", "depthwise"})),
    Case("regnet", "linen", regnet, images(16, 16, 3), _LOGITS, _EVAL, _BN,
         frozenset({"residual", "batchnorm", "grouped", "squeeze_excite"})),
    Case("densenet", "linen", densenet, images(16, 16, 3), _LOGITS, _EVAL,
         _BN, frozenset({"batchnorm", "concat"})),
    Case("vit", "linen", vit, images(8, 8, 3), _LOGITS,
         tags=frozenset({"residual", "attention", "flax_attention",
                         "concat"})),
    Case("bert", "linen", bert, tokens, _LOGITS,
         tags=frozenset({"residual", "attention", "embed"})),
    Case("scanned_mlp", "linen", scanned_mlp, images(8, 8, 1), _LOGITS,
         tags=frozenset({"residual", "scan", "flatten"})),
    Case("remat_mlp", "linen", remat_mlp, images(8, 8, 1), _LOGITS, _EVAL,
         tags=frozenset({"residual", "remat", "flatten", "dropout"})),
    Case("lm1b", "linen", lm1b, tokens, (2, TOKENS, VOCAB),
         tags=frozenset({"residual", "attention", "flax_attention", "embed",
                         "partitioned"})),
    Case("mlp", "linen", mlp, images(8, 8, 1), _LOGITS,
         tags=frozenset({"flatten"})),
    Case("lenet", "linen", lenet, images(16, 16, 1), _LOGITS, _EVAL, _BN,
         frozenset({"batchnorm", "flatten", "dropout"})),
    Case("nnx_cnn", "nnx", nnx_cnn, images(16, 16, 1), _LOGITS,
         collections=(), tags=frozenset({"flatten"})),
    Case("nnx_mlp", "nnx", nnx_mlp, images(8, 8, 1), _LOGITS,
         collections=(), tags=frozenset({"batchnorm", "flatten", "dropout"})),
    Case("nnx_resnet", "nnx", nnx_resnet, images(16, 16, 3), _LOGITS,
         collections=(), tags=frozenset({"residual", "batchnorm"})),
]}


def case(name: str) -> Case:
  """The case named ``name`` (a `KeyError` names the known ones)."""
  try:
    return CASES[name]
  except KeyError:
    raise KeyError(f"no zoo case {name!r}; known: {sorted(CASES)}") from None


def variables(c: Case | str, seed: int = 0, **widths) -> dict[str, Any]:
  """A Linen case's variables, drawn by numpy (`numpy_init.init`).

  Args:
    c: a case or its name.
    seed: numpy's seed.
    **widths: widths passed to ``c.build``.

  Returns:
    ``{collection: tree}`` shaped as ``c.build(**widths).init`` returns it
    (boxed parameters stay boxed).
  """
  c = case(c) if isinstance(c, str) else c
  if c.kind != "linen":
    raise ValueError(f"{c.name} is an NNX case: its build draws its values")
  module = c.build(**widths)
  # numpy_init passes keyword arguments through `jax.eval_shape`, which
  # would trace ``train``; they are bound here instead.
  bound = types.SimpleNamespace(
      init=functools.partial(module.init, **c.apply_kwargs))
  return numpy_init.init(bound, c.example(), seed=seed)


def forward(c: Case | str, seed: int = 0, **widths) -> jax.Array:
  """The output of a case's model, freshly drawn, on its example.

  A Linen model runs under `jax.jit`: on CPU its compilation (0.1 to 0.5 s
  here) costs less than the first eager run, which compiles every operation
  on its own (0.2 to 1.7 s). An NNX model runs eagerly.

  Args:
    c: a case or its name.
    seed: numpy's seed for the values.
    **widths: widths passed to ``c.build``.

  Returns:
    The model's output on ``c.example()``, of shape ``c.output_shape`` at
    the default widths.
  """
  c = case(c) if isinstance(c, str) else c
  if c.kind == "nnx":
    return c.build(seed=seed, **widths)(c.example())
  apply = functools.partial(c.build(**widths).apply, **c.apply_kwargs)
  return jax.jit(apply)(variables(c, seed, **widths), c.example())


def functional(name: str, **widths: Any):
  """A case as ``apply_fn(variables, x)``, with its variables and example.

  Linen models get ``apply`` with the case's keyword arguments bound; NNX
  models go through `sparsify.flops.nnx_apply` (their state is the
  variables).

  Args:
    name: a key of `CASES`.
    **widths: the build's widths (defaults if none).

  Returns:
    ``(case, apply_fn, variables, x)``, ``x`` a jax array.
  """
  from sparsify import flops  # pylint: disable=g-import-not-at-top
  case = CASES[name]
  if case.kind == "nnx":
    apply_fn, values = flops.nnx_apply(case.build(**widths))
  else:
    apply_fn = functools.partial(case.build(**widths).apply,
                                 **case.apply_kwargs)
    values = variables(case, **widths)
  return case, apply_fn, values, jnp.asarray(case.example())


def random_keep(units, seed: int = 0) -> dict[str, np.ndarray]:
  """About half of each unit's elements, at random, at least one.

  Args:
    units: units of `sparsify.structure_of` (or some of them).
    seed: of the draw.

  Returns:
    ``{unit name: boolean array}``.
  """
  rng = np.random.default_rng(seed)
  keep = {}
  for u in units:
    k = rng.random(u.size) < 0.5
    k[rng.integers(u.size)] = True
    keep[u.name] = k
  return keep
