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
import re
from typing import Any

from flax import nnx
import flax.linen as nn
import jax
import numpy as np

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
from sparsify.structure import insert

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
    "check_gates",
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


# Where `_Gated` keeps the inserted gates: ``params['gates'][unit name]``.
GATES = "gates"


def _spec(tree: Any) -> Any:
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), jax.numpy.result_type(x)),
      tree)


def check_gates(where: Any) -> None:
  """Checks ``gate_units`` of `get_model` (``config.model.gates``).

  Args:
    where: a regex over unit names, ``''`` for no gates.

  Raises:
    ValueError: ``where`` is no string or does not compile; the message is
      one line and names ``model.gates``.

  Example:
    >>> from sparsify import models
    >>> models.check_gates('conv.*')
    >>> models.check_gates('conv[')
    Traceback (most recent call last):
    ...
    ValueError: model.gates: got 'conv[', not a regex (unterminated ...
  """
  if not isinstance(where, str):
    raise ValueError(f"model.gates: got {where!r}; allowed: a regex over "
                     "unit names ('.*' for every unit, '' for none)")
  try:
    re.compile(where)
  except re.error as e:
    raise ValueError(f"model.gates: got {where!r}, not a regex ({e}); "
                     "allowed: a regex over unit names ('.*' for every "
                     "unit, '' for none)") from e


class _Gated:
  """A model with gates at the outputs of its units, in its ``params``.

  `sparsify.insert_gates` multiplies each unit whose name (as
  `sparsify.structure_of` names it) the regex ``where`` matches by a gate
  vector, one entry per element, where the next layer reads it. This
  adapter keeps those gates in the model's own ``params``, under
  ``params['gates'][unit name]``, so that a trainer trains them with the
  other parameters and the SSS optimizer selects them (`sss.GATES`); the
  model's own variables keep their paths. ``init(key, x, train=False)``
  initialises the model and adds gates of ones (the model's own function);
  ``apply(variables, x, **kwargs)`` takes the gates out of ``params`` and
  computes the gated model. An ``apply`` before any ``init`` (variables
  restored from a file) builds the gated function from the shapes of the
  variables and of ``x``. Other attributes are the model's.

  Args:
    model: anything with Linen-like ``init(key, x, train=False)`` and
      ``apply(variables, x, train=...)`` (a Linen module, `_TrainArg`).
    where: a regex searched in the unit names (``'.*'``: every unit).
  """

  def __init__(self, model: Any, where: str):
    self.model = model
    self.where = where
    self._functions: dict[Any, Callable[..., Any]] = {}

  def _function(self, variables: Any, x: Any) -> Callable[..., Any]:
    """The gated function of the model at these shapes, built once."""
    shapes, example = _spec(variables), _spec(x)
    key = (jax.tree.structure(shapes), tuple(
        (s.shape, str(s.dtype)) for s in jax.tree.leaves((shapes, example))))
    if key not in self._functions:
      try:
        fn, _ = insert.insert_gates(self.model.apply, shapes, example,
                                    where=self.where, train=False)
      except ValueError as e:  # 'where: ... matches no exact unit; ...'
        message = str(e).removeprefix("where: ")
        raise ValueError(f"model.gates: {message}") from e
      self._functions[key] = fn
    return self._functions[key]

  def init(self, rngs: Any, x: Any, *args: Any, train: bool = False,
           **kwargs: Any) -> Any:
    """The model's variables, with gates of ones in ``params['gates']``.

    Args:
      rngs: the key (or keys) of the model's ``init``.
      x: the model's input.
      *args: its further inputs.
      train: whether to initialise in training mode.
      **kwargs: further arguments of the model's ``init``.

    Returns:
      The model's variables; ``params['gates']`` holds ``{unit name:
      ones(unit size)}``.

    Raises:
      ValueError: the model has a ``params['gates']`` of its own, or
        ``where`` matches no unit (the message lists the unit names).
    """
    variables = dict(self.model.init(rngs, x, *args, train=train, **kwargs))
    params = dict(variables.get("params", {}))
    if GATES in params:
      raise ValueError(f"model.gates: the model has a parameter {GATES!r} "
                       "of its own; allowed: a model without one")
    fn = self._function(variables, x)
    params[GATES] = {u: jax.numpy.ones((fn.structure[u].size,),
                                       jax.numpy.float32) for u in fn.units}
    return {**variables, "params": params}

  def apply(self, variables: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """The gated model on ``x``.

    Args:
      variables: the variables of `init` (gates in ``params['gates']``).
      x: the model's input.
      *args: its further inputs.
      **kwargs: arguments of the model's ``apply`` (``train``,
        ``mutable``, ``rngs``, ...).

    Returns:
      What the model's ``apply`` returns; updated collections (with
      ``mutable``) are the model's own.

    Raises:
      ValueError: ``variables['params']`` has no ``'gates'`` entry.
    """
    params = dict(variables.get("params", {}))
    if GATES not in params:
      raise ValueError(f"variables: no params[{GATES!r}]; allowed: the "
                       "variables of init, gates included")
    gates = params.pop(GATES)
    rest = {**variables, "params": params}
    fn = self._function(rest, x)
    return fn({**rest, insert.COLLECTION: gates}, x, *args, **kwargs)

  def __getattr__(self, name: str) -> Any:
    if name in ("model", "_functions"):  # not set yet (e.g. unpickling)
      raise AttributeError(name)
    return getattr(self.model, name)

  def __repr__(self) -> str:
    return f"_Gated({self.model!r}, where={self.where!r})"


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
              train_arg: str | None = None, gate_units: str = "",
              **kwargs: Any) -> Any:
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

  With ``gate_units`` (``config.model.gates``), a regex over the model's
  unit names (as
  `sparsify.structure_of` names them; ``'.*'`` for every unit), gates are
  inserted at the outputs of the units it matches (`sparsify.insert_gates`):
  the model comes back behind an adapter whose ``init`` adds
  ``params['gates'][unit name]`` (ones) to the model's own variables and
  whose ``apply`` multiplies them in, so that SSS trains and selects them
  on a model that has no gates of its own.

  Args:
    name: One of ``lenet5``, ``lenet_300_100``, ``mlp``, ``resnet``,
      ``vgg``, or ``module.path:Attribute``.
    num_classes: Number of output logits.
    train_arg: The keyword by which the model's ``__call__`` switches to
      training: ``'train'``, ``'training'``, ``'deterministic'`` or
      ``'use_running_average'`` (these two negated), or ``''`` for a model
      that takes none. None: the one of these its ``__call__`` takes
      (``'train'`` for the built-in models).
    gate_units: A regex over unit names at whose outputs gates are
      inserted; ``''`` for none. (Not ``gates``: that is the built-in
      models' own switch, e.g. ``get_model('mlp', gates=True)``.)
    **kwargs: Further arguments of the model, e.g. ``depth=20`` for
      ``resnet`` or ``stages=[[64], [128]]`` for ``vgg``; lists become tuples.

  Returns:
    The Flax module (not yet initialised), or the adapter around it.

  Raises:
    ValueError: for an unknown model name or argument, a module that cannot
      be imported, an attribute it lacks or that is no model, a training
      keyword the model does not take, ``gate_units`` that is no regex, or
      an invalid value; the message is one line. A ``gate_units`` regex that
      matches no unit is found at ``init``, which lists the unit names.

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

    Gates on every unit of a model without any, in its ``params``:

    >>> mlp = models.get_model('mlp', hidden=(4, 3), gate_units='.*')
    >>> variables = mlp.init(jax.random.key(0), jnp.ones((1, 2)))
    >>> jax.tree.map(jnp.shape, variables['params']['gates'])
    {'fc1': (4,), 'fc2': (3,)}
  """
  check_gates(gate_units)
  if _is_imported(name):
    model = _imported_model(name, num_classes, train_arg, kwargs)
  else:
    kwargs = _checked(name, kwargs)
    model = MODELS[name](num_classes=num_classes, **kwargs)
    if train_arg not in (None, "train"):
      keyword, _ = _train_keyword(name, type(model).__call__, train_arg)
      model = _TrainArg(model, keyword)
  return _Gated(model, gate_units) if gate_units else model


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
