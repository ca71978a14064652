"""The types every sparsify module shares.

Parameters are addressed by their path in the pytree, joined with ``/``;
which parameters a method touches is chosen by a `paths.Where`.

A pytree of masks (`Masks`) is shaped like the parameters. A leaf that has
no mask (its parameter is not selected, so every weight is kept) is
`NO_MASK`, which is ``optax.MaskedNode()``: the value `optax.masked` puts in
its state for the leaves it leaves alone, so the masks held in an optimizer
state are read as they are (`masking.find_masks`), and every function that
takes masks accepts it (`masking.apply_masks`, `masking.fill_masks`). Being
an empty pytree node, it has no leaves: ``jax.tree.leaves(masks)`` yields the
boolean arrays only; test for it with `is_no_mask` (each `optax.masked`
makes its own ``MaskedNode()``, equal to `NO_MASK` but not the same object).
A whole pytree of masks that is absent is ``None``.
"""

from collections.abc import Callable
from typing import Any

import jax
import optax

Params = Any  # A pytree of arrays: the model's parameters.

# A pytree shaped like `Params` with boolean leaves (`True` keeps a weight),
# and `NO_MASK` where a parameter has no mask.
Masks = Any

Schedule = Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]

# A hyper-parameter: a number (possibly a traced array, as
# `optax.inject_hyperparams` passes it) or a schedule of the step count.
ScalarOrSchedule = float | jax.Array | Schedule

# The mask of a leaf that has none: every weight of its parameter is kept.
NO_MASK = optax.MaskedNode()


def is_no_mask(x: Any) -> bool:
  """Whether ``x`` is `NO_MASK` (the mask of a parameter that has none).

  Use it as ``is_leaf`` when mapping over masks and parameters together.

  Args:
    x: a node or leaf of a pytree of masks.

  Returns:
    True for `NO_MASK`.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.core import types
    >>> types.is_no_mask(types.NO_MASK), types.is_no_mask(jnp.ones(2, bool))
    (True, False)
  """
  return isinstance(x, optax.MaskedNode)
