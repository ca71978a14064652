"""The types every sparsify module shares.

Parameters are addressed by their path in the pytree, joined with ``/``;
which parameters a method touches is chosen by a `paths.Where`.
"""

from collections.abc import Callable
from typing import Any

import jax

Params = Any  # A pytree of arrays: the model's parameters.
Masks = Any  # A pytree shaped like (part of) `Params`, with boolean leaves.
Schedule = Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]
ScalarOrSchedule = float | Schedule


Params = Any  # A pytree of arrays: the model's parameters.


Masks = Any  # A pytree shaped like (part of) `Params`, with boolean leaves.


Schedule = Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]


ScalarOrSchedule = float | Schedule
