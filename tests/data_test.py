"""Tests for sparsify.data: IDX files, dataset sources and batches."""

import collections
import gzip
import hashlib
import importlib.resources
import itertools
import os
import struct
import threading
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sparsify import data
from sparsify.data import sources

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
_IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
              np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
  """An IDX file's bytes, header packed by hand, data big-endian."""
  code = _IDX_CODES[array.dtype.type]
  header = struct.pack('>HBB', 0, code, array.ndim)
  header += struct.pack(f'>{array.ndim}I', *array.shape)
  return header + array.astype(array.dtype.newbyteorder('>')).tobytes()


def write_idx(path, array: np.ndarray, compress: bool) -> str:
  content = idx_bytes(array)
  with open(path, 'wb') as f:
    f.write(gzip.compress(content) if compress else content)
  return str(path)


def asset(filename: str):
  return importlib.resources.files('sparsify.data').joinpath(
      f'assets/mnist/{filename}')


def row_hashes(images: np.ndarray) -> list[bytes]:
  return [hashlib.sha1(image.tobytes()).digest() for image in images]


def normalize_reference(images, mean, std):
  x = images.astype(np.float64) / 255.0
  return (x - np.asarray(mean)) / np.asarray(std)


# --- IDX files ---------------------------------------------------------------

@pytest.mark.parametrize('compress', [False, True])
@pytest.mark.parametrize('dtype,shape', [
    (np.uint8, (7, 5, 3)), (np.uint8, (11,)), (np.int8, (4, 2)),
    (np.int16, (3, 3)), (np.int32, (2, 3, 4, 5)), (np.float32, (6,)),
    (np.float64, (2, 2)),
])
def test_read_idx_matches_numpy(tmp_path, compress, dtype, shape):
  rng = np.random.default_rng(1)
  if np.issubdtype(dtype, np.integer):
    info = np.iinfo(dtype)
    array = rng.integers(info.min, info.max, size=shape, endpoint=True,
                         dtype=dtype)
  else:
    array = rng.normal(size=shape).astype(dtype)
  path = write_idx(tmp_path / 'a.idx', array, compress)
  got = data.read_idx(path)
  assert got.dtype == np.dtype(dtype) and got.shape == shape
  np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize('compress', [False, True])
def test_read_idx_truncated(tmp_path, compress):
  content = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
  if compress:
    content = gzip.compress(content)
  path = tmp_path / 'cut-idx3-ubyte'
  path.write_bytes(content[:-7])
  with pytest.raises(ValueError, match='cut-idx3-ubyte'):
    data.read_idx(path)


@pytest.mark.parametrize('content', [
    b'\x01\x00\x08\x01\x00\x00\x00\x01\x07',  # first bytes not zero
    b'\x00\x00\x07\x01\x00\x00\x00\x01\x07',  # unknown type code
    b'\x00\x00\x08\x00',  # no dimensions
    b'\x00\x00\x08\x02\x00\x00\x00\x01',  # header cut short
    b'\x00\x08',  # shorter than a magic number
    b'\x00\x00\x08\x01\x00\x00\x00\x01\x07\x07',  # trailing byte
])
def test_read_idx_corrupt(tmp_path, content):
  path = tmp_path / 'bad.idx'
  path.write_bytes(content)
  with pytest.raises(ValueError, match='bad.idx'):
    data.read_idx(path)


# --- The bundled MNIST digits -------------------------------------------------

@pytest.fixture(scope='module')
def embedded():
  return data.load_dataset('embedded_mnist')


@pytest.mark.parametrize('filename,md5', [
    ('t10k-images-idx3-ubyte.gz', '9fb629c4189551a2d022fa330f9573f3'),
    ('t10k-labels-idx1-ubyte.gz', 'ec29112dd5afa0611ce80d1b7f02629c'),
])
def test_bundled_files_md5(filename, md5):
  assert hashlib.md5(asset(filename).read_bytes()).hexdigest() == md5


def test_embedded_shapes(embedded):
  assert embedded.name == 'embedded_mnist'
  assert embedded.num_classes == 10
  assert embedded.input_shape == (28, 28, 1)
  assert embedded.train.images.shape == (8000, 28, 28, 1)
  assert embedded.eval.images.shape == (2000, 28, 28, 1)
  assert embedded.train.images.dtype == np.uint8
  assert embedded.train.labels.dtype == np.int32
  assert embedded.eval.labels.shape == (2000,)


def test_embedded_is_deterministic(embedded):
  again = data.load_dataset('embedded_mnist', source='embedded')
  for a, b in ((embedded.train, again.train), (embedded.eval, again.eval)):
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
  assert embedded.mean == again.mean and embedded.std == again.std


def test_embedded_split_is_a_partition(embedded):
  with importlib.resources.as_file(asset('t10k-images-idx3-ubyte.gz')) as p:
    originals = data.read_idx(p)
  with importlib.resources.as_file(asset('t10k-labels-idx1-ubyte.gz')) as p:
    original_labels = data.read_idx(p)
  train, evals = (row_hashes(embedded.train.images),
                  row_hashes(embedded.eval.images))
  assert not set(train) & set(evals)
  assert (collections.Counter(train + evals)
          == collections.Counter(row_hashes(originals)))
  # Each image keeps its label.
  label_of = dict(zip(row_hashes(originals), original_labels))
  for split, hashes in ((embedded.train, train), (embedded.eval, evals)):
    np.testing.assert_array_equal(split.labels, [label_of[h] for h in hashes])
  # Not a contiguous split: both halves of the test set reach both splits.
  position = {h: i for i, h in enumerate(row_hashes(originals))}
  eval_positions = np.array([position[h] for h in evals])
  assert 800 < np.sum(eval_positions < 5000) < 1200


def test_embedded_label_counts(embedded):
  for split in (embedded.train, embedded.eval):
    counts = np.bincount(split.labels, minlength=10)
    assert counts.shape == (10,)
    expected = len(split) / 10
    assert np.all(counts > 0.7 * expected) and np.all(counts < 1.3 * expected)


def test_embedded_stats(embedded):
  x = embedded.train.images.astype(np.float64) / 255.0
  np.testing.assert_allclose(embedded.mean, [x.mean()], rtol=1e-12)
  np.testing.assert_allclose(embedded.std, [x.std()], rtol=1e-9)


# --- IDX folders --------------------------------------------------------------

def write_idx_dir(folder, rng, num_train=50, num_eval=20, shape=(9, 7)):
  """Writes the four files, images raw and labels gzipped; returns arrays."""
  folder.mkdir(parents=True, exist_ok=True)
  arrays = {
      'train_images': rng.integers(0, 256, (num_train, *shape), np.uint8),
      'train_labels': rng.integers(0, 10, (num_train,), np.uint8),
      'eval_images': rng.integers(0, 256, (num_eval, *shape), np.uint8),
      'eval_labels': rng.integers(0, 10, (num_eval,), np.uint8),
  }
  for key, array in arrays.items():
    compress = key.endswith('labels')
    name = sources.IDX_FILES[key] + ('.gz' if compress else '')
    write_idx(folder / name, array, compress)
  return arrays


@pytest.mark.parametrize('name,source', [
    ('mnist', 'idx'), ('mnist', 'auto'), ('fashion_mnist', 'idx'),
    ('fashion_mnist', 'auto'),
])
def test_idx_dir(tmp_path, name, source):
  arrays = write_idx_dir(tmp_path, np.random.default_rng(2))
  ds = data.load_dataset(name, source=source, data_dir=tmp_path)
  assert ds.name == name and ds.num_classes == 10
  assert ds.input_shape == (9, 7, 1)
  for split, prefix in ((ds.train, 'train'), (ds.eval, 'eval')):
    assert split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.images[..., 0],
                                  arrays[f'{prefix}_images'])
    np.testing.assert_array_equal(split.labels, arrays[f'{prefix}_labels'])
  x = arrays['train_images'].astype(np.float64) / 255.0
  np.testing.assert_allclose(ds.mean, [x.mean()], rtol=1e-12)
  np.testing.assert_allclose(ds.std, [x.std()], rtol=1e-9)


def test_idx_dir_count_mismatch(tmp_path):
  write_idx_dir(tmp_path, np.random.default_rng(3))
  write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz',
            np.zeros((19,), np.uint8), compress=True)
  with pytest.raises(ValueError, match='20 images but 19 labels'):
    data.load_dataset('mnist', source='idx', data_dir=tmp_path)


def test_missing_idx_dir(tmp_path):
  folder = tmp_path / 'no-such-folder'
  with pytest.raises(data.MissingDataError) as info:
    data.load_dataset('fashion_mnist', source='idx', data_dir=folder)
  message = str(info.value)
  assert isinstance(info.value, FileNotFoundError)
  assert 'fashion_mnist' in message and str(folder) in message
  assert 'apt-get install -y dataset-fashion-mnist' in message
  assert '\n' not in message


def test_missing_idx_dir_without_data_dir():
  with pytest.raises(data.MissingDataError, match='mnist.*data_dir'):
    data.load_dataset('mnist', source='idx')


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR),
                    reason=f'{FASHION_MNIST_DIR} absent: apt-get install -y '
                    'dataset-fashion-mnist')
def test_real_fashion_mnist():
  ds = data.load_dataset('fashion_mnist')
  assert ds.train.images.shape == (60000, 28, 28, 1)
  assert ds.eval.images.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.train.labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.eval.labels), [1000] * 10)
  x = ds.train.images.astype(np.float32) / 255.0
  np.testing.assert_allclose(ds.mean, [x.mean(dtype=np.float64)], rtol=1e-6)
  np.testing.assert_allclose(ds.std, [x.std(dtype=np.float64)], rtol=1e-6)


# --- Names and sources --------------------------------------------------------

def test_unknown_name():
  with pytest.raises(ValueError) as info:
    data.load_dataset('foo')
  assert str(info.value) == (
      "data.name: unknown dataset 'foo'; allowed: cifar10, embedded_mnist, "
      'fashion_mnist, mnist')


@pytest.mark.parametrize('name,source,match', [
    ('mnist', 'web', "unknown source 'web'; allowed: auto, embedded, idx"),
    ('cifar10', 'idx', "cifar10 cannot be read from 'idx'; allowed: auto, "
     'tfds'),
    ('embedded_mnist', 'tfds', 'allowed: auto, embedded$'),
])
def test_bad_source(name, source, match):
  with pytest.raises(ValueError, match=match):
    data.load_dataset(name, source=source)


# --- tfds ---------------------------------------------------------------------

class FakeSource:
  """A random-access source with known examples; records batched reads."""

  def __init__(self, images, labels, batched=True):
    self.images, self.labels, self.reads = images, labels, []
    if batched:
      self.__getitems__ = self._getitems

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {'image': self.images[i], 'label': np.int64(self.labels[i])}

  def _getitems(self, keys):
    self.reads.append(list(keys))
    return [self[k] for k in keys]


def fake_examples(shape, split, n):
  seed = {'train': 10, 'test': 11}[split]
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, *shape), np.uint8),
          rng.integers(0, 10, (n,), np.int64))


@pytest.mark.parametrize('batched', [True, False])
@pytest.mark.parametrize('name,shape', [('mnist', (28, 28, 1)),
                                        ('cifar10', (32, 32, 3))])
def test_tfds_source(tmp_path, name, shape, batched):
  sizes = {'train': 2100, 'test': 300}  # 2100: three reads of <= 1024.
  made = {}

  def as_data_source(builder, split, decoders=None, **kwargs):
    del decoders, kwargs
    assert builder.name == name
    assert builder.info.features['image'].shape == shape
    made[split] = FakeSource(*fake_examples(shape, split, sizes[split]),
                             batched=batched)
    return made[split]

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=as_data_source), \
      mock.patch.object(tfds, 'data_source', wraps=tfds.data_source) as spy:
    ds = data.load_dataset(name, source='tfds', data_dir=str(tmp_path))
  assert [c.args[0] for c in spy.call_args_list] == [name, name]
  assert [c.kwargs['split'] for c in spy.call_args_list] == ['train', 'test']
  for c in spy.call_args_list:
    assert c.kwargs['data_dir'] == str(tmp_path)
    assert c.kwargs['download'] is False
  assert ds.name == name and ds.input_shape == shape and ds.num_classes == 10
  for split, tfds_split in ((ds.train, 'train'), (ds.eval, 'test')):
    images, labels = fake_examples(shape, tfds_split, sizes[tfds_split])
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, labels)
    assert split.labels.dtype == np.int32
  if batched:
    reads = made['train'].reads
    assert [len(r) for r in reads] == [1024, 1024, 52]
    assert sum(reads, []) == list(range(2100))
  x = ds.train.images.astype(np.float64) / 255.0
  np.testing.assert_allclose(ds.mean, x.mean(axis=(0, 1, 2)), rtol=1e-12)
  np.testing.assert_allclose(ds.std, x.std(axis=(0, 1, 2)), rtol=1e-9)


def test_tfds_default_mock(mock_tfds):
  """Through tfds's own mocked ArrayRecord source and feature decoding."""
  del mock_tfds  # 64 random examples per split
  ds = data.load_dataset('cifar10')
  reference = tfds.data_source('cifar10', split='train', download=False)
  expected = [reference[i] for i in range(len(reference))]
  assert len(ds.train) == len(ds.eval) == 64
  np.testing.assert_array_equal(ds.train.images,
                                np.stack([e['image'] for e in expected]))
  np.testing.assert_array_equal(ds.train.labels,
                                [e['label'] for e in expected])


@pytest.mark.parametrize('name', ['mnist', 'cifar10'])
def test_tfds_not_prepared(tmp_path, name):
  with pytest.raises(data.MissingDataError) as info:
    data.load_dataset(name, data_dir=str(tmp_path))
  message = str(info.value)
  assert message.startswith(f'{name}: ') and str(tmp_path) in message
  assert f'tfds build {name}' in message and '\n' not in message


def test_fashion_mnist_auto_missing_everywhere(tmp_path):
  with pytest.raises(data.MissingDataError) as info:
    data.load_dataset('fashion_mnist', data_dir=str(tmp_path))
  message = str(info.value)
  assert message.startswith('fashion_mnist: found neither IDX files in '
                            f'{tmp_path} nor a prepared tfds dataset')
  assert 'apt-get install -y dataset-fashion-mnist' in message
  assert '\n' not in message


# --- Batches ------------------------------------------------------------------

def toy_split(n=10, shape=(4, 3, 3), seed=0):
  """Labels are the example indices, so batches reveal their order."""
  images = np.random.default_rng(seed).integers(0, 256, (n, *shape), np.uint8)
  return data.Split(images=images, labels=np.arange(n, dtype=np.int32))


MEAN, STD = (0.2, 0.5, 0.7), (0.3, 0.25, 0.1)


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def train_batches(split, **kwargs):
  return data.batches(split, batch_size=3, mean=MEAN, std=STD, **kwargs)


@pytest.mark.parametrize('start', [1, 2, 3, 4, 7])
def test_batches_resume(start):
  split = toy_split()  # 10 examples, 3 steps of 3 per epoch.
  full = take(train_batches(split, seed=5), 12)
  resumed = take(train_batches(split, seed=5, start_step=start), 12 - start)
  for a, b in zip(full[start:], resumed, strict=True):
    np.testing.assert_array_equal(a['label'], b['label'])
    np.testing.assert_array_equal(a['image'], b['image'])


def test_batches_epochs_are_seeded_permutations():
  split = toy_split(n=12)
  assert data.steps_per_epoch(split, 3) == 4
  labels = [b['label'] for b in take(train_batches(split, seed=3), 12)]
  epochs = [np.concatenate(labels[i:i + 4]) for i in range(0, 12, 4)]
  for e, order in enumerate(epochs):
    np.testing.assert_array_equal(np.sort(order), np.arange(12))
    np.testing.assert_array_equal(
        order, np.random.default_rng([3, e]).permutation(12))
  assert not np.array_equal(epochs[0], epochs[1])
  other_seed = np.concatenate(
      [b['label'] for b in take(train_batches(split, seed=4), 4)])
  assert not np.array_equal(epochs[0], other_seed)


def test_batches_drop_remainder():
  split = toy_split()
  assert data.steps_per_epoch(split, 3) == 3
  assert data.steps_per_epoch(split, 3, drop_remainder=False) == 4
  sizes = [len(b['label']) for b in
           take(train_batches(split, seed=0, drop_remainder=False), 8)]
  assert sizes == [3, 3, 3, 1, 3, 3, 3, 1]
  with pytest.raises(ValueError, match='larger than the split'):
    data.batches(split, batch_size=11, seed=0, mean=MEAN, std=STD)


def test_batches_normalization():
  split = toy_split()
  batch = next(train_batches(split, seed=1))
  assert batch['image'].dtype == np.float32 and batch['image'].shape == (
      3, 4, 3, 3)
  assert batch['label'].dtype == np.int32
  expected = normalize_reference(split.images[batch['label']], MEAN, STD)
  np.testing.assert_allclose(batch['image'], expected, rtol=1e-5, atol=1e-5)


def test_eval_batches_padding_and_mask():
  split = toy_split()
  out = list(data.eval_batches(split, batch_size=4, mean=MEAN, std=STD))
  assert len(out) == 3
  for batch in out:
    assert batch['image'].shape == (4, 4, 3, 3)
    assert batch['image'].dtype == np.float32
    assert batch['label'].dtype == np.int32
    assert batch['mask'].dtype == np.float32
  np.testing.assert_array_equal(out[-1]['mask'], [1, 1, 0, 0])
  np.testing.assert_array_equal(out[0]['mask'], [1, 1, 1, 1])
  np.testing.assert_array_equal(out[-1]['image'][2:], 0.0)
  np.testing.assert_array_equal(out[-1]['label'][2:], 0)
  images = np.concatenate([b['image'] for b in out])[:10]
  labels = np.concatenate([b['label'] for b in out])[:10]
  np.testing.assert_array_equal(labels, np.arange(10))
  np.testing.assert_allclose(
      images, normalize_reference(split.images, MEAN, STD),
      rtol=1e-5, atol=1e-5)


def test_prefetch_preserves_order_and_applies_put():
  out = list(data.prefetch(iter(range(50)), put=lambda x: x * x, size=3))
  assert out == [x * x for x in range(50)]


def test_prefetch_reraises_errors_of_the_producer():
  def broken():
    yield 1
    raise RuntimeError('disk on fire')

  it = data.prefetch(broken())
  assert next(it) == 1
  with pytest.raises(RuntimeError, match='disk on fire'):
    next(it)


def test_prefetch_close_stops_the_thread():
  it = data.prefetch(itertools.count(), size=2)
  assert [next(it) for _ in range(3)] == [0, 1, 2]
  it.close()
  time.sleep(0.3)
  assert not [t for t in threading.enumerate() if t.daemon and
              t.is_alive() and 'produce' in repr(t)]
