"""Checkpoints of a training run, with orbax's `CheckpointManager`.

A checkpoint holds everything needed to continue: parameters, optimizer state
(masks included), BatchNorm statistics, step, RNG key and the data position.
The workdir also keeps ``run.json``, the parts of the config that fix the
shape of that state (model, dataset, optimizer, compression method) and the
number of training examples held out for validation, so a run pointed at a
workdir of another model, or one that would train on other examples, stops
with a clear message instead of failing inside orbax or, worse, silently
starting over or carrying on with the validation examples in training.
"""

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from sparsify.experiment import stages
from sparsify.experiment.config import ConfigError

_IDENTITY_FIELDS = ("model.name", "model.kwargs", "data.name",
                    "optimizer.name", "compression")
_HELD_OUT = "validation examples held out of training"


def _identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
  out = {}
  for field in _IDENTITY_FIELDS:
    value = config
    for part in field.split("."):
      value = value[part]
    if isinstance(value, (ml_collections.ConfigDict, list, tuple)):
      value = json.loads(ml_collections.ConfigDict({"v": value}).to_json())["v"]
    out[field] = value
  out[_HELD_OUT] = (config.post.validation_examples
                    if stages.holds_out(config.post.stages) else 0)
  return out


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises `ConfigError` if ``workdir`` holds a run of another model.

  Writes ``run.json`` on first use of a workdir.

  Args:
    config: the run's configuration; its model, dataset, optimizer and
      compression method are compared with those recorded in ``run.json``.
    workdir: the run's directory; created if missing.

  Raises:
    ConfigError: ``run.json`` records a different model, model arguments,
      dataset, optimizer, compression method or number of examples held out
      for validation.
  """
  path = os.path.join(workdir, "run.json")
  mine = _identity(config)
  if os.path.exists(path):
    with open(path) as f:
      theirs = json.load(f)
    for field in _IDENTITY_FIELDS:
      if field in theirs and theirs[field] != mine[field]:
        raise ConfigError(
            field, mine[field],
            f"{theirs[field]!r}, the value of the run whose checkpoints are "
            f"in {workdir} (or pass another --workdir)")
    if _HELD_OUT in theirs and theirs[_HELD_OUT] != mine[_HELD_OUT]:
      raise ConfigError(
          f"post.stages: {config.post.stages!r} holds out {mine[_HELD_OUT]} "
          "training examples for validation; allowed: stages and "
          "post.validation_examples that "
          f"hold out {theirs[_HELD_OUT]}, as the run whose checkpoints are in "
          f"{workdir} did (or pass another --workdir)")
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w") as f:
    json.dump(mine, f, indent=2)


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
