"""Checkpoints of a training run that can be trusted, on orbax.

A checkpoint holds everything needed to continue: parameters, optimizer state
(masks included), BatchNorm statistics, step, RNG key and the data position.
Which run a workdir belongs to is `sparsify.experiment.workdir`'s business.

Orbax writes the arrays (``<step>/default``) but does not verify the array
data it reads back: a flipped bit in a data file is restored as a different
number, silently. So every step also holds
``<step>/checksums/checksums.json``: for each leaf of the state (in
`jax.tree` order) its path, shape, dtype and CRC-32 of its bytes, computed
at save time from the host copy, and whether every float in the state is
finite. Orbax writes it as a second item of the same step, into the step's
temporary directory, so it appears only with a finalized step (renamed into
place as a whole); a save killed midway leaves no checksums for an
incomplete step, only ``<step>.orbax-checkpoint-tmp`` directories, which
`manager` removes.

`restore_or_init` tries the newest step first and falls back, step by step,
to older ones: a step whose arrays do not match their checksums, cannot be
read, or was saved non-finite (after training diverged) is skipped with one
warning line; nothing is deleted. Steps saved before checksums were recorded
are restored unverified, with one warning line.

Rotation is this module's own orbax preservation policy, in place of
``max_to_keep``: the ``keep`` newest steps are kept, and always the newest
step whose checksums record a finite state (`last_good_step`). A step is
deleted only after a newer good one is finalized, except a non-finite one,
which can never be resumed from.
"""

import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import shutil
import sys
import time
from typing import Any
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sparsify.core import paths
from sparsify.experiment.config import ConfigError

log = logging.getLogger("sparsify")

_STATE = "default"  # the state's item; also the whole of an older checkpoint
_CHECKSUMS = "checksums"
_CHECKSUMS_FILE = "checksums.json"
_FORMAT = 1
# What an interrupted save leaves: ``80.orbax-checkpoint-tmp`` (orbax 0.12;
# older versions append a timestamp, ``80.orbax-checkpoint-tmp-1712345678``).
_TMP_DIR = re.compile(r"\d+\.orbax-checkpoint-tmp.*")
_MOVE_HINT = "move it away or pass another --workdir"


class CorruptCheckpointError(ConfigError):
  """A checkpoint that cannot be used: damaged, unreadable or non-finite."""


class _Unusable(Exception):
  """Why one step cannot be restored: ``is <kind> (<detail>)``."""

  def __init__(self, kind: str, detail: str):
    super().__init__(f"{kind} ({detail})")


def _one_line(e: BaseException) -> str:
  """The first line of the message of ``e``'s innermost cause, shortened.

  Orbax wraps TensorStore's errors (which say what is wrong with which file)
  in one that prints the whole TensorStore spec.
  """
  causes = [e]
  while (causes[-1].__cause__ or causes[-1].__context__) and len(causes) < 20:
    causes.append(causes[-1].__cause__ or causes[-1].__context__)
  for cause in reversed(causes):
    lines = str(cause).strip().splitlines()
    if lines:
      text = lines[0].strip()
      return text if len(text) <= 300 else text[:300] + "..."
  return type(e).__name__


def _from_orbax(coro: Any) -> bool:
  code = getattr(coro, "cr_code", None)
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


class _QuietRead:
  """Runs an orbax read; cleans up after one that failed, quietly.

  Orbax 0.12 runs a read on an event loop of its own and closes the loop as
  soon as one array fails, with the reads of the others still pending. Their
  coroutines print a traceback whenever they are garbage collected (orbax
  turns their ``GeneratorExit`` into an ``Exception``), and TensorStore
  prints one for each read that completes onto the closed loop. After a
  failed read, the coroutines are closed (their loop can never run them)
  and collected; while the read and this clean-up run, those tracebacks are
  dropped. The read's error is kept as one line, `reason`.
  """

  def __init__(self):
    self.reason = None

  def __enter__(self):
    self.previous = sys.unraisablehook
    sys.unraisablehook = self._hook
    return self

  def __exit__(self, kind, e, traceback):
    del traceback
    try:
      if e is not None and issubclass(kind, Exception):
        self.reason = _one_line(e)
        for task in [o for o in gc.get_objects()
                     if isinstance(o, asyncio.Task)]:
          if (not task.done() and task.get_loop().is_closed()
              and _from_orbax(task.get_coro())):
            # Orbax raises an `Exception` for the `GeneratorExit`.
            with contextlib.suppress(Exception):
              task.get_coro().close()
        gc.collect()
    finally:
      sys.unraisablehook = self.previous
    return self.reason is not None

  def _hook(self, unraisable):
    if _from_orbax(unraisable.object) or (
        isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == "Event loop is closed"):
      return
    self.previous(unraisable)


def _step_dir(mngr: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(mngr.directory), str(step))


# Checksums.


def _host_leaves(tree: Any) -> list[tuple[str, np.ndarray]]:
  """``(path name, numpy array)`` of every leaf, copied to host."""
  host = jax.device_get(tree)
  return [(name, np.asarray(leaf)) for name, leaf in paths.named_leaves(host)]


def _crc32(a: np.ndarray) -> int:
  return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def _is_finite(a: np.ndarray) -> bool:
  return not jnp.issubdtype(a.dtype, jnp.inexact) or bool(np.isfinite(a).all())


def _digest(body: dict[str, Any]) -> int:
  """CRC-32 of the checksum file's own content, ``digest`` left out."""
  rest = {k: v for k, v in body.items() if k != "digest"}
  return zlib.crc32(json.dumps(rest, sort_keys=True).encode())


def _checksums(step: int, leaves: list[tuple[str, np.ndarray]]
               ) -> dict[str, Any]:
  """The content of a step's checksum file."""
  nonfinite = [name for name, a in leaves if not _is_finite(a)]
  body = {
      "format": _FORMAT, "step": step, "finite": not nonfinite,
      "first_nonfinite": nonfinite[0] if nonfinite else None,
      "leaves": [{"path": name, "shape": list(a.shape), "dtype": str(a.dtype),
                  "crc32": _crc32(a)} for name, a in leaves]}
  body["digest"] = _digest(body)
  return body


def _read_checksums(step_dir: str, step: int) -> dict[str, Any] | None:
  """A step's checksum file; ``None`` for a step saved without one.

  Args:
    step_dir: the step's directory.
    step: its step.

  Returns:
    The checksums, their own digest checked, or ``None``.

  Raises:
    _Unusable: the checksum file is missing from its item, damaged or
      another step's.
  """
  item = os.path.join(step_dir, _CHECKSUMS)
  if not os.path.isdir(item):
    return None
  try:
    with open(os.path.join(item, _CHECKSUMS_FILE)) as f:
      body = json.load(f)
  except (OSError, ValueError) as e:
    raise _Unusable("corrupt", f"its checksum file: {_one_line(e)}") from None
  if (not isinstance(body, dict) or body.get("digest") != _digest(body)
      or body.get("format") != _FORMAT):
    raise _Unusable("corrupt", "its checksum file is damaged")
  if body.get("step") != step:
    raise _Unusable("corrupt",
                    f"its checksum file is of step {body.get('step')}")
  return body


def _status(directory: str, step: int) -> str:
  """``'good'`` (finite, with checksums), ``'nonfinite'`` or ``'unknown'``."""
  try:
    body = _read_checksums(os.path.join(directory, str(step)), step)
  except _Unusable:
    return "unknown"
  if body is None:
    return "unknown"
  return "good" if body["finite"] else "nonfinite"


def _pairs(body: dict[str, Any], leaves: list[tuple[str, np.ndarray]]):
  """Matches recorded leaves to restored ones.

  By name when the names are the same (`load` reads NamedTuples back as
  dicts, which flatten in another order), else by position (containers read
  back as lists are named by index).
  """
  entries = body["leaves"]
  saved = [e["path"] for e in entries]
  names = [name for name, _ in leaves]
  if saved != names and sorted(saved) == sorted(names) and (
      len(set(names)) == len(names)):
    by_name = dict(leaves)
    return [(e, by_name[e["path"]]) for e in entries]
  if len(saved) != len(names):
    raise _Unusable("corrupt", f"{len(names)} arrays read, {len(saved)} "
                    "recorded in its checksum file")
  return list(zip(entries, (a for _, a in leaves)))


def _verify(body: dict[str, Any], leaves: list[tuple[str, np.ndarray]]
            ) -> None:
  """Checks every restored leaf against its recorded checksum.

  Args:
    body: the step's checksums.
    leaves: the restored leaves, from `_host_leaves`.

  Raises:
    _Unusable: a leaf's shape, dtype or checksum differs.
  """
  for entry, a in _pairs(body, leaves):
    if list(a.shape) != entry["shape"] or str(a.dtype) != entry["dtype"]:
      raise _Unusable("corrupt", f"{entry['path']} read as {a.dtype}"
                      f"{list(a.shape)}, saved as {entry['dtype']}"
                      f"{entry['shape']}")
    if _crc32(a) != entry["crc32"]:
      raise _Unusable("corrupt", f"checksum mismatch in {entry['path']}")


def _layout(leaf: Any) -> tuple[tuple[int, ...], str]:
  if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
    return tuple(leaf.shape), str(np.dtype(leaf.dtype))
  a = np.asarray(leaf)
  return a.shape, str(a.dtype)


def _misfit(body: dict[str, Any], state: Any) -> str | None:
  """How the recorded leaves differ from ``state``'s; ``None`` if they fit."""
  want = {name: _layout(leaf) for name, leaf in paths.named_leaves(state)}
  have = {e["path"]: (tuple(e["shape"]), e["dtype"]) for e in body["leaves"]}
  for name, (shape, dtype) in want.items():
    if name not in have:
      return f"it has no {name}"
    if have[name] != (shape, dtype):
      saved_shape, saved_dtype = have[name]
      return (f"{name} is {saved_dtype}{list(saved_shape)}, the model's "
              f"{dtype}{list(shape)}")
  for name in have:
    if name not in want:
      return f"it has {name}, which the model does not"
  return None


# The manager and its rotation.


class _Rotation:
  """Orbax preservation policy: the ``keep`` newest steps and the last good.

  Orbax asks it at each save, with the step being saved (not finalized yet)
  last, and deletes what it does not preserve once that save is finalized.
  A step is preserved when it is among the ``keep`` newest, when it is the
  newest good one (finalized, checksums recording a finite state), or when
  it is not known to be non-finite and no good step is newer than it.
  """

  def __init__(self, directory: str, keep: int):
    self.directory, self.keep = directory, keep

  def should_preserve(self, checkpoints, *, context=None):
    del context
    steps = [info.step for info in checkpoints]
    status = {s: _status(self.directory, s) for s in steps}
    newest = set(sorted(steps)[-self.keep:])
    last_good = max((s for s in steps if status[s] == "good"), default=None)

    def preserve(step):
      if step in newest or step == last_good:
        return True
      if status[step] == "nonfinite":
        return False
      return last_good is None or step > last_good

    return [preserve(s) for s in steps]


def _remove_unfinished(directory: str) -> None:
  """Removes the temporary directories of saves that were interrupted."""
  if not os.path.isdir(directory):
    return
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if _TMP_DIR.fullmatch(name) and os.path.isdir(path):
      shutil.rmtree(path)
      log.info("removed %s, left by a save that did not finish", path)


def _manager(directory: str, options: ocp.CheckpointManagerOptions
             ) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory, options=options,
      item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                     _CHECKSUMS: ocp.JsonCheckpointHandler(
                         filename=_CHECKSUMS_FILE)})


def manager(workdir: str, *, keep: int,
            create: bool = True) -> ocp.CheckpointManager:
  """Returns a `CheckpointManager` over ``workdir/checkpoints``.

  Temporary directories that an interrupted save left behind are removed
  first (orbax 0.12 leaves them, and its own ``cleanup_tmp_directories``
  runs in the background).

  Args:
    workdir: the run's directory.
    keep: how many of the most recent checkpoints to keep; the newest good
      one (see `last_good_step`) is kept as well.
    create: whether to create the ``checkpoints`` directory if it is missing.

  Returns:
    An `orbax.checkpoint.CheckpointManager`, for `save`, `restore_or_init`
    and `last_good_step`.

  Raises:
    ValueError: ``keep`` is less than 1.
  """
  if keep < 1:
    raise ValueError(f"keep: got {keep}; allowed: an integer >= 1")
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  _remove_unfinished(directory)
  return _manager(directory, ocp.CheckpointManagerOptions(
      create=create, preservation_policy=_Rotation(directory, keep)))


def _supersede(mngr: ocp.CheckpointManager, step: int) -> None:
  """Moves steps not older than ``step`` aside, so that it can be saved.

  Only after a fall back past unusable newer steps does a run save a step
  that exists, or one older than the newest; orbax would refuse to.
  """
  newer = [s for s in mngr.all_steps() if s >= step]
  if not newer:
    return
  mngr.wait_until_finished()
  stamp = int(time.time())
  for s in newer:
    src = _step_dir(mngr, s)
    if not os.path.isdir(src):
      continue
    dst, n = f"{src}.superseded-{stamp}", 0
    while os.path.exists(dst):
      n += 1
      dst = f"{src}.superseded-{stamp}-{n}"
    os.rename(src, dst)
    log.warning("checkpoint %s is not older than step %d, saved again after a "
                "fall back; moved it to %s", src, step, dst)
  mngr.reload()


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves ``state`` (a pytree) at ``step``, asynchronously, with checksums.

  The checksums and whether the state is finite are computed here, from a
  host copy of ``state``; orbax writes them with the arrays and finalizes
  both at once. Steps not older than ``step`` (left after `restore_or_init`
  fell back past them) are renamed to ``<step>.superseded-<time>`` first.

  Args:
    mngr: the manager, from `manager`.
    step: the training step the checkpoint is labelled with.
    state: the pytree of arrays to save.
  """
  _supersede(mngr, step)
  body = _checksums(step, _host_leaves(state))
  saved = mngr.save(step, args=ocp.args.Composite(**{
      _STATE: ocp.args.StandardSave(state),
      _CHECKSUMS: ocp.args.JsonSave(body)}))
  if not saved:
    log.warning("checkpoint of step %d in %s was not saved", step,
                mngr.directory)


def _restore_step(mngr: ocp.CheckpointManager, step: int,
                  state: Any) -> tuple[Any, bool]:
  """Restores and verifies one step.

  Args:
    mngr: the manager.
    step: the step.
    state: the structure to restore into.

  Returns:
    The restored state, and whether it was verified (``False`` for a step
    saved without checksums).

  Raises:
    _Unusable: the step is corrupt, unreadable or not finite.
    ConfigError: its checksums describe arrays that do not fit ``state``.
  """
  step_dir = _step_dir(mngr, step)
  body = _read_checksums(step_dir, step)
  if body is not None:
    if not body["finite"]:
      raise _Unusable("not finite", f"{body['first_nonfinite']} has NaN or "
                      "infinite values")
    misfit = _misfit(body, state)
    if misfit:
      raise ConfigError(f"checkpoint {step_dir} does not fit the model "
                        f"({misfit}); {_MOVE_HINT}")
  with _QuietRead() as read:  # orbax and tensorstore raise many kinds
    restored = mngr.restore(step, args=ocp.args.Composite(
        **{_STATE: ocp.args.StandardRestore(state)}))[_STATE]
    leaves = _host_leaves(restored)
  if read.reason is not None:
    raise _Unusable("unreadable", read.reason)
  if body is None:
    for name, a in leaves:
      if not _is_finite(a):
        raise _Unusable("not finite", f"{name} has NaN or infinite values")
    return restored, False
  _verify(body, leaves)
  return restored, True


def restore_or_init(mngr: ocp.CheckpointManager, state: Any) -> Any:
  """Restores the newest usable checkpoint into the structure of ``state``.

  The newest step is tried first. One that is corrupt (its arrays do not
  match their checksums), unreadable (e.g. a truncated file) or was saved
  non-finite is skipped with one warning line naming its directory and why,
  and the next older one is tried; nothing is deleted. A step saved before
  checksums were recorded is restored with one warning line that it is
  unverified.

  Args:
    mngr: the manager, from `manager`.
    state: the freshly initialized state; gives the structure, shapes and
      dtypes to restore into.

  Returns:
    The state of the newest usable checkpoint, or ``state`` if there is no
    checkpoint.

  Raises:
    ConfigError: the arrays recorded for a checkpoint do not fit ``state``
      (it is another model's).
    CorruptCheckpointError: (a `ConfigError`) there are checkpoints but none
      can be restored.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  newest = None
  for i, step in enumerate(steps):
    try:
      restored, verified = _restore_step(mngr, step, state)
    except _Unusable as e:
      newest = newest or (step, e)
      then = "falling back" if i + 1 < len(steps) else "no older checkpoint"
      log.warning("checkpoint %s is %s; %s", _step_dir(mngr, step), e, then)
      continue
    if not verified:
      log.warning("checkpoint %s has no checksums (saved before they were "
                  "recorded); restored it unverified", _step_dir(mngr, step))
    return restored
  if newest is None:
    return state
  step, e = newest
  raise CorruptCheckpointError(
      f"{mngr.directory}: none of its {len(steps)} checkpoint(s) can be "
      f"restored (the newest, step {step}, is {e}); {_MOVE_HINT}")


def last_good_step(mngr: ocp.CheckpointManager) -> int | None:
  """The newest step saved finite and with checksums, e.g. to resume from.

  Waits for a save in progress. The arrays are not read: a step that was
  damaged on disk afterwards still counts (`restore_or_init` skips it).

  Args:
    mngr: the manager, from `manager`.

  Returns:
    The step, or ``None`` if no checkpoint is known to be good.
  """
  mngr.wait_until_finished()
  for step in sorted(mngr.all_steps(), reverse=True):
    if _status(str(mngr.directory), step) == "good":
      return step
  return None


def _read_to_host(path: str) -> Any:
  """Reads the state item at ``path`` as saved, as numpy arrays.

  Args:
    path: the item's directory, ``<step>/default``.

  Returns:
    The tree of numpy arrays.

  Raises:
    _Unusable: it cannot be read.
  """
  checkpointer = ocp.StandardCheckpointer()
  with _QuietRead() as read:  # orbax and tensorstore raise many kinds
    try:
      # Restore onto one local device, whatever topology it was saved from.
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
          checkpointer.metadata(path).item_metadata.tree)
      return jax.device_get(checkpointer.restore(path, target))
    finally:
      checkpointer.close()
  raise _Unusable("unreadable", read.reason)


def load(workdir: str, step: int | None = None) -> dict[str, Any]:
  """Reads a saved checkpoint of ``workdir`` as a tree of numpy arrays.

  The arrays are verified against their checksums; a checkpoint saved before
  checksums were recorded is read with one warning line. Nothing is created
  or deleted.

  Args:
    workdir: the run's workdir.
    step: which checkpoint; the latest when ``None``.

  Returns:
    ``{'params', 'opt_state', 'batch_stats', 'step', 'rng', 'data_step'}`` as
    saved (NamedTuples of the optimizer state come back as plain containers).

  Raises:
    FileNotFoundError: ``workdir`` holds no checkpoint, or none at ``step``.
    CorruptCheckpointError: (a `ConfigError`, so a `ValueError`) the
      checkpoint is damaged or cannot be read; the message is one line.
  """
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(directory):  # reading creates nothing
    raise FileNotFoundError(f"no checkpoint in {directory}")
  if step is None:
    steps = [int(n) for n in os.listdir(directory)
             if n.isdigit() and os.path.isdir(os.path.join(directory, n))]
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    step = max(steps)
  step_dir = os.path.join(directory, str(step))
  if not os.path.isdir(step_dir):
    raise FileNotFoundError(f"no checkpoint {step_dir}")
  try:
    body = _read_checksums(step_dir, step)
    tree = _read_to_host(os.path.join(step_dir, _STATE))
    if body is not None:
      _verify(body, _host_leaves(tree))
  except _Unusable as e:
    raise CorruptCheckpointError(f"checkpoint {step_dir} is {e}") from None
  if body is None:
    log.warning("checkpoint %s has no checksums (saved before they were "
                "recorded); read it unverified", step_dir)
  return tree
