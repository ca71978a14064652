"""Datasets read from files on this machine: bundled MNIST and IDX folders."""

import importlib.resources
import os

import numpy as np

from sparsify.data import dataset as dataset_lib
from sparsify.data import idx

EMBEDDED_TRAIN_SIZE = 8000
EMBEDDED_SEED = 0
_ASSETS = 'assets/mnist'

# The four files of an MNIST-style IDX folder; each may end in ``.gz``.
IDX_FILES = {
    'train_images': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'eval_images': 't10k-images-idx3-ubyte',
    'eval_labels': 't10k-labels-idx1-ubyte',
}


def _split_from_arrays(images: np.ndarray, labels: np.ndarray,
                       where: str) -> dataset_lib.Split:
  """Adds the channel axis to ``(N, H, W)`` images and checks the pair."""
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8 or images.ndim != 4 or labels.ndim != 1:
    raise ValueError(
        f'{where}: expected uint8 images (N, H, W) and labels (N,), got '
        f'{images.dtype} {images.shape} and {labels.dtype} {labels.shape}')
  if len(images) != len(labels):
    raise ValueError(
        f'{where}: {len(images)} images but {len(labels)} labels')
  return dataset_lib.Split(images=images, labels=labels.astype(np.int32))


def _read_asset(filename: str) -> np.ndarray:
  resource = importlib.resources.files('sparsify.data').joinpath(
      f'{_ASSETS}/{filename}')
  with importlib.resources.as_file(resource) as path:
    return idx.read_idx(path)


def load_embedded_mnist() -> dataset_lib.Dataset:
  """The 10,000 MNIST test digits bundled with the package, split 8,000/2,000.

  The split uses the fixed permutation ``np.random.default_rng(0)``, not
  the first 8,000 digits: the first 5,000 test digits come from NIST's
  training set (written by Census Bureau employees) and are cleaner and
  easier than the last 5,000 (written by high-school students), as LeCun's
  MNIST page notes, so a contiguous split would give an eval set harder
  than the train set.

  Returns:
    A `Dataset` named ``'embedded_mnist'`` with 28x28x1 images, 10 classes,
    mean and std computed on its 8,000 training digits.

  Example:
    >>> from sparsify import data
    >>> ds = data.load_embedded_mnist()
    >>> ds.name, ds.train.images.shape, ds.eval.labels.shape
    ('embedded_mnist', (8000, 28, 28, 1), (2000,))
    >>> [round(x, 4) for x in ds.mean + ds.std]
    [0.1326, 0.3106]
  """
  images = _read_asset('t10k-images-idx3-ubyte.gz')
  labels = _read_asset('t10k-labels-idx1-ubyte.gz')
  split = _split_from_arrays(images, labels, 'embedded MNIST')
  order = np.random.default_rng(EMBEDDED_SEED).permutation(len(split))
  train_idx = order[:EMBEDDED_TRAIN_SIZE]
  eval_idx = order[EMBEDDED_TRAIN_SIZE:]
  return dataset_lib.Dataset.from_splits(
      'embedded_mnist',
      train=dataset_lib.Split(split.images[train_idx], split.labels[train_idx]),
      eval=dataset_lib.Split(split.images[eval_idx], split.labels[eval_idx]),
      num_classes=10)


def find_idx_files(
    data_dir: str | os.PathLike[str],
) -> tuple[dict[str, str], list[str]]:
  """Looks for the four IDX files in ``data_dir``.

  Args:
    data_dir: the folder to search.

  Returns:
    ``(found, missing)``: a dict from the keys of `IDX_FILES` to the paths
    found (the uncompressed file is preferred to the ``.gz`` one), and the
    names of the files not found, as ``'name[.gz]'``.
  """
  found, missing = {}, []
  for key, stem in IDX_FILES.items():
    for candidate in (stem, stem + '.gz'):
      path = os.path.join(data_dir, candidate)
      if os.path.isfile(path):
        found[key] = path
        break
    else:
      missing.append(stem + '[.gz]')
  return found, missing


def has_idx_files(data_dir: str | os.PathLike[str] | None) -> bool:
  """Returns whether ``data_dir`` holds all four IDX files.

  Args:
    data_dir: the folder to look in, or ``None``.

  Returns:
    True if each of `IDX_FILES` is there, raw or ``.gz``; False for ``None``.
  """
  return data_dir is not None and not find_idx_files(data_dir)[1]


def load_idx_dir(
    name: str,
    data_dir: str | os.PathLike[str],
    *,
    num_classes: int = 10,
    how_to_get: str = 'pass --config.data.data_dir=DIR, a folder holding them',
) -> dataset_lib.Dataset:
  """Loads an MNIST-style dataset from the four IDX files in a folder.

  The train split is ``train-*``, the eval split ``t10k-*``; each file may
  be gzip-compressed (``.gz``) or not.

  Args:
    name: the dataset's name, used in the result and in error messages.
    data_dir: the folder holding the files.
    num_classes: number of classes.
    how_to_get: the end of the error message when files are missing.

  Returns:
    A `Dataset` with mean and std computed on the train split.

  Raises:
    MissingDataError: if a file is missing; the message names the folder.
    ValueError: if a file is corrupt or the arrays do not match.

  Example:
    >>> import os, struct, tempfile
    >>> import numpy as np
    >>> from sparsify import data
    >>> def write_idx(path, array):  # uint8 IDX, as MNIST ships it
    ...   header = struct.pack(f'>HBB{array.ndim}I', 0, 0x08, array.ndim,
    ...                        *array.shape)
    ...   with open(path, 'wb') as f:
    ...     _ = f.write(header + array.astype(np.uint8).tobytes())
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   for prefix, n in (('train', 6), ('t10k', 4)):
    ...     write_idx(os.path.join(tmp, f'{prefix}-images-idx3-ubyte'),
    ...               np.full((n, 8, 8), 128))
    ...     write_idx(os.path.join(tmp, f'{prefix}-labels-idx1-ubyte'),
    ...               np.arange(n) % 10)
    ...   ds = data.load_idx_dir('tiny', tmp)
    >>> len(ds.train), len(ds.eval), ds.input_shape
    (6, 4, (8, 8, 1))
  """
  found, missing = find_idx_files(data_dir)
  if missing:
    raise dataset_lib.MissingDataError(
        f'{name}: IDX files not found in {os.fspath(data_dir)} (missing '
        f'{", ".join(missing)}); {how_to_get}')
  arrays = {key: idx.read_idx(path) for key, path in found.items()}
  train = _split_from_arrays(arrays['train_images'], arrays['train_labels'],
                             f'{name} train files in {data_dir}')
  eval_split = _split_from_arrays(arrays['eval_images'], arrays['eval_labels'],
                                  f'{name} t10k files in {data_dir}')
  return dataset_lib.Dataset.from_splits(
      name, train=train, eval=eval_split, num_classes=num_classes)
