"""Checkpoints of a training run, with orbax's `CheckpointManager`.

A checkpoint holds everything needed to continue: parameters, optimizer state
(masks included), BatchNorm statistics, step, RNG key and the data position.
Which run a workdir belongs to is `sparsify.experiment.workdir`'s business.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from sparsify.experiment.config import ConfigError


def manager(workdir: str, *, keep: int,
            create: bool = True) -> ocp.CheckpointManager:
  """Returns a `CheckpointManager` over ``workdir/checkpoints``.

  Args:
    workdir: the run's directory.
    keep: how many of the most recent checkpoints to keep.
    create: whether to create the ``checkpoints`` directory if it is missing.

  Returns:
    An `orbax.checkpoint.CheckpointManager`.
  """
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create))


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves ``state`` (a pytree) at ``step``, asynchronously.

  Args:
    mngr: the manager, from `manager`.
    step: the training step the checkpoint is labelled with.
    state: the pytree of arrays to save.
  """
  mngr.save(step, args=ocp.args.StandardSave(state))


def restore_or_init(mngr: ocp.CheckpointManager, state: Any) -> Any:
  """Restores the latest checkpoint into the structure of ``state``.

  Returns ``state`` unchanged when there is no checkpoint. A checkpoint that
  cannot be read raises `ConfigError` naming it; nothing is deleted.

  Args:
    mngr: the manager, from `manager`.
    state: the freshly initialized state; gives the structure, shapes and
      dtypes to restore into.

  Returns:
    The state of the latest checkpoint, or ``state`` if there is none.

  Raises:
    ConfigError: the latest checkpoint does not fit ``state`` or cannot be
      read.
  """
  step = mngr.latest_step()
  if step is None:
    return state
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(state))
  except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    if len(reason) > 200:
      reason = reason[:200] + "..."
    raise ConfigError(
        "checkpoint", os.path.join(mngr.directory, str(step)),
        f"a checkpoint of this run; it could not be restored ({reason}); "
        "move it away or pass another --workdir") from e


def load(workdir: str, step: int | None = None) -> dict[str, Any]:
  """Reads a saved checkpoint of ``workdir`` as a tree of numpy arrays.

  Args:
    workdir: the run's workdir.
    step: which checkpoint; the latest when ``None``.

  Returns:
    ``{'params', 'opt_state', 'batch_stats', 'step', 'rng', 'data_step'}`` as
    saved (NamedTuples of the optimizer state come back as plain containers).

  Raises:
    FileNotFoundError: ``workdir`` holds no checkpoint.
  """
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(directory):  # reading creates nothing
    raise FileNotFoundError(f"no checkpoint in {directory}")
  mngr = manager(workdir, keep=1_000_000, create=False)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
  path = os.path.join(mngr.directory, str(step), "default")
  checkpointer = ocp.StandardCheckpointer()
  # Restore onto one local device, whatever topology the run was saved from.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      checkpointer.metadata(path).item_metadata.tree)
  return jax.device_get(checkpointer.restore(path, target))
