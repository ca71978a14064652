"""Flax Linen image classifiers, looked up by name from a config.

Every model maps NHWC float32 images to logits ``(N, num_classes)`` with
``model.apply(variables, x, train=False)``. Models with BatchNorm keep running
statistics in the ``batch_stats`` collection: train with
``model.apply(variables, x, train=True, mutable=['batch_stats'])``. Dense and
Conv weights are named ``kernel`` and every classifier layer ``head``.
"""

from collections.abc import Callable
import inspect
import math
from typing import Any

import flax.linen as nn
import jax

from sparsify.core.types import Params
from sparsify.models.lenet import LeNet5
from sparsify.models.mlp import lenet_300_100
from sparsify.models.mlp import MLP
from sparsify.models.resnet import BasicBlock
from sparsify.models.resnet import BottleneckBlock
from sparsify.models.resnet import ResidualBlock
from sparsify.models.resnet import ResNet
from sparsify.models.vgg import ConvBNReLU
from sparsify.models.vgg import VGG
from sparsify.models.vgg import vgg_stages

__all__ = [
    "BasicBlock",
    "BottleneckBlock",
    "ConvBNReLU",
    "LeNet5",
    "MLP",
    "MODELS",
    "ResNet",
    "ResidualBlock",
    "VGG",
    "count_params",
    "get_model",
    "lenet_300_100",
    "vgg",
    "vgg_stages",
]


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


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "lenet_300_100": lenet_300_100,
    "mlp": MLP,
    "resnet": ResNet,
    "vgg": vgg,
}


def _arguments(factory: Callable[..., nn.Module]) -> list[str]:
  """Returns the keyword arguments a model factory accepts."""
  names = inspect.signature(factory).parameters
  return sorted(n for n in names if n not in ("parent", "name"))


def _to_tuples(value: Any) -> Any:
  """Turns (nested) lists into tuples, so that module fields are hashable."""
  if isinstance(value, (list, tuple)):
    return tuple(_to_tuples(v) for v in value)
  return value


def get_model(name: str, *, num_classes: int = 10, **kwargs: Any) -> nn.Module:
  """Returns the model registered in `MODELS` under ``name``.

  Args:
    name: One of ``lenet5``, ``lenet_300_100``, ``mlp``, ``resnet``, ``vgg``.
    num_classes: Number of output logits.
    **kwargs: Further arguments of the model, e.g. ``depth=20`` for
      ``resnet`` or ``stages=[[64], [128]]`` for ``vgg``; lists become tuples.

  Returns:
    The Flax module (not yet initialised).

  Raises:
    ValueError: for an unknown model name or argument, or an invalid value.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sparsify import models
    >>> model = models.get_model('resnet', depth=20, num_classes=100)
    >>> type(model).__name__, model.blocks_per_stage
    ('ResNet', 3)
    >>> x = jnp.ones((1, 32, 32, 3))
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
    >>> variables['params']['head']['kernel'].shape
    (64, 100)
  """
  if name not in MODELS:
    raise ValueError(f"model.name: unknown model {name!r}; allowed: "
                     f"{', '.join(sorted(MODELS))}")
  factory = MODELS[name]
  allowed = _arguments(factory)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(
        f"model: unknown argument(s) {', '.join(map(repr, unknown))} for "
        f"model {name!r}; allowed: {', '.join(allowed)}")
  kwargs = {k: _to_tuples(v) for k, v in kwargs.items()}
  return factory(num_classes=num_classes, **kwargs)


def count_params(params: Params) -> int:
  """Returns the number of scalars in a pytree of arrays.

  Works on arrays and on `jax.ShapeDtypeStruct` leaves (from
  `jax.eval_shape`), so a model can be counted without allocating it.

  Args:
    params: A pytree of arrays, e.g. ``variables['params']``.

  Returns:
    The sum of the leaves' sizes.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sparsify import models
    >>> models.count_params({'Dense_0': {'kernel': jnp.ones((3, 2)),
    ...                                  'bias': jnp.ones(2)}})
    8
    >>> model = models.get_model('lenet5')
    >>> shapes = jax.eval_shape(model.init, jax.random.key(0),
    ...                         jnp.ones((1, 28, 28, 1)))
    >>> models.count_params(shapes['params'])  # nothing allocated
    431080
  """
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
