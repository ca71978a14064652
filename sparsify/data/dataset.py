"""In-memory image-classification datasets: `Split`, `Dataset`, errors."""

import dataclasses

import numpy as np


class MissingDataError(FileNotFoundError):
  """The dataset's files are not on this machine.

  The message is one line: the dataset, where it was looked for, and how to
  get it.
  """


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset, held in memory.

  Attributes:
    images: uint8 array of shape ``(N, H, W, C)``, raw pixel values.
    labels: int32 array of shape ``(N,)``, class indices.
  """

  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise ValueError(
          'Split.images must be uint8 of shape (N, H, W, C), got '
          f'{self.images.dtype} {self.images.shape}')
    if self.labels.dtype != np.int32 or self.labels.ndim != 1:
      raise ValueError(
          'Split.labels must be int32 of shape (N,), got '
          f'{self.labels.dtype} {self.labels.shape}')
    if len(self.images) != len(self.labels):
      raise ValueError(
          f'Split has {len(self.images)} images but {len(self.labels)} labels')

  def __len__(self) -> int:
    return len(self.labels)


def channel_stats(
    images: np.ndarray, chunk: int = 1024,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and standard deviation of uint8 images, in [0, 1] units.

  Computed exactly from per-channel histograms of the 256 pixel values, a
  chunk of images at a time, so memory stays small for large splits:
  ``mean_c = sum_v p_c(v) v / 255`` and
  ``std_c = sqrt(sum_v p_c(v) (v / 255 - mean_c)^2)``.

  Args:
    images: uint8 array of shape ``(N, H, W, C)``.
    chunk: number of images counted at a time.

  Returns:
    ``(mean, std)``, two tuples of ``C`` floats.

  Raises:
    ValueError: ``images`` is empty.

  Example:
    >>> import numpy as np
    >>> from sparsify import data
    >>> images = np.zeros((2, 4, 4, 3), np.uint8)
    >>> images[1] = 255  # half the pixels black, half white, in every channel
    >>> data.channel_stats(images)
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
  """
  if not len(images):
    raise ValueError('channel_stats needs at least one image')
  num_channels = images.shape[-1]
  counts = np.zeros((num_channels, 256), np.int64)
  offsets = np.arange(num_channels, dtype=np.int64) * 256
  for start in range(0, len(images), chunk):
    block = images[start:start + chunk].reshape(-1, num_channels)
    counts += np.bincount(
        (block + offsets).ravel(), minlength=256 * num_channels
    ).reshape(num_channels, 256)
  values = np.arange(256, dtype=np.float64) / 255.0
  total = counts.sum(axis=1)
  mean = counts @ values / total
  var = counts @ values**2 / total - mean**2
  std = np.sqrt(np.maximum(var, 0.0))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A labelled image dataset with its normalization constants.

  Attributes:
    name: the dataset's name, e.g. ``'fashion_mnist'``.
    train: the training split.
    eval: the evaluation split.
    num_classes: number of classes; labels are in ``[0, num_classes)``.
    mean: per-channel mean of the training images, in [0, 1] pixel units.
    std: per-channel standard deviation of the training images, same units.
  """

  name: str
  train: Split
  eval: Split
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __post_init__(self):
    if self.train.images.shape[1:] != self.eval.images.shape[1:]:
      raise ValueError(
          f'{self.name}: train images are {self.train.images.shape[1:]}, '
          f'eval images {self.eval.images.shape[1:]}')
    channels = self.input_shape[-1]
    if len(self.mean) != channels or len(self.std) != channels:
      raise ValueError(
          f'{self.name}: mean and std need {channels} values, got '
          f'{self.mean} and {self.std}')
    for split_name, split in (('train', self.train), ('eval', self.eval)):
      if len(split) and (split.labels.min() < 0 or
                         split.labels.max() >= self.num_classes):
        raise ValueError(
            f'{self.name}: {split_name} labels outside [0, '
            f'{self.num_classes})')

  @classmethod
  def from_splits(
      cls,
      name: str,
      train: Split,
      eval: Split,  # pylint: disable=redefined-builtin
      num_classes: int,
  ) -> 'Dataset':
    """Builds a `Dataset` whose mean and std are computed on ``train``.

    Args:
      name: the dataset's name.
      train: the training split; gives ``mean`` and ``std``.
      eval: the evaluation split.
      num_classes: number of classes.

    Returns:
      A `Dataset`.
    """
    mean, std = channel_stats(train.images)
    return cls(name=name, train=train, eval=eval, num_classes=num_classes,
               mean=mean, std=std)

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """The shape of one image, ``(H, W, C)``."""
    return tuple(self.train.images.shape[1:])
