"""Argument checks shared by every factory: one line naming the argument.

Every check looks at Python numbers only: a value that is an array or a
schedule (as `optax.inject_hyperparams` passes hyper-parameters, traced
under `jax.jit`) is accepted as it is, so that a factory can be wrapped by
it. A check raises `ValueError` with ``"<name>: got <value>; allowed:
<what>"``.
"""

from collections.abc import Iterable
import math
from typing import Any

import numpy as np

NO_PARAMS_MSG = ("this transform reads the current parameters: call "
                 "`tx.update(updates, state, params)` with params")


def is_number(value: Any) -> bool:
  """Whether ``value`` is a Python int or float (not a bool, array or schedule).

  Args:
    value: anything.

  Returns:
    True for a Python number, which a check can compare.
  """
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail(name: str, value: Any, allowed: str) -> None:
  raise ValueError(f"{name}: got {value!r}; allowed: {allowed}")


def check_fraction(name: str, value: Any, *, closed: bool = False) -> None:
  """Checks that a Python number lies in [0, 1) (``closed``: [0, 1]).

  Args:
    name: the argument's name, for the error message.
    value: the value to check; arrays and schedules pass.
    closed: whether 1 is allowed.

  Raises:
    ValueError: ``value`` is a Python number outside the interval.

  Example:
    >>> from sparsify.core import checks
    >>> checks.check_fraction("sparsity", 0.9)
    >>> checks.check_fraction("sparsity", 1.0)
    Traceback (most recent call last):
      ...
    ValueError: sparsity: got 1.0; allowed: a fraction in [0, 1)
  """
  if is_number(value) and not (
      0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
    _fail(name, value, f"a fraction in [0, 1{']' if closed else ')'}")


def check_nonnegative(name: str, value: Any) -> None:
  """Checks that a Python number is finite and >= 0.

  Args:
    name: the argument's name.
    value: the value to check; arrays and schedules pass.

  Raises:
    ValueError: ``value`` is a negative, infinite or NaN Python number.
  """
  if is_number(value) and not (math.isfinite(value) and value >= 0):
    _fail(name, value, "a finite number >= 0 or a schedule")


def check_positive(name: str, value: Any) -> None:
  """Checks that a Python number is finite and > 0.

  Args:
    name: the argument's name.
    value: the value to check; arrays and schedules pass.

  Raises:
    ValueError: ``value`` is not a finite positive Python number.
  """
  if is_number(value) and not (math.isfinite(value) and value > 0):
    _fail(name, value, "a finite number > 0 or a schedule")


def check_integer(name: str, value: Any, low: int = 1) -> None:
  """Checks that a Python number is an integer >= ``low``.

  Args:
    name: the argument's name.
    value: the value to check; arrays pass.
    low: the smallest allowed value.

  Raises:
    ValueError: ``value`` is a Python number that is not an integer >=
      ``low``.
  """
  if is_number(value) and not (
      math.isfinite(value) and float(value).is_integer() and value >= low):
    _fail(name, value, f"an integer >= {low}")


def check_static_integer(name: str, value: Any, low: int | None = None) -> None:
  """Checks that a structural argument is a Python integer (>= ``low``).

  A structural argument fixes shapes or Python control flow (a number of
  centres, an axis), so it cannot be traced: under `optax.inject_hyperparams`
  it goes in ``static_args``.

  Args:
    name: the argument's name.
    value: the value to check.
    low: the smallest allowed value, or None for no bound.

  Raises:
    ValueError: ``value`` is not a Python (or numpy) integer, or is below
      ``low``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.core import checks
    >>> checks.check_static_integer("centres", 3, 1)
    >>> checks.check_static_integer("centres", jnp.asarray(3), 1)
    Traceback (most recent call last):
      ...
    ValueError: centres: got Array(3, dtype=int32, weak_type=True); allowed: a Python integer >= 1 (static: name it in optax.inject_hyperparams's static_args)
  """
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or (low is not None and value < low)):
    bound = "" if low is None else f" >= {low}"
    _fail(name, value, f"a Python integer{bound} (static: name it in "
          "optax.inject_hyperparams's static_args)")


def check_one_of(name: str, value: Any, allowed: Iterable[str]) -> None:
  """Checks that ``value`` is one of ``allowed``.

  Args:
    name: the argument's name.
    value: the value to check.
    allowed: the allowed values.

  Raises:
    ValueError: ``value`` is not in ``allowed``.
  """
  allowed = tuple(allowed)
  if value not in allowed:
    _fail(name, value, ", ".join(map(str, allowed)))


def check_window(begin_step: Any, end_step: Any) -> None:
  """Checks ``0 <= begin_step <= end_step`` for Python integers.

  Args:
    begin_step: the first step of a schedule window.
    end_step: its last step.

  Raises:
    ValueError: a Python integer is negative, or the window is reversed.
  """
  check_integer("begin_step", begin_step, 0)
  check_integer("end_step", end_step, 0)
  if is_number(begin_step) and is_number(end_step) and end_step < begin_step:
    raise ValueError(f"end_step: got begin_step={begin_step}, end_step="
                     f"{end_step}; allowed: end_step >= begin_step")


def require_params(params: Any) -> None:
  """Raises the one message of a transform called without ``params``.

  Args:
    params: what ``update`` was given as ``params``.

  Raises:
    ValueError: ``params`` is None.
  """
  if params is None:
    raise ValueError(NO_PARAMS_MSG)
