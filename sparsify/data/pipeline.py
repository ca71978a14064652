"""Batches for training and evaluation, from an in-memory `Split`.

Training batches are a pure function of ``(seed, step)``: epoch ``e`` visits
the examples in the order ``np.random.default_rng([seed, e]).permutation(N)``
and step ``s`` is batch ``s % steps_per_epoch`` of epoch
``s // steps_per_epoch``. A run restored from a checkpoint at step ``s``
calls `batches` with ``start_step=s`` and sees exactly the batches it would
have seen had it not stopped; no iterator state needs saving.
"""

from collections.abc import Iterator, Sequence

import numpy as np

from sparsify.data import dataset as dataset_lib

Batch = dict[str, np.ndarray]


def steps_per_epoch(split: dataset_lib.Split, batch_size: int, *,
                    drop_remainder: bool = True) -> int:
  """Number of training batches in one pass over ``split``.

  Args:
    split: the training split.
    batch_size: examples per batch.
    drop_remainder: whether the last, partial batch of each epoch is
      dropped (``N // batch_size`` steps) or kept (``ceil(N / batch_size)``).

  Returns:
    The number of steps per epoch.

  Raises:
    ValueError: ``batch_size`` is not positive.

  Example:
    >>> from sparsify import data
    >>> ds = data.load_dataset('embedded_mnist')  # 8,000 training images
    >>> data.steps_per_epoch(ds.train, 128)
    62
    >>> data.steps_per_epoch(ds.train, 128, drop_remainder=False)
    63
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if drop_remainder:
    return len(split) // batch_size
  return -(-len(split) // batch_size)


def _normalizer(split: dataset_lib.Split, mean: Sequence[float],
                std: Sequence[float]):
  """Returns ``f(uint8 images) = (images / 255 - mean) / std`` in float32."""
  channels = split.images.shape[-1]
  mean = np.broadcast_to(np.asarray(mean, np.float64), (channels,))
  std = np.broadcast_to(np.asarray(std, np.float64), (channels,))
  if np.any(std <= 0):
    raise ValueError(f'std must be positive, got {std}')
  # One multiply-add per pixel: x * (1 / (255 std)) - mean / std.
  scale = (1.0 / (255.0 * std)).astype(np.float32)
  shift = (-mean / std).astype(np.float32)

  def normalize(images: np.ndarray) -> np.ndarray:
    out = np.multiply(images, scale, dtype=np.float32)
    out += shift
    return out

  return normalize


def batches(
    split: dataset_lib.Split,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    mean: Sequence[float],
    std: Sequence[float],
    drop_remainder: bool = True,
) -> Iterator[Batch]:
  """An endless iterator of shuffled, normalized training batches.

  ``image = (pixels / 255 - mean) / std`` per channel, computed per batch.
  Epoch ``e`` uses the permutation
  ``np.random.default_rng([seed, e]).permutation(N)``; the batches from
  ``start_step=k`` are those from ``start_step=0`` with the first ``k``
  dropped.

  Args:
    split: the training split.
    batch_size: examples per batch.
    seed: a non-negative integer; the shuffle of every epoch derives from it.
    start_step: the first step to produce, e.g. the step restored from a
      checkpoint.
    mean: per-channel mean in [0, 1] units, e.g. `Dataset.mean`.
    std: per-channel standard deviation in [0, 1] units, e.g. `Dataset.std`.
    drop_remainder: drop the last partial batch of each epoch, so every
      batch has ``batch_size`` examples.

  Returns:
    An iterator of ``{'image': float32 (B, H, W, C), 'label': int32 (B,)}``.

  Raises:
    ValueError: ``batch_size`` is not positive or larger than the split, or
      ``seed`` or ``start_step`` is negative.

  Example:
    >>> import numpy as np
    >>> from sparsify import data
    >>> ds = data.load_dataset('embedded_mnist')
    >>> it = data.batches(ds.train, batch_size=128, seed=0, mean=ds.mean,
    ...                   std=ds.std)
    >>> first, second = next(it), next(it)
    >>> first['image'].shape, first['image'].dtype, first['label'].shape
    ((128, 28, 28, 1), dtype('float32'), (128,))
    >>> resumed = data.batches(ds.train, batch_size=128, seed=0, start_step=1,
    ...                        mean=ds.mean, std=ds.std)
    >>> np.array_equal(next(resumed)['label'], second['label'])
    True
  """
  steps = steps_per_epoch(split, batch_size, drop_remainder=drop_remainder)
  if steps == 0:
    raise ValueError(
        f'batch_size {batch_size} is larger than the split ({len(split)} '
        'examples)')
  if seed < 0 or start_step < 0:
    raise ValueError(
        f'seed and start_step must be >= 0, got {seed} and {start_step}')
  normalize = _normalizer(split, mean, std)

  def generate() -> Iterator[Batch]:
    epoch, step = divmod(start_step, steps)
    while True:
      order = np.random.default_rng([seed, epoch]).permutation(len(split))
      for i in range(step, steps):
        index = order[i * batch_size:(i + 1) * batch_size]
        yield {'image': normalize(split.images[index]),
               'label': split.labels[index]}
      epoch, step = epoch + 1, 0

  return generate()


def eval_batches(
    split: dataset_lib.Split,
    *,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Iterator[Batch]:
  """One pass over ``split`` in order, every batch of the same shape.

  The last batch is padded to ``batch_size`` with zero images and labels;
  ``mask`` marks the real examples, so a jitted (or sharded) evaluation
  compiles once and weighs its metrics with the mask.

  Args:
    split: the evaluation split.
    batch_size: examples per batch.
    mean: per-channel mean in [0, 1] units, e.g. `Dataset.mean`.
    std: per-channel standard deviation in [0, 1] units, e.g. `Dataset.std`.

  Returns:
    An iterator of ``{'image': float32 (B, H, W, C), 'label': int32 (B,),
    'mask': float32 (B,)}``, ``ceil(N / batch_size)`` batches.

  Raises:
    ValueError: ``batch_size`` is not positive.

  Example:
    >>> from sparsify import data
    >>> ds = data.load_dataset('embedded_mnist')  # 2,000 evaluation images
    >>> evals = list(data.eval_batches(ds.eval, batch_size=768, mean=ds.mean,
    ...                                std=ds.std))
    >>> [b['image'].shape[0] for b in evals]
    [768, 768, 768]
    >>> [int(b['mask'].sum()) for b in evals]  # real examples per batch
    [768, 768, 464]
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  normalize = _normalizer(split, mean, std)

  def generate() -> Iterator[Batch]:
    for start in range(0, len(split), batch_size):
      images = normalize(split.images[start:start + batch_size])
      labels = split.labels[start:start + batch_size].copy()
      real = len(labels)
      mask = np.ones((batch_size,), np.float32)
      if real < batch_size:
        pad = batch_size - real
        images = np.concatenate(
            [images, np.zeros((pad, *images.shape[1:]), np.float32)])
        labels = np.concatenate([labels, np.zeros((pad,), np.int32)])
        mask[real:] = 0.0
      yield {'image': images, 'label': labels, 'mask': mask}

  return generate()
