"""Background prefetching of batches onto devices."""

from collections.abc import Callable, Iterator
import queue
import threading
from typing import Any, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetch(iterator: Iterator[T], put: Callable[[T], Any] = lambda x: x,
             size: int = 2) -> Iterator[Any]:
  """Yields ``put(x)`` for each ``x`` of ``iterator``, ``size`` ahead.

  A daemon thread reads the iterator and places each batch (``put``, e.g.
  `jax.device_put` with a sharding) while the training step of the previous
  batch runs, so the step waits for input only when the input is slower than
  the step. Order is preserved; an exception in the thread is re-raised in
  the consumer.

  Args:
    iterator: the host batches.
    put: applied to each batch in the background thread.
    size: how many placed batches to keep ready.

  Yields:
    ``put(batch)`` in the iterator's order.

  Example:
    >>> import jax
    >>> import numpy as np
    >>> from sparsify import data
    >>> host = ({'image': np.full((2, 3), i, np.float32)} for i in range(3))
    >>> on_device = data.prefetch(host, put=jax.device_put)
    >>> [float(batch['image'].sum()) for batch in on_device]
    [0.0, 6.0, 12.0]
  """
  ready: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def produce():
    try:
      for item in iterator:
        placed = put(item)
        while not stop.is_set():
          try:
            ready.put(placed, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      ready.put(_DONE)
    except BaseException as e:  # pylint: disable=broad-exception-caught
      ready.put(e)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item = ready.get()
      if item is _DONE:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
