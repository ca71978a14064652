"""Methods and optimizers by name, as configs name them.

A config's ``compression`` is a list of entries ``{name, kwargs, begin,
end}`` (big_vision's way: a name and keyword arguments handed straight to
the factory). `METHODS` maps each name to its factory and says where its
transform goes in the optax chain: a *penalty* adds its gradient before the
optimizer, a *mask* rewrites the optimizer's updates after it. The fractions
``begin`` and ``end`` of training become the factory's step arguments (for
example ``begin_step`` and ``end_step``). Adding a method is one factory and
one line here.

`OPTIMIZERS` maps ``config.optimizer.name`` to the optax optimizer; SSS is one
of them (Nesterov SGD on the weights, APG on the scales).
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import inspect
from typing import Any, Literal

import optax

from sparsify.experiment import optim
from sparsify.experiment import stages
from sparsify.transforms import dat
from sparsify.transforms import dynamic
from sparsify.transforms import magnitude
from sparsify.transforms import penalties
from sparsify.transforms import random
from sparsify.transforms import saliency
from sparsify.transforms import sss
from sparsify.transforms import ste


@dataclasses.dataclass(frozen=True)
class Method:
  """A compression method the config can name.

  Attributes:
    factory: returns the `optax.GradientTransformation`, called with the
      entry's ``kwargs`` and the step arguments of ``window``.
    position: ``'mask'`` (after the optimizer: rewrites its updates),
      ``'penalty'`` (before it: adds a gradient) or ``'wrap'`` (around it:
      the factory takes the optimizer as its first argument, for methods
      that read the raw gradients, such as RigL's regrowth and SNIP).
    window: the factory's arguments that receive the entry's ``begin`` and
      ``end`` as steps (``None``: that fraction is not used).
  """
  factory: Callable[..., optax.GradientTransformation]
  position: Literal["mask", "penalty", "wrap"] = "mask"
  window: tuple[str | None, str | None] = (None, None)


METHODS: dict[str, Method] = {
    "dat": Method(dat.dynamic_adaptive_threshold,
                  window=("begin_step", "end_step")),
    "gmp": Method(magnitude.gradual_magnitude_pruning,
                  window=("begin_step", "end_step")),
    "magnitude": Method(magnitude.magnitude_pruning, window=("step", None)),
    "magnitude_ste": Method(ste.magnitude_ste, window=("begin_step", None)),
    "random_ste": Method(ste.random_ste, window=("begin_step", None)),
    # These read the raw gradients: they take the optimizer and replace it.
    "set": Method(dynamic.sparse_evolutionary_training, "wrap",
                  window=(None, "end_step")),
    "rigl": Method(dynamic.rigl, "wrap", window=(None, "end_step")),
    "snip": Method(saliency.snip, "wrap"),
    "saliency": Method(saliency.gradual_saliency_pruning, "wrap",
                       window=("begin_step", "end_step")),
    "random": Method(random.random_sparsity),
    "random_pruning": Method(random.random_pruning, window=("step", None)),
    "binary": Method(penalties.binary_attractor, "penalty"),
    "kcentre": Method(penalties.kcentre_attractor, "penalty"),
    "l1": Method(penalties.l1, "penalty"),
    "group_lasso": Method(penalties.group_lasso, "penalty"),
    "slimming": Method(sss.network_slimming, "penalty"),
}


# Post-training stages by name (`sparsify.experiment.stages`).
STAGES = stages.STAGES
stage_names = stages.stage_names
holds_out = stages.holds_out


def steps(fraction: float | None, total_steps: int) -> int | None:
  """A fraction of training as a step, rounded (``None`` stays ``None``).

  Args:
    fraction: a number in [0, 1], or None.
    total_steps: the number of training steps.

  Returns:
    ``round(fraction * total_steps)``, or None.

  Example:
    >>> from sparsify.experiment import registry
    >>> registry.steps(0.7, 1000), registry.steps(None, 1000)
    (700, None)
  """
  return None if fraction is None else int(round(fraction * total_steps))


def _refuse_unknown(field: str, kwargs: Mapping[str, Any],
                    allowed: Sequence[str]) -> None:
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f"{field}: unknown argument(s) "
                     f"{', '.join(map(repr, unknown))}; allowed: "
                     f"{', '.join(sorted(allowed)) or 'none'}")


def _call(field: str, factory: Callable[..., Any], kwargs: Mapping[str, Any],
          allowed: Sequence[str]) -> Any:
  """Calls ``factory(**kwargs)``; errors name ``field`` and what is allowed."""
  _refuse_unknown(field, kwargs, allowed)
  try:
    return factory(**kwargs)
  except TypeError as e:  # a required argument is missing
    raise ValueError(f"{field}: {e}; allowed: {', '.join(sorted(allowed))}"
                     ) from e
  except ValueError as e:  # the factory's own "arg: got v; allowed: ..."
    raise ValueError(f"{field}.{e}") from e


def build_method(entry: Mapping[str, Any], total_steps: int, *,
                 field: str = "compression[0]",
                 optimizer: optax.GradientTransformation | None = None,
                 ) -> tuple[str, optax.GradientTransformation]:
  """Builds one compression entry: ``(position, transform)``.

  Args:
    entry: ``{'name': ..., 'kwargs': {...}, 'begin': ..., 'end': ...}``;
      ``begin`` and ``end`` are optional fractions of training.
    total_steps: the number of training steps.
    field: the entry's place in the config, for error messages.
    optimizer: what a ``'wrap'`` method wraps (`optax.identity` if None).

  Returns:
    ``(position, transform)``: ``'mask'``, ``'penalty'`` or ``'wrap'``, and
    the `optax.GradientTransformation` (a wrap method's includes
    ``optimizer``).

  Raises:
    ValueError: an unknown name or argument, or a value the factory refuses;
      one line that starts with the field, e.g. ``compression[0].kwargs.
      sparsity: got 1.5; allowed: a fraction in [0, 1)``.

  Example:
    >>> from sparsify.experiment import registry
    >>> position, tx = registry.build_method(
    ...     {'name': 'gmp', 'kwargs': {'sparsity': 0.9},
    ...      'begin': 0.1, 'end': 0.7}, total_steps=1000)
    >>> position
    'mask'
  """
  name = entry.get("name")
  if name not in METHODS:
    raise ValueError(f"{field}.name: got {name!r}; allowed: "
                     f"{', '.join(sorted(METHODS))}")
  method = METHODS[name]
  kwargs = {k: v for k, v in dict(entry.get("kwargs") or {}).items()}
  for key, arg in zip(("begin", "end"), method.window):
    fraction = entry.get(key)
    if arg is None or fraction is None:
      continue
    if not (isinstance(fraction, (int, float)) and 0 <= fraction <= 1):
      raise ValueError(f"{field}.{key}: got {fraction!r}; allowed: a "
                       "fraction of training in [0, 1]")
    kwargs[arg] = steps(fraction, total_steps)
  if method.window == ("begin_step", "end_step") and "end_step" in kwargs:
    kwargs["end_step"] = max(kwargs["end_step"], kwargs.get("begin_step", 0))
  params = dict(inspect.signature(method.factory).parameters)
  factory = method.factory
  if method.position == "wrap":  # its first argument is the optimizer
    first = next(iter(params))
    del params[first]
    factory = functools.partial(factory, optimizer or optax.identity())
  _refuse_unknown(f"{field}.kwargs", kwargs, list(params))
  _check_arguments(field, name, params, kwargs,
                   dict(zip(method.window, ("begin", "end"))))
  return method.position, _call(f"{field}.kwargs", factory, kwargs,
                                list(params))


def _takes_text(annotation: Any) -> bool:
  """Whether an argument's annotation admits a string (or says nothing)."""
  if annotation is inspect.Parameter.empty:
    return True
  text = str(annotation)
  return any(word in text for word in ("str", "Literal", "Any", "Where"))


def _check_arguments(field: str, name: str,
                     params: Mapping[str, inspect.Parameter],
                     kwargs: Mapping[str, Any],
                     window: Mapping[str | None, str]) -> None:
  """Refuses a required argument left unset and text for a number.

  An unset optional argument of a config entry is ``None`` (a placeholder
  that the command line can set): for an argument without a default the
  factory would only fail once training runs. ``window`` maps the step
  arguments to the entry's fields (``begin``, ``end``) that give them.
  """
  for arg, param in params.items():
    if arg not in kwargs and param.default is not param.empty:
      continue
    value = kwargs.get(arg)
    where = f"{field}.{window[arg]}" if arg in window else (
        f"{field}.kwargs.{arg}")
    if value is None and param.default is param.empty and param.kind in (
        param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
      allowed = ("a fraction of training in [0, 1]" if arg in window else
                 "a value")
      raise ValueError(f"{where}: got None; allowed: {allowed}, which "
                       f"{name} needs (it has no default)")
    if isinstance(value, str) and not _takes_text(param.annotation):
      kind = ("true or false" if param.annotation is bool else
              "a number (not text)")
      raise ValueError(f"{where}: got {value!r}; allowed: {kind}")


def make_chain(entries: Sequence[Mapping[str, Any]],
               optimizer: optax.GradientTransformation,
               total_steps: int) -> optax.GradientTransformation:
  """``[penalties] -> optimizer -> [masks]``, each group in entry order.

  A method that wraps the optimizer (position ``'wrap'``; at most one)
  takes its place: ``[penalties] -> method(optimizer) -> [masks]``.

  Args:
    entries: the config's ``compression`` list.
    optimizer: the optimizer the entries compose with.
    total_steps: the number of training steps.

  Returns:
    The optax chain (``optimizer`` itself when there are no entries).

  Raises:
    ValueError: an entry that `build_method` refuses.
  """
  before, after, wraps = [], [], []
  for i, entry in enumerate(entries):
    field = f"compression[{i}]"
    if METHODS.get(entry.get("name")) and METHODS[entry["name"]].position == (
        "wrap"):
      wraps.append((field, entry))
      continue
    position, tx = build_method(entry, total_steps, field=field)
    (before if position == "penalty" else after).append(tx)
  if len(wraps) > 1:
    raise ValueError(
        f"{wraps[1][0]}.name: got {wraps[1][1]['name']!r} after "
        f"{wraps[0][1]['name']!r} ({wraps[0][0]}); allowed: one method that "
        "wraps the optimizer (" + ", ".join(
            n for n, m in sorted(METHODS.items()) if m.position == "wrap")
        + ") per config")
  for field, entry in wraps:
    _, optimizer = build_method(entry, total_steps, field=field,
                                optimizer=optimizer)
  parts = [*before, optimizer, *after]
  return parts[0] if len(parts) == 1 else optax.chain(*parts)


# Optimizers by name; each is called with the learning rate (or schedule),
# the section's momentum and weight decay, and ``optimizer.kwargs``.
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    **{name: functools.partial(optim.base_optimizer, name)
       for name in optim.OPTIMIZERS},
    "sss": sss.sparse_structure_selection,
}
_SECTION_ARGUMENTS = ("learning_rate", "momentum", "weight_decay")


def make_optimizer(opt: Mapping[str, Any], total_steps: int, *,
                   learning_rate: float | None = None,
                   schedule: str | None = None,
                   warmup_steps: int | None = None
                   ) -> optax.GradientTransformation:
  """The optimizer of a config's ``optimizer`` section, with its schedule.

  The keyword arguments override the section's fields without copying it
  (the post-training stages fine-tune with a cosine schedule over their own
  steps from their own learning rate).

  Args:
    opt: the ``optimizer`` section: ``name``, ``learning_rate``,
      ``schedule``, ``warmup_steps``, ``momentum``, ``weight_decay`` and
      ``kwargs`` (passed to the optimizer, e.g. SSS's ``strength``).
    total_steps: the number of steps the schedule spans.
    learning_rate: overrides ``opt['learning_rate']``.
    schedule: overrides ``opt['schedule']``.
    warmup_steps: overrides ``opt['warmup_steps']``.

  Returns:
    An `optax.GradientTransformation`.

  Raises:
    ValueError: an unknown optimizer name or argument.
  """
  name = opt["name"]
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name: got {name!r}; allowed: "
                     f"{', '.join(sorted(OPTIMIZERS))}")
  lr = optim.make_schedule(
      opt["learning_rate"] if learning_rate is None else learning_rate,
      opt["schedule"] if schedule is None else schedule,
      opt["warmup_steps"] if warmup_steps is None else warmup_steps,
      total_steps)
  factory = OPTIMIZERS[name]
  allowed = [n for n in inspect.signature(factory).parameters
             if n not in _SECTION_ARGUMENTS]
  return _call("optimizer.kwargs", functools.partial(
      factory, learning_rate=lr, momentum=opt["momentum"],
      weight_decay=opt["weight_decay"]), dict(opt.get("kwargs") or {}),
               allowed)
