"""Image-classification data held in memory, and the batches a trainer reads.

Example:
  >>> from sparsify import data
  >>> ds = data.load_dataset('embedded_mnist')
  >>> train = data.batches(ds.train, batch_size=128, seed=0, mean=ds.mean,
  ...                      std=ds.std)
  >>> next(train)['image'].shape
  (128, 28, 28, 1)
"""

from sparsify.data.dataset import channel_stats
from sparsify.data.dataset import Dataset
from sparsify.data.dataset import MissingDataError
from sparsify.data.dataset import Split
from sparsify.data.idx import read_idx
from sparsify.data.load import DATASETS
from sparsify.data.load import load_dataset
from sparsify.data.load import SOURCES
from sparsify.data.pipeline import batches
from sparsify.data.pipeline import eval_batches
from sparsify.data.pipeline import steps_per_epoch
from sparsify.data.prefetch import prefetch
from sparsify.data.sources import load_embedded_mnist
from sparsify.data.sources import load_idx_dir
from sparsify.data.tfds_source import load_tfds

__all__ = (
    'DATASETS',
    'Dataset',
    'MissingDataError',
    'SOURCES',
    'Split',
    'batches',
    'channel_stats',
    'eval_batches',
    'load_dataset',
    'load_embedded_mnist',
    'load_idx_dir',
    'load_tfds',
    'prefetch',
    'read_idx',
    'steps_per_epoch',
)
