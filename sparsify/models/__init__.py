"""Flax Linen image classifiers, looked up by name from a config.

Every model maps NHWC float32 images to logits ``(N, num_classes)`` with
``model.apply(variables, x, train=False)``. Models with BatchNorm keep running
statistics in the ``batch_stats`` collection: train with
``model.apply(variables, x, train=True, mutable=['batch_stats'])``. Dense and
Conv weights are named ``kernel`` and every classifier layer ``head``.

Each model's module also says what surgery needs to know of it: its
removable units (`structure`), the arguments of the model left after
removing some (`slimmed_kwargs`), and removable blocks (`remove_blocks`);
`MODELS` maps each name to a `ModelEntry` of these.
"""

from collections.abc import Callable
import dataclasses
import inspect
import math
from typing import Any

import flax.linen as nn
import jax

from sparsify.core.types import Params
from sparsify.models import lenet
from sparsify.models import mlp
from sparsify.models import resnet
from sparsify.models import vgg as vgg_lib
from sparsify.models.lenet import LeNet5
from sparsify.models.mlp import lenet_300_100
from sparsify.models.mlp import MLP
from sparsify.models.resnet import BasicBlock
from sparsify.models.resnet import BottleneckBlock
from sparsify.models.resnet import ResidualBlock
from sparsify.models.resnet import ResNet
from sparsify.models.vgg import ConvBNReLU
from sparsify.models.vgg import VGG
from sparsify.models.vgg import vgg
from sparsify.models.vgg import vgg_stages
from sparsify.structure import units

__all__ = [
    "BasicBlock",
    "BottleneckBlock",
    "ConvBNReLU",
    "LeNet5",
    "MLP",
    "MODELS",
    "ModelEntry",
    "ResNet",
    "ResidualBlock",
    "VGG",
    "count_params",
    "get_model",
    "lenet_300_100",
    "remove_blocks",
    "slimmed_kwargs",
    "structure",
    "vgg",
    "vgg_stages",
]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """A registered model: how it is built, and what surgery needs to know.

  Attributes:
    factory: builds the Flax module from keyword arguments.
    structure: ``structure(**kwargs) -> list[Unit]``, the removable neurons
      or channels of the model those arguments build.
    slimmed_kwargs: ``slimmed_kwargs(kwargs, counts) -> kwargs`` of the
      ungated model with ``counts[unit name]`` units kept.
    remove_blocks: ``remove_blocks(variables, kwargs, threshold)``, removing
      whole blocks whose gate is zero (None if the model has none): returns
      ``(variables, kwargs)``, or None for a model built without block gates.
  """
  factory: Callable[..., nn.Module]
  structure: Callable[..., list[units.SpecUnit]]
  slimmed_kwargs: Callable[[dict[str, Any], dict[str, int]], dict[str, Any]]
  remove_blocks: Callable[..., Any] | None = None


MODELS: dict[str, ModelEntry] = {
    "lenet5": ModelEntry(LeNet5, lenet.structure, lenet.slimmed_kwargs),
    "lenet_300_100": ModelEntry(lenet_300_100, mlp.structure,
                                mlp.slimmed_kwargs),
    "mlp": ModelEntry(MLP, mlp.structure, mlp.slimmed_kwargs),
    "resnet": ModelEntry(ResNet, resnet.structure, resnet.slimmed_kwargs,
                         resnet.remove_blocks),
    "vgg": ModelEntry(vgg, vgg_lib.structure, vgg_lib.slimmed_kwargs),
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


def _entry(name: str) -> ModelEntry:
  if name not in MODELS:
    raise ValueError(f"model.name: unknown model {name!r}; allowed: "
                     f"{', '.join(sorted(MODELS))}")
  return MODELS[name]


def _checked(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
  """``kwargs`` with lists as tuples, after checking the model accepts them."""
  allowed = _arguments(_entry(name).factory)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(
        f"model: unknown argument(s) {', '.join(map(repr, unknown))} for "
        f"model {name!r}; allowed: {', '.join(allowed)}")
  return {k: _to_tuples(v) for k, v in kwargs.items()}


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
  kwargs = _checked(name, kwargs)
  return MODELS[name].factory(num_classes=num_classes, **kwargs)


def structure(name: str, **kwargs: Any) -> list[units.SpecUnit]:
  """The removable neurons or channels of a registered model.

  Each `units.SpecUnit` names the parameter slices that one layer's neurons or
  channels own (producers) and those that read them (consumers), and the
  gate that scales them in a gated model; `sparsify.keep_nonzero` and
  `sparsify.slim` work from it. Each model's module says what they are (its
  ``structure``): MLP hidden neurons, LeNet-5 filters and ``fc1`` neurons
  (ungated), VGG conv channels, ResNet channels inside residual branches.

  Args:
    name: One of ``lenet5``, ``lenet_300_100``, ``mlp``, ``resnet``, ``vgg``.
    **kwargs: the model's arguments, as for `get_model` (``hidden``,
      ``stages``, ``depth``, ``block``, ...); gate switches may be given.

  Returns:
    The list of `units.SpecUnit`.

  Raises:
    ValueError: for an unknown model name or argument.

  Example:
    >>> from sparsify import models
    >>> spec = models.structure('mlp', hidden=(300, 100))
    >>> [(u.name, u.gate) for u in spec]
    [('fc1', 'fc1_gate/gate'), ('fc2', 'fc2_gate/gate')]
    >>> spec[0].producers, spec[0].consumers
    ((('fc1/kernel', 1), ('fc1/bias', 0)), (('fc2/kernel', 0),))
    >>> len(models.structure('resnet', depth=20)), len(models.structure(
    ...     'vgg', depth=11))
    (9, 8)
  """
  return _entry(name).structure(**_checked(name, kwargs))


def slimmed_kwargs(name: str, kwargs: dict[str, Any],
                   keep: dict[str, Any]) -> dict[str, Any]:
  """The arguments of the ungated model that `sparsify.slim` leaves.

  Args:
    name: the registered model's name.
    kwargs: the arguments the (gated) model was built with.
    keep: ``{unit name: boolean array}`` of the units kept, as given to
      `sparsify.slim`; units not named keep their widths.

  Returns:
    Arguments for `get_model` that build the slim model: the kept widths,
    and no gate switches (``gates``, ``channel_gates``, ``block_gates``).

  Raises:
    ValueError: for an unknown model name or argument.

  Example:
    >>> import numpy as np
    >>> from sparsify import models
    >>> keep = {'fc1': np.array([True, False, True]), 'fc2': np.ones(2, bool)}
    >>> models.slimmed_kwargs('mlp', {'hidden': (3, 2), 'gates': True}, keep)
    {'hidden': (2, 2)}
  """
  entry = _entry(name)
  return entry.slimmed_kwargs(_checked(name, kwargs), units.count_kept(keep))


def remove_blocks(
    name: str, variables: dict[str, Any], kwargs: dict[str, Any],
    threshold: float = 0.0) -> tuple[dict[str, Any], dict[str, Any]] | None:
  """Removes the blocks whose gate is at most ``threshold``, if any can go.

  For ``resnet`` built with ``block_gates=True``: the residual branches of
  zero gates (`sparsify.models.resnet.remove_blocks`). Run it before
  `sparsify.slim`, whose units then skip the removed branches.

  Args:
    name: the registered model's name.
    variables: the model's variables.
    kwargs: the arguments it was built with.
    threshold: block gates at or below it (in magnitude) remove their block.

  Returns:
    ``(variables, kwargs)`` of the model without block gates, or None when
    the model has no removable blocks or was built without block gates.

  Raises:
    ValueError: for an unknown model name or argument.

  Example:
    >>> from sparsify import models
    >>> models.remove_blocks('vgg', {'params': {}}, {'depth': 11}) is None
    True
    >>> models.remove_blocks('resnet', {'params': {}}, {'depth': 8}) is None
    True
  """
  entry = _entry(name)
  kwargs = _checked(name, kwargs)
  if entry.remove_blocks is None:
    return None
  return entry.remove_blocks(variables, kwargs, threshold)


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
