"""`load_dataset`: a dataset by name, from the source that has it."""

import os

from sparsify.data import dataset as dataset_lib
from sparsify.data import sources
from sparsify.data import tfds_source

DATASETS = ('embedded_mnist', 'mnist', 'fashion_mnist', 'cifar10')
SOURCES = ('auto', 'embedded', 'idx', 'tfds')

# Where Debian's `dataset-fashion-mnist` package installs the IDX files.
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'

_SOURCES_OF = {
    'embedded_mnist': ('embedded',),
    'mnist': ('idx', 'tfds'),
    'fashion_mnist': ('idx', 'tfds'),
    'cifar10': ('tfds',),
}
_NUM_CLASSES = {name: 10 for name in DATASETS}
_DEFAULT_IDX_DIR = {'fashion_mnist': FASHION_MNIST_DIR}
_HOW_TO_GET_IDX = {
    'mnist': 'pass --config.data.data_dir=DIR, a folder holding the four '
             'MNIST IDX files',
    'fashion_mnist': 'install them with `apt-get install -y '
                     'dataset-fashion-mnist`, or pass '
                     '--config.data.data_dir=DIR, a folder holding the four '
                     'IDX files',
}


def _allowed(values) -> str:
  return ', '.join(sorted(values))


def _check(name: str, source: str) -> None:
  if name not in DATASETS:
    raise ValueError(
        f"data.name: unknown dataset '{name}'; allowed: {_allowed(DATASETS)}")
  if source not in SOURCES:
    raise ValueError(
        f"data.source: unknown source '{source}'; allowed: "
        f'{_allowed(SOURCES)}')
  if source != 'auto' and source not in _SOURCES_OF[name]:
    raise ValueError(
        f"data.source: {name} cannot be read from '{source}'; allowed: "
        f"{_allowed(('auto',) + _SOURCES_OF[name])}")


def _load_idx(name: str, data_dir: str | None) -> dataset_lib.Dataset:
  folder = data_dir if data_dir is not None else _DEFAULT_IDX_DIR.get(name)
  if folder is None:
    raise dataset_lib.MissingDataError(
        f"{name}: source 'idx' needs a folder of IDX files; "
        f'{_HOW_TO_GET_IDX[name]}')
  return sources.load_idx_dir(name, folder, num_classes=_NUM_CLASSES[name],
                              how_to_get=_HOW_TO_GET_IDX[name])


def _load_auto(name: str, data_dir: str | None) -> dataset_lib.Dataset:
  """Embedded data, else IDX files when they are there, else tfds."""
  if name == 'embedded_mnist':
    return sources.load_embedded_mnist()
  num_classes = _NUM_CLASSES[name]
  idx_dir = data_dir if data_dir is not None else _DEFAULT_IDX_DIR.get(name)
  if 'idx' not in _SOURCES_OF[name] or idx_dir is None:
    return tfds_source.load_tfds(name, data_dir, num_classes=num_classes)
  if sources.has_idx_files(idx_dir):
    return _load_idx(name, idx_dir)
  try:
    return tfds_source.load_tfds(name, data_dir, num_classes=num_classes)
  except dataset_lib.MissingDataError as e:
    tfds_dir = data_dir if data_dir is not None else (
        tfds_source.default_data_dir())
    raise dataset_lib.MissingDataError(
        f'{name}: found neither IDX files in {idx_dir} nor a prepared tfds '
        f'dataset in {tfds_dir}; {_HOW_TO_GET_IDX[name]}; or, for tfds, '
        f'{tfds_source.how_to_prepare(name)}') from e


def load_dataset(
    name: str, *, source: str = 'auto', data_dir: str | os.PathLike[str] |
    None = None,
) -> dataset_lib.Dataset:
  """Loads a dataset into memory, by name.

  Sources:

  * ``'embedded'``: the 10,000 MNIST test digits shipped with the package,
    split 8,000 / 2,000 (``embedded_mnist`` only; works offline).
  * ``'idx'``: the four MNIST-style IDX files (``train-*`` for training,
    ``t10k-*`` for evaluation) in ``data_dir``; for ``fashion_mnist`` it
    defaults to ``/usr/share/datasets/fashion-mnist``.
  * ``'tfds'``: a dataset prepared by tensorflow-datasets in ArrayRecord
    format in ``data_dir`` (tfds's default folder when ``None``), read with
    `tfds.data_source` (no TensorFlow needed); never downloaded here.
    Evaluation uses the ``'test'`` split.
  * ``'auto'``: ``embedded`` for ``embedded_mnist``; for ``fashion_mnist``
    and ``mnist``, ``idx`` if the four IDX files are in ``data_dir`` (or,
    for ``fashion_mnist``, the default folder), else ``tfds``; ``tfds`` for
    ``cifar10``.

  Args:
    name: one of `DATASETS`.
    source: one of `SOURCES`.
    data_dir: the folder of IDX files or the tfds data folder.

  Returns:
    The `Dataset`, with mean and std computed on its train split.

  Raises:
    ValueError: for an unknown name or source, or a source that does not
      hold that dataset.
    MissingDataError: if the data is not on this machine; the one-line
      message says where it looked and how to get the data.

  Example:
    >>> from sparsify import data
    >>> ds = data.load_dataset('embedded_mnist')
    >>> len(ds.train), len(ds.eval), ds.input_shape, ds.num_classes
    (8000, 2000, (28, 28, 1), 10)
  """
  _check(name, source)
  if data_dir is not None:
    data_dir = os.fspath(data_dir)
  if source == 'auto':
    return _load_auto(name, data_dir)
  if source == 'embedded':
    return sources.load_embedded_mnist()
  if source == 'idx':
    return _load_idx(name, data_dir)
  return tfds_source.load_tfds(name, data_dir, num_classes=_NUM_CLASSES[name])
