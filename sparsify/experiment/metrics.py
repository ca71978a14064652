"""Writes scalar metrics to stdout, TensorBoard event files and JSON lines.

TensorBoard files come from tensorboardX (no TensorFlow needed); the same
scalars go to ``metrics.jsonl`` in the workdir, one strict JSON object per
call (a non-finite value as ``null``), for plotting from a notebook without
TensorBoard. A torn last line, left by a kill, is cut off before writing.
"""

from collections.abc import Mapping
import logging
import os
from typing import Any

import numpy as np
from tensorboardX import SummaryWriter

from sparsify.experiment import files

log = logging.getLogger("sparsify")


def _format(value: float) -> str:
  return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


class MetricWriter:
  """Writes each call's scalars to stdout, TensorBoard and ``metrics.jsonl``.

  Args:
    workdir: directory for the event files and ``metrics.jsonl``.
    quiet_prefixes: keys starting with one of these are written to files but
      not printed (e.g. per-layer sparsities).
  """

  def __init__(self, workdir: str, quiet_prefixes: tuple[str, ...] = ()):
    os.makedirs(workdir, exist_ok=True)
    self._tb = SummaryWriter(logdir=workdir)
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):  # a kill may have torn the last line
      files.cut_torn_line(path)
    self._jsonl = open(path, "a")
    self._quiet = quiet_prefixes

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes ``scalars`` (name -> number) at ``step``.

    Every scalar goes to TensorBoard and to one JSON line
    ``{"step": step, name: value, ...}``; those whose names do not start with
    one of ``quiet_prefixes`` are also logged to stdout.

    Args:
      step: the training step the values belong to.
      scalars: ``{name: value}``; each value is a number or a scalar array.
    """
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for key, value in scalars.items():
      self._tb.add_scalar(key, value, global_step=step)
    self._jsonl.write(files.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    shown = [f"{k}={_format(v)}" for k, v in scalars.items()
             if not k.startswith(self._quiet)]
    log.info("step %d: %s", step, ", ".join(shown))

  def close(self) -> None:
    """Flushes and closes the TensorBoard and ``metrics.jsonl`` files."""
    self._tb.close()
    self._jsonl.close()
