"""A workdir belongs to one run: its config, recorded, and a lock.

`claim` is called before anything is trained. It takes the workdir's lock
file (``.lock``, an exclusive `fcntl.flock` held by the process for the run's
life and released by the kernel when the process ends, so a killed run
leaves no stale lock), removes temporary files a killed write left behind,
and compares the config with the one recorded in ``run.json``:

* On first use, ``run.json`` records the full resolved config.
* On a rerun, every field that changes the result must be equal; a
  difference stops the run with one line listing the fields, their recorded
  and new values. The fields of `RESULT_FREE` (logging, evaluation and
  checkpoint cadence, plots, where the data lives) may differ, and so may
  the post-training stages (``post.*``), which a finished run may be given
  afresh: they start from the last checkpoint, except for the number of
  training examples held out for validation, which changes training.
* A workdir with checkpoints but without a readable ``run.json`` is refused:
  nothing says which run they belong to.

Continuing a finished run with more epochs is refused too (the learning-rate
schedule spans the epochs, so the result would be neither run): train the
longer run in its own workdir.
"""

import fcntl
import glob
import json
import os
from typing import Any

import ml_collections

from sparsify.experiment import files
from sparsify.experiment import stages
from sparsify.experiment.config import ConfigError

# Fields that do not change what a run computes.
RESULT_FREE = ("train.log_every", "train.eval_every_epochs",
               "train.checkpoint_every", "train.checkpoint_seconds",
               "train.keep_checkpoints", "train.plots", "data.data_dir",
               "data.eval_batch_size")
_HELD_OUT = "training examples held out for validation"
_RUN_FILE = "run.json"
_LOCK_FILE = ".lock"
# The lock files this process holds, by real path.
_held: dict[str, int] = {}


def flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as ``{'section.field': value}``, lists indexed as ``[i]``.

  Args:
    config: an experiment config.

  Returns:
    Every leaf of the config's JSON form by its dotted path, e.g.
    ``{'compression[0].kwargs.sparsity': 0.9, 'seed': 0, ...}``.
  """
  out = {}

  def walk(value, prefix):
    if isinstance(value, dict):
      if not value and prefix:
        out[prefix] = {}
      for key, item in value.items():
        walk(item, f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list) and value and any(
        isinstance(v, (dict, list)) for v in value):
      for i, item in enumerate(value):
        walk(item, f"{prefix}[{i}]")
    else:
      out[prefix] = value

  walk(json.loads(config.to_json()), "")
  return out


def _result_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  fields = {k: v for k, v in flat_config(config).items()
            if k not in RESULT_FREE and not k.startswith("post.")}
  fields[_HELD_OUT] = (config.post.validation_examples
                       if stages.holds_out(config.post.stages) else 0)
  return fields


def _differences(theirs: dict[str, Any], mine: dict[str, Any]) -> list[str]:
  missing = object()
  out = []
  for key in sorted(set(theirs) | set(mine)):
    a, b = theirs.get(key, missing), mine.get(key, missing)
    if a != b:
      show = lambda v: "(absent)" if v is missing else repr(v)
      out.append(f"{key} {show(a)} -> {show(b)}")
  return out


def _legacy(recorded: dict[str, Any], config) -> dict[str, Any]:
  """The fields of a ``run.json`` written before full configs were kept."""
  old = {"model.name": config.model.name,
         "model.kwargs": config.model.kwargs.to_dict(),
         "data.name": config.data.name,
         "optimizer.name": config.optimizer.name,
         "compression": json.loads(ml_collections.ConfigDict(
             {"v": config.compression}).to_json())["v"]}
  held = "validation examples held out of training"
  mine = {k: v for k, v in old.items() if k in recorded}
  theirs = {k: recorded[k] for k in mine}
  if held in recorded:
    mine[_HELD_OUT] = (config.post.validation_examples
                       if stages.holds_out(config.post.stages) else 0)
    theirs[_HELD_OUT] = recorded[held]
  return {"theirs": theirs, "mine": mine}


def lock(workdir: str) -> None:
  """Takes ``workdir``'s lock for this process; a second process is refused.

  Taking it again in the process that holds it does nothing.

  Args:
    workdir: an existing directory.

  Raises:
    ConfigError: another process holds the lock (its pid is named).
  """
  key = os.path.realpath(workdir)
  if key in _held:
    return
  path = os.path.join(workdir, _LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
    os.close(fd)
    raise ConfigError(
        "--workdir", workdir,
        f"a workdir no other run is using (process {owner} is running in "
        "it); wait for it to finish or pass another --workdir") from None
  os.ftruncate(fd, 0)
  os.write(fd, str(os.getpid()).encode())
  _held[key] = fd


def release(workdir: str) -> None:
  """Releases ``workdir``'s lock if this process holds it.

  Args:
    workdir: the directory given to `lock`.
  """
  fd = _held.pop(os.path.realpath(workdir), None)
  if fd is not None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _remove_stale(workdir: str) -> None:
  """Removes temporary files of writes that a kill interrupted."""
  for path in glob.glob(os.path.join(workdir, ".*.tmp")):
    os.unlink(path)


def claim(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Makes ``workdir`` this run's: lock, stale files, recorded config.

  Writes ``run.json`` (the full config) on first use of a workdir.

  Args:
    config: the run's configuration.
    workdir: the run's directory; created if missing.

  Raises:
    ConfigError: another process runs in ``workdir``; ``run.json`` records
      a config that differs in a field that changes the result (the message
      lists them); or checkpoints exist without a readable ``run.json``.
  """
  os.makedirs(workdir, exist_ok=True)
  lock(workdir)
  _remove_stale(workdir)
  path = os.path.join(workdir, _RUN_FILE)
  has_checkpoints = bool(glob.glob(os.path.join(workdir, "checkpoints", "*")))
  recorded = None
  if os.path.exists(path):
    try:
      with open(path) as f:
        recorded = json.load(f)
      if not isinstance(recorded, dict):
        raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
      if has_checkpoints:
        raise ConfigError(
            f"--workdir: {path} is unreadable ({e}), so nothing says which "
            "run the checkpoints in it belong to; allowed: a workdir whose "
            "run.json is intact, or another --workdir") from None
      recorded = None
  elif has_checkpoints:
    raise ConfigError(
        f"--workdir: {workdir} holds checkpoints but no {_RUN_FILE}, so "
        "nothing says which run they belong to; allowed: a workdir of this "
        "run, or another --workdir")
  mine = _result_fields(config)
  if recorded is not None:
    if "config" in recorded:
      theirs = {k: v for k, v in recorded["config"].items()
                if k not in RESULT_FREE and not k.startswith("post.")}
      theirs[_HELD_OUT] = recorded.get("held_out", 0)
      compared = {"theirs": theirs, "mine": mine}
    else:
      compared = _legacy(recorded, config)
    diff = _differences(compared["theirs"], compared["mine"])
    if diff:
      raise ConfigError(
          f"--workdir: {workdir} holds a run whose config differs in "
          f"{len(diff)} field{'s' * (len(diff) > 1)}: {'; '.join(diff)}; "
          "allowed: the recorded config (only "
          f"{', '.join(RESULT_FREE)} and post.* may change), or another "
          "--workdir")
  held = mine.pop(_HELD_OUT)
  files.write_json(path, {"config": flat_config(config), "held_out": held})
