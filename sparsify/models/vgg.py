"""VGG with BatchNorm for small images (CIFAR-10, MNIST), and its channels."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from sparsify.models.layers import max_pool_2x2
from sparsify.structure.gates import Gate

# Conv channels per stage of the standard VGG configurations (A, B, D, E).
_VGG_STAGES = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
         (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512),
         (512, 512, 512, 512)),
}


def vgg_stages(depth: int) -> tuple[tuple[int, ...], ...]:
  """Returns the conv channels per stage of VGG-``depth``.

  Args:
    depth: 11, 13, 16 or 19 (configurations A, B, D and E of the paper).

  Returns:
    One tuple of channel counts per stage, e.g. ``((64,), (128,), ...)``.

  Raises:
    ValueError: if ``depth`` is not one of the standard depths.

  Example:
    >>> from sparsify import models
    >>> stages = models.vgg_stages(16)
    >>> [len(stage) for stage in stages], stages[-1]
    ([2, 2, 3, 3, 3], (512, 512, 512))
    >>> model = models.VGG(stages=stages)

  Reference: Simonyan, Zisserman, "Very Deep Convolutional Networks for
  Large-Scale Image Recognition", ICLR 2015.
  """
  if depth not in _VGG_STAGES:
    allowed = ", ".join(str(d) for d in sorted(_VGG_STAGES))
    raise ValueError(f"VGG depth must be one of {allowed}; got {depth!r}")
  return _VGG_STAGES[depth]


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  """Returns the BatchNorm used by the convolutional models.

  Momentum 0.9 and epsilon 1e-5, the values of the PyTorch and Caffe
  reference implementations.

  Args:
    train: normalize with the batch's statistics and update the running ones
      (True), or with the running statistics (False).
    name: the module's name, e.g. ``'bn1'``.

  Returns:
    A `flax.linen.BatchNorm` module.
  """
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


# He et al. 2015 initialisation, as usual for ReLU conv nets.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvBNReLU(nn.Module):
  """A 3x3 SAME convolution without bias, then BatchNorm, then relu.

  Parameters: ``conv/kernel``, ``bn/scale``, ``bn/bias``; running statistics
  ``bn/mean`` and ``bn/var`` live in the ``batch_stats`` collection.

  Attributes:
    features: Number of output channels.
    gate: put a per-channel `Gate` (``gate/gate``) after the relu.
  """

  features: int
  gate: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns the activations ``(N, H, W, features)``."""
    x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False,
                kernel_init=conv_init, name="conv")(x)
    x = nn.relu(batch_norm(train, name="bn")(x))
    return Gate(name="gate")(x) if self.gate else x


class VGG(nn.Module):
  """VGG with BatchNorm and a global-average-pool classifier.

  Each conv is a `ConvBNReLU` block named ``block{stage}_{index}`` (stage
  from 1, index from 0, e.g. ``block2_0/conv/kernel``); a 2x2 / 2 max pool
  follows every stage; then the features are averaged over space and fed to
  ``head`` (``Dense(num_classes)``). A conv with nominal ``c`` channels has
  ``max(1, round(c * width))``.

  Pooling never shrinks a spatial axis to 0: along an axis whose size is
  already 1 the pool has window and stride 1 (that axis is not pooled), so
  deep configurations run on 28x28 inputs (28 -> 14 -> 7 -> 3 -> 1 -> 1).
  Odd sizes are floored as with VALID pooling (7 -> 3).

  Attributes:
    stages: Conv channels per stage; see `vgg_stages` for VGG-11/13/16/19.
      Lists are accepted and stored as tuples.
    width: Multiplier on every channel count.
    num_classes: Number of output logits.
    gates: a per-channel `Gate` after every conv block.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sparsify import models
    >>> model = models.VGG(stages=((16,), (32, 32)), width=0.5)
    >>> x = jnp.ones((8, 28, 28, 1))
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
    >>> variables['params']['block2_1']['conv']['kernel'].shape
    (3, 3, 16, 16)
    >>> def train_apply(variables, x):  # BatchNorm on batch statistics
    ...   return model.apply(variables, x, train=True, mutable=['batch_stats'])
    >>> logits, updates = jax.eval_shape(train_apply, variables, x)
    >>> logits.shape, list(updates)
    ((8, 10), ['batch_stats'])

  Reference: Simonyan, Zisserman, "Very Deep Convolutional Networks for
  Large-Scale Image Recognition", ICLR 2015.
  """

  stages: Sequence[Sequence[int]] = ((64, 64), (128, 128), (256, 256, 256))
  width: float = 1.0
  num_classes: int = 10
  gates: bool = False

  def __post_init__(self):
    self.stages = tuple(tuple(int(c) for c in stage) for stage in self.stages)
    if not self.stages or not all(self.stages):
      raise ValueError(f"VGG stages must be non-empty; got {self.stages}")
    if self.width <= 0:
      raise ValueError(f"VGG width must be positive; got {self.width}")
    super().__post_init__()

  def channels(self, c: int) -> int:
    """Returns the number of channels used for a nominal count ``c``.

    Args:
      c: a channel count of ``stages``.

    Returns:
      ``max(1, round(c * width))``.
    """
    return max(1, round(c * self.width))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns logits of shape ``(N, num_classes)`` for NHWC images."""
    for s, stage in enumerate(self.stages):
      for i, c in enumerate(stage):
        x = ConvBNReLU(self.channels(c), gate=self.gates,
                       name=f"block{s + 1}_{i}")(x, train)
      x = max_pool_2x2(x)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


def vgg(
    *,
    depth: int | None = None,
    stages: Any = None,
    width: float = 1.0,
    num_classes: int = 10,
    gates: bool = False,
) -> VGG:
  """Returns a `VGG` given either a standard ``depth`` or explicit ``stages``.

  Args:
    depth: 11, 13, 16 or 19 for the standard configurations; see `vgg_stages`.
    stages: Conv channels per stage; the `VGG` default when both are None.
    width: Multiplier on every channel count.
    gates: a per-channel `Gate` after every conv block.
    num_classes: Number of output logits.

  Returns:
    The `VGG` module.

  Raises:
    ValueError: both ``depth`` and ``stages`` are given, or ``depth`` is not
      a standard depth.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sparsify import models
    >>> model = models.vgg(depth=16, width=0.5)
    >>> model.stages[:2], model.channels(64)
    (((64, 64), (128, 128)), 32)
    >>> x = jnp.ones((1, 32, 32, 3))
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
    >>> models.count_params(variables['params'])
    3684842
  """
  if depth is not None and stages is not None:
    raise ValueError("vgg: give either depth or stages, not both")
  kwargs = {} if stages is None else {"stages": stages}
  if depth is not None:
    kwargs["stages"] = vgg_stages(depth)
  return VGG(width=width, num_classes=num_classes, gates=gates, **kwargs)
