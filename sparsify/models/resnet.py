"""CIFAR ResNets (He et al. 2016) with basic or bottleneck blocks.

With ``block_gates``, a scale factor multiplies each residual branch, and
`ResNet.remove_blocks` removes the branches whose factor is zero (SSS at the
level of blocks); channels are found by `sparsify.structure_of` like those of
any model.
"""

from typing import Any, ClassVar

import flax
import flax.linen as nn
import jax
import numpy as np

from sparsify.models.vgg import batch_norm
from sparsify.models.vgg import conv_init
from sparsify.structure.gates import Gate


def _conv(features: int, size: int, strides: int, name: str) -> nn.Conv:
  return nn.Conv(features, (size, size), strides=(strides, strides),
                 padding="SAME", use_bias=False, kernel_init=conv_init,
                 name=name)


class ResidualBlock(nn.Module):
  """A residual block: ``relu(residual(x) + shortcut(x))``.

  Subclasses define the residual branch in `residual`. The shortcut is the
  identity when the branch keeps the shape of ``x``, else a projection
  (1x1 conv with the block's stride, no bias, then BatchNorm) named
  ``shortcut_conv`` / ``shortcut_bn``.

  Attributes:
    features: Inner width of the block; it outputs
      ``features * expansion`` channels.
    strides: Stride of the block (1 or 2).
    block_gate: scale the residual branch by a scalar `Gate`
      (``block_gate/gate``) before the shortcut is added; at zero the block
      reduces to its shortcut.
    channel_gates: per-channel `Gate` after each inner relu of the branch
      (``gate1/gate``, ...).
    inner: widths of the inner layers of the branch (one for a basic block,
      two for a bottleneck), as left by surgery; ``None``: ``features``.
    branch: ``False`` for a block whose residual branch surgery removed (its
      gate was zero): the block is ``relu(shortcut(x))``.
  """

  features: int
  strides: int = 1
  block_gate: bool = False
  channel_gates: bool = False
  inner: tuple[int, ...] | None = None
  branch: bool = True

  def inner_width(self, index: int) -> int:
    """Width of inner layer ``index`` (from 1): ``features`` unless slimmed.

    Args:
      index: which inner layer of the branch, from 1.

    Returns:
      ``inner[index - 1]`` if ``inner`` is set, else ``features``.
    """
    return self.features if self.inner is None else self.inner[index - 1]
  expansion: ClassVar[int] = 1

  @property
  def out_features(self) -> int:
    """Number of channels the block outputs."""
    return self.features * self.expansion

  def residual(self, x: jax.Array, train: bool) -> jax.Array:
    """Returns the residual branch, before the addition and the relu.

    Args:
      x: the block's input, ``(N, H, W, C)``.
      train: whether BatchNorm uses (and updates) batch statistics.

    Returns:
      The branch's output, ``(N, H / strides, W / strides, out_features)``.
    """
    raise NotImplementedError

  def shortcut(self, x: jax.Array, train: bool) -> jax.Array:
    """Returns ``x`` or its projection to the branch's output shape.

    Args:
      x: the block's input, ``(N, H, W, C)``.
      train: whether the projection's BatchNorm uses batch statistics.

    Returns:
      ``x`` itself when ``strides == 1`` and ``C == out_features``, else
      ``shortcut_bn(shortcut_conv(x))`` of the branch's output shape.
    """
    if self.strides == 1 and x.shape[-1] == self.out_features:
      return x
    x = _conv(self.out_features, 1, self.strides, "shortcut_conv")(x)
    return batch_norm(train, name="shortcut_bn")(x)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns ``relu(residual(x) + shortcut(x))``."""
    if not self.branch:
      return nn.relu(self.shortcut(x, train))
    branch = self.residual(x, train)
    if self.block_gate:
      branch = Gate("block", name="block_gate")(branch)
    return nn.relu(branch + self.shortcut(x, train))

  def inner_gate(self, x: jax.Array, index: int) -> jax.Array:
    """A per-channel gate after an inner relu, if ``channel_gates``.

    Args:
      x: the activations after inner relu ``index``.
      index: which inner layer, from 1; names the gate ``gate{index}``.

    Returns:
      ``x`` scaled by the gate ``gate{index}`` if ``channel_gates``, else
      ``x``.
    """
    return Gate(name=f"gate{index}")(x) if self.channel_gates else x


class BasicBlock(ResidualBlock):
  """Residual branch ``conv3x3-BN-relu-conv3x3-BN`` (``conv1``, ``bn1``, ...).

  The stride is on ``conv1``.
  """

  expansion: ClassVar[int] = 1

  def residual(self, x: jax.Array, train: bool) -> jax.Array:
    """Returns the residual branch, before the addition and the relu.

    Args:
      x: the block's input, ``(N, H, W, C)``.
      train: whether BatchNorm uses (and updates) batch statistics.

    Returns:
      ``bn2(conv2(relu(bn1(conv1(x)))))``, ``features`` channels.
    """
    x = _conv(self.inner_width(1), 3, self.strides, "conv1")(x)
    x = self.inner_gate(nn.relu(batch_norm(train, name="bn1")(x)), 1)
    x = _conv(self.features, 3, 1, "conv2")(x)
    return batch_norm(train, name="bn2")(x)


class BottleneckBlock(ResidualBlock):
  """Residual branch ``1x1-BN-relu-3x3-BN-relu-1x1-BN`` with 4x expansion.

  Layers ``conv1``/``bn1`` (1x1, ``features``), ``conv2``/``bn2`` (3x3,
  ``features``, carries the stride) and ``conv3``/``bn3`` (1x1,
  ``4 * features``).
  """

  expansion: ClassVar[int] = 4

  def residual(self, x: jax.Array, train: bool) -> jax.Array:
    """Returns the residual branch, before the addition and the relu.

    Args:
      x: the block's input, ``(N, H, W, C)``.
      train: whether BatchNorm uses (and updates) batch statistics.

    Returns:
      The output of ``bn3(conv3(...))``, ``4 * features`` channels.
    """
    x = _conv(self.inner_width(1), 1, 1, "conv1")(x)
    x = self.inner_gate(nn.relu(batch_norm(train, name="bn1")(x)), 1)
    x = _conv(self.inner_width(2), 3, self.strides, "conv2")(x)
    x = self.inner_gate(nn.relu(batch_norm(train, name="bn2")(x)), 2)
    x = _conv(self.out_features, 1, 1, "conv3")(x)
    return batch_norm(train, name="bn3")(x)


BLOCKS: dict[str, type[ResidualBlock]] = {
    "basic": BasicBlock,
    "bottleneck": BottleneckBlock,
}

# depth = per_block * n + 2, where per_block is the number of layers per block.
_LAYERS_PER_BLOCK = {"basic": 2, "bottleneck": 3}
_DEPTH_EXAMPLES = {"basic": "20, 32, 44, 56, 110",
                   "bottleneck": "29, 47, 110, 164, 1001"}


class ResNet(nn.Module):
  """The CIFAR ResNet: a 3x3 stem and three stages of residual blocks.

  Stem ``stem_conv`` (3x3, ``width`` channels, no bias) + ``stem_bn`` + relu;
  then three stages of ``n`` blocks each, of inner widths ``width``,
  ``2 * width`` and ``4 * width``, the first block of stages 2 and 3 with
  stride 2; then global average pooling and ``head`` (``Dense``). Block ``i``
  (from 0) of stage ``s`` (from 1) is named ``block{s}_{i}``.
  ``n = (depth - 2) / 6`` for basic blocks, ``(depth - 2) / 9`` for
  bottleneck blocks.

  Attributes:
    depth: Number of weighted layers: 6n+2 (basic) or 9n+2 (bottleneck).
    block: ``'basic'`` or ``'bottleneck'``.
    width: Channels of the stem and inner width of the first stage.
    num_classes: Number of output logits.
    block_gates: a scalar `Gate` on every residual branch.
    channel_gates: per-channel `Gate` inside every residual branch.
    inner_widths: per block (stage by stage), the widths of its inner
      layers after surgery; ``None`` for the standard widths.
    block_plan: per block, ``'full'``, ``'shortcut'`` (branch removed,
      projection kept) or ``'none'`` (removed), as left by surgery.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sparsify import models
    >>> model = models.ResNet(depth=20)
    >>> x = jnp.ones((8, 32, 32, 3))
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
    >>> model.blocks_per_stage, models.count_params(variables['params'])
    (3, 272474)
    >>> def train_apply(variables, x):  # BatchNorm on batch statistics
    ...   return model.apply(variables, x, train=True, mutable=['batch_stats'])
    >>> logits, updates = jax.eval_shape(train_apply, variables, x)
    >>> logits.shape, list(updates)
    ((8, 10), ['batch_stats'])

  Reference: He, Zhang, Ren, Sun, "Deep Residual Learning for Image
  Recognition", CVPR 2016 (section 4.2), and "Identity Mappings in Deep
  Residual Networks", ECCV 2016, for the bottleneck depths.
  """

  depth: int = 20
  block: str = "basic"
  width: int = 16
  num_classes: int = 10
  block_gates: bool = False
  channel_gates: bool = False
  inner_widths: tuple[tuple[int, ...], ...] | None = None
  block_plan: tuple[str, ...] | None = None

  def __post_init__(self):
    if self.block_plan is not None:
      self.block_plan = tuple(self.block_plan)
    if self.inner_widths is not None:
      self.inner_widths = tuple(tuple(int(w) for w in b)
                                for b in self.inner_widths)
    if self.block not in BLOCKS:
      allowed = ", ".join(sorted(BLOCKS))
      raise ValueError(
          f"ResNet block must be one of {allowed}; got {self.block!r}")
    per_block = 3 * _LAYERS_PER_BLOCK[self.block]
    if self.depth < per_block + 2 or (self.depth - 2) % per_block:
      raise ValueError(
          f"ResNet depth for block={self.block!r} must be {per_block}n+2 with"
          f" n >= 1 (e.g. {_DEPTH_EXAMPLES[self.block]}); got {self.depth!r}")
    super().__post_init__()

  @property
  def blocks_per_stage(self) -> int:
    """The number ``n`` of residual blocks in each of the three stages."""
    return (self.depth - 2) // (3 * _LAYERS_PER_BLOCK[self.block])

  def remove_blocks(
      self, variables: dict[str, Any], threshold: float = 0.0
  ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    r"""Removes the residual branches whose block gate is zero.

    A branch with :math:`|\lambda| \le` ``threshold`` is removed: a block
    with an identity shortcut disappears (its input is the output of a
    relu, so ``relu(x) = x``), a block with a projection shortcut keeps only
    it. A surviving :math:`\lambda` is folded into the branch's last
    BatchNorm (scale and shift times :math:`\lambda`) and the gate
    removed, so the model of the new fields computes what the gated one did.
    The post-training ``slim`` stage calls it before removing channels.

    Args:
      variables: variables of this model.
      threshold: gates at or below it (in magnitude) remove their branch.

    Returns:
      ``(variables, fields)``: the variables without block gates (numpy
      arrays) and the fields to build the model they fit with
      (``block_gates=False`` and the ``block_plan`` saying which branches
      are gone); None when the model has no block gates.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from sparsify.models import resnet
      >>> model = resnet.ResNet(depth=8, width=4, block_gates=True)
      >>> shapes = jax.eval_shape(model.init, jax.random.key(0),
      ...                         jnp.ones((1, 8, 8, 3)))
      >>> variables = jax.tree.map(lambda s: jnp.ones(s.shape), shapes)
      >>> variables['params']['block2_0']['block_gate']['gate'] = jnp.zeros(
      ...     ())
      >>> slim, fields = model.remove_blocks(variables)
      >>> fields['block_plan'], sorted(slim['params']['block2_0'])
      (('full', 'shortcut', 'full'), ['shortcut_bn', 'shortcut_conv'])
      >>> resnet.ResNet(depth=8).remove_blocks(variables) is None
      True
    """
    return _remove_blocks(self, variables, threshold)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns logits of shape ``(N, num_classes)`` for NHWC images."""
    x = _conv(self.width, 3, 1, "stem_conv")(x)
    x = nn.relu(batch_norm(train, name="stem_bn")(x))
    block = BLOCKS[self.block]
    for s in range(3):
      for i in range(self.blocks_per_stage):
        strides = 2 if s > 0 and i == 0 else 1
        k = s * self.blocks_per_stage + i
        plan = "full" if self.block_plan is None else self.block_plan[k]
        if plan == "none":  # removed: an identity block on x >= 0
          continue
        inner = None if self.inner_widths is None else self.inner_widths[k]
        x = block(self.width * 2**s, strides, block_gate=self.block_gates,
                  channel_gates=self.channel_gates, inner=inner,
                  branch=plan == "full", name=f"block{s + 1}_{i}")(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


def _block_names(model: ResNet) -> list[str]:
  """Names of the blocks, stage by stage, in `ResNet`'s order."""
  return [f"block{s + 1}_{i}" for s in range(3)
          for i in range(model.blocks_per_stage)]


def _plan(model: ResNet) -> tuple[str, ...]:
  names = _block_names(model)
  return model.block_plan or ("full",) * len(names)


def _remove_blocks(
    model: "ResNet", variables: dict[str, Any], threshold: float
) -> tuple[dict[str, Any], dict[str, Any]] | None:
  """`ResNet.remove_blocks`."""
  if not model.block_gates:
    return None
  out = flax.core.unfreeze(jax.tree.map(np.asarray, variables))
  params = out["params"]
  last_bn = f"bn{_LAYERS_PER_BLOCK[model.block]}"
  plan = list(_plan(model))
  for n, b in enumerate(_block_names(model)):
    if plan[n] != "full":
      continue
    gate = params[b].pop("block_gate")["gate"]
    if abs(float(gate)) > threshold:
      bn = params[b][last_bn]
      bn["scale"], bn["bias"] = bn["scale"] * gate, bn["bias"] * gate
      continue
    projection = "shortcut_conv" in params[b]
    plan[n] = "shortcut" if projection else "none"
    for collection in out.values():
      kept = {k: v for k, v in collection.pop(b, {}).items()
              if projection and k.startswith("shortcut_")}
      if kept:
        collection[b] = kept
  out = {c: tree for c, tree in out.items() if tree}
  return out, {"block_gates": False, "block_plan": tuple(plan)}
