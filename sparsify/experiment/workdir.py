"""Which run a workdir belongs to.

The workdir keeps ``run.json``, the parts of the config that fix the shape of
the run's state (model, dataset, optimizer, compression method) and the
number of training examples held out for validation, so a run pointed at a
workdir of another model, or one that would train on other examples, stops
with a clear message instead of failing inside orbax or, worse, silently
starting over or carrying on with the validation examples in training.
"""

import json
import os
from typing import Any

import ml_collections

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


