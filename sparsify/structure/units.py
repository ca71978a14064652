"""The `Unit`: a group of parameter slices that are one removable structure."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Slot:
  """The slices of one parameter axis that belong to a unit's elements.

  Attributes:
    path: the variable's path, collection first (``'params/Conv_0/kernel'``,
      ``'batch_stats/BatchNorm_0/mean'``).
    axis: the axis sliced.
    index: ``(size, m)`` integers: element ``j`` of the unit owns indices
      ``index[j]`` of that axis (one index for a neuron's kernel column;
      ``m`` for a channel flattened over ``m`` pixels into a Dense kernel, or
      a group of ``m`` channels).
    consumer: True for an axis that reads the unit (the next layer's kernel
      rows), False for one that computes it (kernel columns, biases,
      normalization parameters, gates). Only producers are zeroed by
      masking; both are sliced by removal.
  """
  path: str
  axis: int
  index: np.ndarray
  consumer: bool = False


@dataclasses.dataclass(frozen=True, eq=False)
class Unit:
  """A removable structure of a model, found by `sparsify.structure_of`.

  Attributes:
    name: a label, from the module that first computes it (``'Conv_0'``,
      ``'layers_0/attn/query:head'`` when a module has several).
    size: the number of elements that can be removed one by one.
    kind: what one element is: ``'neuron'`` (a Dense output),
      ``'channel'`` (a convolution output), ``'head'`` (an attention head),
      ``'group'`` (a group of a grouped convolution; groups stay equal in
      size) or ``'stream'`` (a feature of a residual stream, added across
      blocks).
    slots: the `Slot` of every parameter axis the elements own.
    exact: True when removing elements computes what the masked model does.
    note: why a unit is not exact (None when it is).
  """
  name: str
  size: int
  kind: str
  slots: tuple[Slot, ...]
  exact: bool = True
  note: str | None = None

  def producers(self) -> tuple[Slot, ...]:
    """The slots that compute the unit.

    Returns:
      The slots with ``consumer`` False.
    """
    return tuple(s for s in self.slots if not s.consumer)

  def consumers(self) -> tuple[Slot, ...]:
    """The slots that read it.

    Returns:
      The slots with ``consumer`` True.
    """
    return tuple(s for s in self.slots if s.consumer)


def count_kept(keep: dict[str, np.ndarray]) -> dict[str, int]:
  """Units kept per group.

  Args:
    keep: ``{unit name: boolean array}`` of the units to keep.

  Returns:
    ``{unit name: number of units kept}``, Python ints.

  Example:
    >>> import numpy as np
    >>> from sparsify.structure import units
    >>> units.count_kept({'fc1': np.array([True, False, True])})
    {'fc1': 2}
  """
  return {name: int(np.sum(k)) for name, k in keep.items()}
