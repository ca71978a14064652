"""Datasets read through `tfds.data_source`, without TensorFlow.

`tfds.data_source` gives random access to a prepared dataset stored as
ArrayRecord files; examples are decoded with numpy (and PIL for encoded
images). The datasets used here fit in memory, so they are read once, in
chunks, into numpy arrays.
"""

import os
from typing import Any

import numpy as np

from sparsify.data import dataset as dataset_lib

_CHUNK = 1024


def default_data_dir() -> str:
  """Returns the folder tfds looks in when no ``data_dir`` is given.

  Returns:
    ``$TFDS_DATA_DIR`` if set, else ``~/tensorflow_datasets``, with ``~``
    expanded.
  """
  return os.path.expanduser(
      os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


def how_to_prepare(name: str) -> str:
  """Returns the end of the error message when a tfds dataset is missing.

  Args:
    name: the tfds name of the dataset, e.g. ``'cifar10'``.

  Returns:
    One sentence: the ``tfds build`` command that prepares the dataset, and
    the flag that points a run at it.
  """
  return (
      'prepare it once on a machine with network and TensorFlow: '
      f'`tfds build {name} --file_format=array_record --data_dir=DIR`, '
      'then pass --config.data.data_dir=DIR')


def _open(name: str, split: str, data_dir: str | None) -> Any:
  """Calls `tfds.data_source`, turning "not prepared" into MissingDataError."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False)
  except (tfds.core.DatasetNotFoundError, KeyError, NotImplementedError,
          FileNotFoundError) as e:
    # Without an ArrayRecord copy in data_dir, tfds raises KeyError ("splits
    # is empty") or NotImplementedError (no random-access file format).
    where = data_dir if data_dir is not None else default_data_dir()
    raise dataset_lib.MissingDataError(
        f'{name}: no tfds dataset prepared in ArrayRecord format in {where}; '
        f'{how_to_prepare(name)}') from e


def materialize(source: Any, where: str = '') -> dataset_lib.Split:
  """Reads every example of a random-access source into a `Split`.

  Reads ``_CHUNK`` examples per call with ``source.__getitems__`` when the
  source has it (tfds's ArrayRecord sources read those in parallel), one at
  a time with ``source[i]`` otherwise.

  Args:
    source: a sequence of ``{'image': uint8 (H, W, C), 'label': int}``
      dicts, e.g. what `tfds.data_source` returns.
    where: how error messages name the source.

  Returns:
    The `Split`, in the source's order.

  Raises:
    ValueError: the source is empty or its images are not uint8 ``(H, W, C)``.

  Example:
    >>> import numpy as np
    >>> from sparsify.data import tfds_source
    >>> source = [{'image': np.zeros((4, 4, 3), np.uint8), 'label': i}
    ...           for i in range(5)]
    >>> split = tfds_source.materialize(source)
    >>> split.images.shape, split.labels
    ((5, 4, 4, 3), array([0, 1, 2, 3, 4], dtype=int32))
  """
  n = len(source)
  if n == 0:
    raise ValueError(f'{where}: no examples')
  get_many = getattr(source, '__getitems__', None)
  images = labels = None
  for start in range(0, n, _CHUNK):
    stop = min(n, start + _CHUNK)
    keys = list(range(start, stop))
    examples = (get_many(keys) if get_many is not None
                else [source[k] for k in keys])
    if images is None:
      first = np.asarray(examples[0]['image'])
      if first.dtype != np.uint8 or first.ndim != 3:
        raise ValueError(f'{where}: expected uint8 (H, W, C) images, got '
                         f'{first.dtype} {first.shape}')
      images = np.empty((n, *first.shape), np.uint8)
      labels = np.empty((n,), np.int32)
    np.stack([ex['image'] for ex in examples], out=images[start:stop])
    labels[start:stop] = [ex['label'] for ex in examples]
  return dataset_lib.Split(images=images, labels=labels)


def load_tfds(
    name: str, data_dir: str | None = None, *, num_classes: int = 10,
    train_split: str = 'train', eval_split: str = 'test',
) -> dataset_lib.Dataset:
  """Loads a prepared tfds image-classification dataset into memory.

  Args:
    name: the tfds name, e.g. ``'mnist'``, ``'cifar10'``.
    data_dir: the tfds data folder; tfds's default when ``None``.
    num_classes: number of classes.
    train_split: the tfds split used for training.
    eval_split: the tfds split used for evaluation.

  Returns:
    A `Dataset` with mean and std computed on the train split.

  Raises:
    MissingDataError: if the dataset is not prepared in ``data_dir``; it is
      never downloaded here.

  Example:
    Once prepared, ``data.load_tfds('cifar10', DIR).input_shape`` is
    ``(32, 32, 3)``. In a folder without it, the error says how to prepare
    it:

    >>> import tempfile
    >>> from sparsify import data
    >>> with tempfile.TemporaryDirectory() as empty:
    ...   try:
    ...     data.load_tfds('mnist', data_dir=empty)
    ...   except data.MissingDataError as e:
    ...     print(e)
    mnist: no tfds dataset prepared in ArrayRecord format in ...; prepare it
    once on a machine with network and TensorFlow: `tfds build mnist
    --file_format=array_record --data_dir=DIR`, then pass
    --config.data.data_dir=DIR
  """
  splits = {}
  for split in (train_split, eval_split):
    source = _open(name, split, data_dir)
    splits[split] = materialize(source, where=f'tfds {name} {split}')
  return dataset_lib.Dataset.from_splits(
      name, train=splits[train_split], eval=splits[eval_split],
      num_classes=num_classes)
