"""The `Unit`: a group of parameter slices that are one removable structure."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Unit:
  r"""A group of parameter slices that form one layer's neurons or channels.

  Attributes:
    name: a label for reports.
    gate: path of the 1-D gate over the units, or None (ungated).
    producers: ``(path, axis)`` pairs sliced along the units.
    fold: producer paths that absorb a non-negative gate instead of the
      consumers, when the gate follows a relu: :math:`\lambda\,
      \mathrm{relu}(z) = \mathrm{relu}(\lambda z)` for :math:`\lambda \ge
      0`, so scaling the kernel and bias (or the BatchNorm scale and shift)
      that produce :math:`z` is exact, and the next layer keeps the scale
      it was trained with. Empty, or a negative gate: the consumers absorb
      it.
    consumers: ``(path, axis)`` pairs sliced and scaled by the gate. When
      the consumer's axis is a multiple of the number of units, it is read
      as a flattened ``(positions, units)`` axis with units innermost, as
      after flattening NHWC feature maps into a Dense layer.
  """
  name: str
  gate: str | None
  producers: tuple[tuple[str, int], ...]
  consumers: tuple[tuple[str, int], ...]
  fold: tuple[str, ...] = ()


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
