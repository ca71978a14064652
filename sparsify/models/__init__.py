"""Flax Linen image classifiers, looked up by name from a config.

Every model maps NHWC float32 images to logits ``(N, num_classes)`` with
``model.apply(variables, x, train=False)``. Models with BatchNorm keep running
statistics in the ``batch_stats`` collection: train with
``model.apply(variables, x, train=True, mutable=['batch_stats'])``. Dense and
Conv weights are named ``kernel`` and every classifier layer ``head``.

`MODELS` maps each name to the function that builds it. Nothing else is
declared per model: the removable neurons, channels and blocks of every
model, built-in or imported, are read from its computation
(`sparsify.structure_of`).
"""

from collections.abc import Callable
import importlib
import inspect
import math
from typing import Any

from flax import nnx
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
from sparsify.models.vgg import vgg
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


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "lenet_300_100": lenet_300_100,
    "mlp": MLP,
    "resnet": ResNet,
    "vgg": vgg,
}


def _signature(factory: Callable[..., Any]) -> inspect.Signature:
  """The signature a factory is called with (an NNX class: its __init__)."""
  if isinstance(factory, type) and issubclass(factory, nnx.Module):
    init = inspect.signature(factory.__init__)
    return init.replace(parameters=list(init.parameters.values())[1:])
  return inspect.signature(factory)


# Arguments that the caller of a factory supplies, never the config.
_SUPPLIED = ("parent", "name", "rngs")


def _arguments(factory: Callable[..., Any]) -> list[str]:
  """Returns the keyword arguments a model factory accepts (no ``**``)."""
  return sorted(n for n, p in _signature(factory).parameters.items()
                if n not in _SUPPLIED and p.kind in (
                    p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _takes_any(factory: Callable[..., Any]) -> bool:
  """Whether a factory takes ``**kwargs``."""
  return any(p.kind == p.VAR_KEYWORD
             for p in _signature(factory).parameters.values())


def _required(factory: Callable[..., Any]) -> list[str]:
  """The arguments of a factory that have no default."""
  return sorted(n for n, p in _signature(factory).parameters.items()
                if n not in _SUPPLIED and p.default is p.empty and p.kind in (
                    p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _to_tuples(value: Any) -> Any:
  """Turns (nested) lists into tuples, so that module fields are hashable."""
  if isinstance(value, (list, tuple)):
    return tuple(_to_tuples(v) for v in value)
  return value


def _one_line(error: BaseException) -> str:
  """``Type: first line of the message`` of an exception."""
  text = str(error).strip().splitlines()
  return type(error).__name__ + (f": {text[0]}" if text else "")


def _a(noun: str) -> str:
  """``noun`` with its indefinite article."""
  return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _is_imported(name: str) -> bool:
  """Whether a model name is an import path ``module.path:Attribute``."""
  return ":" in name


def _import(name: str) -> Any:
  """The object that ``module.path:Attribute`` names; one-line errors."""
  module_name, _, attribute = name.partition(":")
  if not module_name or not attribute:
    raise ValueError(f"model.name: got {name!r}; allowed: a built-in model "
                     f"({', '.join(sorted(MODELS))}) or 'module.path:"
                     "Attribute'")
  try:
    module = importlib.import_module(module_name)
  except Exception as e:  # the user's module may raise anything
    raise ValueError(f"model.name: cannot import module {module_name!r} of "
                     f"{name!r}: {_one_line(e)}") from e
  obj = module
  for part in attribute.split("."):
    if not hasattr(obj, part):
      public = [a for a in sorted(dir(module)) if not a.startswith("_")
                and callable(getattr(module, a))]
      listed = ", ".join(public[:10]) + (", ..." if len(public) > 10 else "")
      raise ValueError(f"model.name: module {module_name!r} has no attribute "
                       f"{attribute!r}; it has: {listed or 'no callables'}")
    obj = getattr(obj, part)
  return obj


def _kind(name: str, obj: Any) -> str:
  """``'linen'`` or ``'nnx'`` (a class), or ``'function'``; else an error."""
  if isinstance(obj, type) and issubclass(obj, nn.Module):
    return "linen"
  if isinstance(obj, type) and issubclass(obj, nnx.Module):
    return "nnx"
  if callable(obj) and not isinstance(obj, (type, nn.Module, nnx.Module)):
    return "function"
  what = "a Module instance" if isinstance(obj, (nn.Module, nnx.Module)) else (
      _a(type(obj).__name__))
  raise ValueError(f"model.name: {name!r} is {what}; allowed: a flax.linen."
                   "Module class, an nnx.Module class, or a function "
                   "returning a Linen module")


# The keywords by which models switch between training and evaluation, as
# ``model.train_arg`` names them; '' is a model that takes none. Those in
# `_NEGATED` are true when evaluating.
TRAIN_ARGS = ("train", "training", "deterministic", "use_running_average", "")
_NEGATED = ("deterministic", "use_running_average")


class _TrainArg:
  """A Linen module seen through ``init``/``apply`` with ``train=``.

  The trainer calls ``init(key, x, train=False)`` and ``apply(variables, x,
  train=..., mutable=...)``; this hands ``train`` on as the module's own
  keyword (negated for ``deterministic`` and ``use_running_average``), or
  drops it for a module that takes none. The module is not wrapped in
  another one, so its variables (and their paths) are its own. Other
  attributes are the module's.

  Args:
    module: the Linen module.
    keyword: its training keyword, one of `TRAIN_ARGS` ('' for none).
    streams: RNG streams that ``init`` splits a single key into (an NNX
      module behind ``ToLinen`` draws its Dropout stream at construction).
  """

  def __init__(self, module: nn.Module, keyword: str,
               streams: tuple[str, ...] = ()):
    self.module = module
    self.keyword = keyword
    self.streams = streams

  def _switch(self, train: bool) -> dict[str, bool]:
    if not self.keyword:
      return {}
    return {self.keyword: (not train) if self.keyword in _NEGATED else train}

  def init(self, rngs: Any, *args: Any, train: bool = False,
           **kwargs: Any) -> Any:
    """``module.init`` with ``train`` as the module's keyword.

    Args:
      rngs: the key (or keys) of `flax.linen.Module.init`.
      *args: the module's inputs.
      train: whether to initialise in training mode.
      **kwargs: further arguments of ``module.init``.

    Returns:
      The module's variables.
    """
    if self.streams and not isinstance(rngs, dict):
      rngs = dict(zip(self.streams, jax.random.split(rngs, len(self.streams))))
    return self.module.init(rngs, *args, **self._switch(train), **kwargs)

  def apply(self, variables: Any, *args: Any, train: bool = False,
            **kwargs: Any) -> Any:
    """``module.apply`` with ``train`` as the module's keyword.

    Args:
      variables: the module's variables.
      *args: its inputs.
      train: training mode (BatchNorm on batch statistics, dropout on).
      **kwargs: further arguments of ``module.apply`` (``mutable``,
        ``rngs``, ``capture_intermediates``, ...).

    Returns:
      What ``module.apply`` returns.
    """
    return self.module.apply(variables, *args, **self._switch(train),
                             **kwargs)

  def __getattr__(self, name: str) -> Any:
    if name == "module":  # not set yet (e.g. while unpickling)
      raise AttributeError(name)
    return getattr(self.module, name)

  def __repr__(self) -> str:
    return f"_TrainArg({self.module!r}, keyword={self.keyword!r})"


def _train_keyword(name: str, call: Callable[..., Any],
                   train_arg: str | None) -> tuple[str, bool]:
  """The training keyword of a model's ``__call__``, and if it has a default.

  Args:
    name: the model's name, for errors.
    call: the (unbound) ``__call__``.
    train_arg: one of `TRAIN_ARGS`, or None to find it in the signature.

  Returns:
    ``(keyword, has_default)``; ``('', True)`` for a model that takes none.

  Raises:
    ValueError: ``train_arg`` is not allowed or not a keyword of ``call``,
      or None and ``call`` takes several.
  """
  params = dict(inspect.signature(call).parameters)
  params.pop(next(iter(params), None), None)  # self
  takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
  names = [n for n, p in params.items()
           if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
  allowed = ", ".join(map(repr, TRAIN_ARGS))
  if train_arg is None:
    found = [a for a in TRAIN_ARGS if a in names]
    if len(found) > 1:
      raise ValueError(f"model.train_arg: {name!r} takes several of "
                       f"{', '.join(map(repr, found))}; set model.train_arg "
                       "to the one that switches training")
    train_arg = found[0] if found else ""
  elif train_arg not in TRAIN_ARGS:
    raise ValueError(f"model.train_arg: got {train_arg!r}; allowed: "
                     f"{allowed}")
  if not train_arg:
    return "", True
  if train_arg not in names and not takes_any:
    found = [a for a in TRAIN_ARGS if a in names] or [""]
    raise ValueError(
        f"model.train_arg: got {train_arg!r}, not an argument of {name!r} "
        f"(it takes {', '.join(names) or 'nothing'}); set "
        f"--config.model.train_arg={found[0]!r}")
  param = params.get(train_arg)
  return train_arg, param is None or param.default is not param.empty


def _factory(name: str) -> Callable[..., nn.Module]:
  if name not in MODELS:
    raise ValueError(f"model.name: unknown model {name!r}; allowed: "
                     f"{', '.join(sorted(MODELS))}, or module.path:Attribute "
                     "for a model of your own")
  return MODELS[name]


def _checked(name: str, kwargs: dict[str, Any],
             factory: Callable[..., Any] | None = None) -> dict[str, Any]:
  """``kwargs`` with lists as tuples, after checking the model accepts them."""
  factory = _factory(name) if factory is None else factory
  allowed = _arguments(factory)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown and not _takes_any(factory):
    raise ValueError(
        f"model: unknown argument(s) {', '.join(map(repr, unknown))} for "
        f"model {name!r}; allowed: {', '.join(allowed) or 'none'}")
  return {k: _to_tuples(v) for k, v in kwargs.items()}


def _imported_model(name: str, num_classes: int, train_arg: str | None,
                    kwargs: dict[str, Any]) -> Any:
  """Builds the model ``module.path:Attribute`` (see `get_model`)."""
  factory = _import(name)
  kind = _kind(name, factory)
  kwargs = _checked(name, kwargs, factory)
  if "num_classes" in _arguments(factory) and "num_classes" not in kwargs:
    kwargs["num_classes"] = num_classes
  missing = [a for a in _required(factory) if a not in kwargs]
  if missing:
    raise ValueError(f"model: model {name!r} needs argument(s) "
                     f"{', '.join(map(repr, missing))}; set them in "
                     "model.kwargs")
  if kind == "nnx":
    # NNX modules built and run through Linen's init/apply: their Params
    # land in 'params', BatchNorm statistics in 'batch_stats'.
    module = nnx.bridge.ToLinen(factory, kwargs=kwargs)
    call = factory.__call__
  else:
    try:
      module = factory(**kwargs)
    except Exception as e:  # the user's factory may raise anything
      raise ValueError(f"model: building {name!r} failed: "
                       f"{_one_line(e)}") from e
    if isinstance(module, nnx.Module):
      raise ValueError(f"model.name: {name!r} returned an NNX module; name "
                       "its nnx.Module class instead (run with flax.nnx."
                       "bridge.ToLinen), or train it through the Python API")
    if not isinstance(module, nn.Module):
      raise ValueError(f"model.name: {name!r} returned "
                       f"{_a(type(module).__name__)}; allowed: a function "
                       "that returns a flax.linen.Module")
    call = type(module).__call__
  keyword, has_default = _train_keyword(name, call, train_arg)
  if kind == "nnx":
    return _TrainArg(module, keyword, streams=("params", "dropout"))
  if keyword == "train" and has_default:
    return module
  return _TrainArg(module, keyword)


def get_model(name: str, *, num_classes: int = 10,
              train_arg: str | None = None, **kwargs: Any) -> Any:
  """Returns the model registered in `MODELS` under ``name``, or imported.

  A name with a ``:`` is an import path, ``module.path:Attribute``: a
  `flax.linen.Module` class, a function returning a Linen module, or an
  `flax.nnx.Module` class (run through ``flax.nnx.bridge.ToLinen``, so that
  its parameters are in ``params`` and its BatchNorm statistics in
  ``batch_stats``; it must take ``rngs=``). ``kwargs`` are checked against
  its signature; ``num_classes`` is passed only if it takes it, otherwise
  the width of its output is its own (set it in ``kwargs``).

  Every model is called as the trainer calls it: ``init(key, x,
  train=False)`` and ``apply(variables, x, train=..., mutable=[...])``. An
  imported model whose keyword for training is another one (``train_arg``)
  comes back behind a thin adapter with the same ``init``/``apply`` that
  hands ``train`` on under its own name; its variables are its own, at the
  same paths.

  Args:
    name: One of ``lenet5``, ``lenet_300_100``, ``mlp``, ``resnet``,
      ``vgg``, or ``module.path:Attribute``.
    num_classes: Number of output logits.
    train_arg: The keyword by which the model's ``__call__`` switches to
      training: ``'train'``, ``'training'``, ``'deterministic'`` or
      ``'use_running_average'`` (these two negated), or ``''`` for a model
      that takes none. None: the one of these its ``__call__`` takes
      (``'train'`` for the built-in models).
    **kwargs: Further arguments of the model, e.g. ``depth=20`` for
      ``resnet`` or ``stages=[[64], [128]]`` for ``vgg``; lists become tuples.

  Returns:
    The Flax module (not yet initialised), or the adapter around it.

  Raises:
    ValueError: for an unknown model name or argument, a module that cannot
      be imported, an attribute it lacks or that is no model, a training
      keyword the model does not take, or an invalid value; the message is
      one line.

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

    An imported model, here Linen's own ``Dense`` (whose ``__call__``
    switches nothing):

    >>> dense = models.get_model('flax.linen:Dense', features=3)
    >>> dense.init(jax.random.key(0), jnp.ones((1, 2)), train=False)[
    ...     'params']['kernel'].shape
    (2, 3)
    >>> models.get_model('flax.linen:Dense', feature=3)
    Traceback (most recent call last):
    ...
    ValueError: model: unknown argument(s) 'feature' for model ...
  """
  if _is_imported(name):
    return _imported_model(name, num_classes, train_arg, kwargs)
  kwargs = _checked(name, kwargs)
  module = MODELS[name](num_classes=num_classes, **kwargs)
  if train_arg in (None, "train"):
    return module
  keyword, _ = _train_keyword(name, type(module).__call__, train_arg)
  return _TrainArg(module, keyword)


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
