"""A run never loses what it saved and never finishes silently wrong.

Non-finite training stops with one line and keeps the last finite
checkpoint; a workdir belongs to one config and one process; selections
must select; every JSON file is strict and written whole.
"""

import errno
import fcntl
import json
import os

import numpy as np
import pytest

from sparsify import data as data_lib
from sparsify.experiment import checkpoint
from sparsify.experiment import config as config_lib
from sparsify.experiment import files
from sparsify.experiment import metrics as metrics_lib
from sparsify.experiment import plots
from sparsify.experiment import run as run_lib
from sparsify.experiment import trainer as trainer_lib
from sparsify.experiment import workdir as workdir_lib
from tests.train_test import set_fields
from tests.train_test import tiny_config


def _strict_load(path):
  def refuse(constant):
    raise AssertionError(f"{path}: bare {constant} is not JSON")
  with open(path) as f:
    return json.load(f, parse_constant=refuse)


def _small(**overrides):
  config = tiny_config(**{"model.name": "mlp", "train.epochs": 0.2,
                          "train.log_every": 5, "train.checkpoint_every": 5,
                          "train.keep_checkpoints": 2})
  config.model.kwargs.hidden = (16,)
  set_fields(config, overrides)
  return config


# ---- non-finite training ---------------------------------------------------


def test_divergence_stops_with_one_line_and_writes_nothing(tmp_path):
  config = _small(**{"optimizer.learning_rate": 1e30,
                     "optimizer.schedule": "constant",
                     "post.stages": "share"})
  with pytest.raises(trainer_lib.NonFiniteError) as info:
    run_lib.run(config, str(tmp_path))
  message = str(info.value)
  assert "\n" not in message
  assert f"after step {info.value.step}" in message
  assert info.value.step <= 5
  assert "no finite checkpoint" in message
  for name in ("results.json", "report.json", "post.json", "model.spz"):
    assert not (tmp_path / name).exists(), name
  for row in files.read_jsonl(str(tmp_path / "metrics.jsonl")):
    assert row["step"] < info.value.step  # nothing logged from it


def _poison_after(monkeypatch, step):
  """Every parameter turns NaN from training step ``step`` on."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  real = trainer_lib.train_step

  def poisoned(state, batch):
    state, metrics = real(state, batch)
    bad = state.step >= step
    params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), state.params)
    metrics = {**metrics,
               "finite": trainer_lib.all_finite((metrics["loss"], params))}
    return state.replace(params=params), metrics

  monkeypatch.setattr(trainer_lib, "train_step", poisoned)


def test_late_divergence_keeps_the_last_finite_checkpoint(tmp_path,
                                                          monkeypatch):
  _poison_after(monkeypatch, 13)
  config = _small(**{"train.keep_checkpoints": 1, "train.log_every": 1})
  with pytest.raises(trainer_lib.NonFiniteError) as info:
    run_lib.run(config, str(tmp_path))
  assert info.value.step == 13
  assert "last good checkpoint, step 10, is kept" in str(info.value)
  mngr = checkpoint.manager(str(tmp_path), keep=1)
  assert checkpoint.last_good_step(mngr) == 10
  mngr.close()
  saved = checkpoint.load(str(tmp_path), 10)
  assert all(np.isfinite(x).all() for x in _leaves(saved["params"]))
  rows = list(files.read_jsonl(str(tmp_path / "metrics.jsonl")))
  assert max(r["step"] for r in rows) == 12  # logged up to the good steps
  # Rerunning resumes from the kept checkpoint and stops at the same step.
  with pytest.raises(trainer_lib.NonFiniteError) as again:
    run_lib.run(config, str(tmp_path))
  assert again.value.step == 13


def _leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_all_finite_sees_one_nan_among_many():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  tree = {"a": jnp.zeros((300, 7)), "b": jnp.arange(5), "c": jnp.ones(3)}
  assert bool(trainer_lib.all_finite(tree))
  for bad in (jnp.nan, jnp.inf, -jnp.inf):
    assert not bool(trainer_lib.all_finite(
        {**tree, "a": tree["a"].at[299, 6].set(bad)}))


# ---- the workdir belongs to one run ----------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("finished"))
  config = _small(**{"compression": [config_lib.method(
      "magnitude", sparsity=0.5)]})
  run_lib.run(config, workdir)
  return config, workdir


def test_a_rerun_with_another_result_changing_config_is_refused(finished):
  config, workdir = finished
  before = _strict_load(os.path.join(workdir, "results.json"))
  changed = _small(**{"compression": [config_lib.method(
      "magnitude", sparsity=0.9)], "train.epochs": 0.4})
  with pytest.raises(config_lib.ConfigError) as info:
    run_lib.run(changed, workdir)
  message = str(info.value)
  assert "\n" not in message
  assert "compression[0].kwargs.sparsity 0.5 -> 0.9" in message
  assert "train.epochs 0.2 -> 0.4" in message
  assert "2 fields" in message
  assert _strict_load(os.path.join(workdir, "results.json")) == before


def test_cadence_and_stages_may_change_on_a_finished_run(finished):
  config, workdir = finished
  config = _small(**{"compression": config.compression, "train.log_every": 7,
                     "train.checkpoint_every": 9, "data.eval_batch_size": 64})
  results = run_lib.run(config, workdir)
  assert results["steps"] == int(round(0.2 * results["steps_per_epoch"]))


def test_checkpoints_without_run_json_are_refused(finished, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  config, workdir = finished
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  os.remove(os.path.join(copy, "run.json"))
  with pytest.raises(config_lib.ConfigError, match="no run.json"):
    run_lib.run(config, copy)
  with open(os.path.join(copy, "run.json"), "w"):
    pass  # empty: unreadable
  with pytest.raises(config_lib.ConfigError, match="unreadable"):
    run_lib.run(config, copy)


def test_a_second_process_is_refused(tmp_path):
  path = tmp_path / ".lock"
  with open(path, "w") as f:  # another open file: as another process holds it
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.write("4242")
    f.flush()
    with pytest.raises(config_lib.ConfigError,
                       match="process 4242 is running in it"):
      run_lib.run(_small(), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_the_lock_is_released_and_stale_temporary_files_removed(tmp_path):
  stale = tmp_path / ".results.json12345.tmp"
  tmp_path.mkdir(exist_ok=True)
  stale.write_text("{")
  run_lib.run(_small(**{"train.epochs": 0.05}), str(tmp_path))
  assert not stale.exists()
  with open(tmp_path / ".lock") as f:  # free again after the run
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_flat_config_names_every_field():
  config = _small(**{"compression": [config_lib.method("gmp", sparsity=0.9)]})
  flat = workdir_lib.flat_config(config)
  assert flat["compression[0].kwargs.sparsity"] == 0.9
  assert flat["model.kwargs.hidden"] == [16]
  assert flat["seed"] == 0


# ---- selections must select ------------------------------------------------


@pytest.mark.parametrize("field,method", [
    ("compression[0].kwargs.where", "gmp"),
    ("compression[0].kwargs.where", "magnitude"),
    ("post.pq.where", None),
    ("post.share.where", None),
])
def test_a_selection_that_selects_nothing_is_refused(field, method, tmp_path):
  overrides = {}
  if method:
    overrides["compression"] = [config_lib.method(method, sparsity=0.5,
                                                  where="nomatch")]
  else:
    stage = field.split(".")[1]
    overrides.update({"post.stages": stage, field: "nomatch"})
  with pytest.raises(config_lib.ConfigError) as info:
    trainer_lib.Trainer(_small(**overrides), str(tmp_path))
  message = str(info.value)
  assert message.startswith(f"{field}: 'nomatch' matches none of the 4 ")
  assert "fc1/kernel, head/bias" in message and "\n" not in message
  assert not (tmp_path / "run.json").exists()  # refused before anything


# ---- bad numbers found once the data is loaded -------------------------------


def test_validation_examples_beyond_the_training_split(tmp_path):
  config = _small(**{"post.stages": "search", "post.validation_examples":
                     10 ** 9})
  with pytest.raises(config_lib.ConfigError,
                     match=r"^post.validation_examples: got 1000000000; "
                     r"allowed: at most \d+"):
    trainer_lib.Trainer(config, str(tmp_path))


def test_a_huge_eval_batch_evaluates_the_split_once(tmp_path):
  config = _small(**{"data.eval_batch_size": 10 ** 9})
  trainer = trainer_lib.Trainer(config, str(tmp_path))
  state = trainer.init_state()
  small = trainer_lib.Trainer(_small(), str(tmp_path / "b")).evaluate(state)
  assert trainer.evaluate(state) == pytest.approx(small, rel=1e-5)


# ---- files -----------------------------------------------------------------


def test_json_is_strict_and_written_whole(tmp_path, monkeypatch):
  path = str(tmp_path / "r.json")
  files.write_json(path, {"a": float("nan"), "b": [float("inf"), 1.5],
                          "c": np.float32(2.0)}, default=float)
  assert _strict_load(path) == {"a": None, "b": [None, 1.5], "c": 2.0}

  def full(*args):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "fsync", full)
  with pytest.raises(OSError):
    files.write_json(path, {"new": 1})
  assert _strict_load(path)["b"] == [None, 1.5]  # the old file, whole
  assert sorted(os.listdir(tmp_path)) == ["r.json"]  # no temporary left


def test_a_torn_last_metrics_line_is_the_kill_it_was(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path))
  writer.write(1, {"train/loss": 2.0})
  writer.write(2, {"train/loss": float("nan")})
  writer.close()
  path = tmp_path / "metrics.jsonl"
  with open(path, "a") as f:
    f.write('{"step": 3, "train/lo')  # killed mid-line
  assert [r["step"] for r in files.read_jsonl(str(path))] == [1, 2]
  steps, values = plots.read_metrics(str(tmp_path))["train/loss"]
  assert steps.tolist() == [1] and values.tolist() == [2.0]  # null skipped
  writer = metrics_lib.MetricWriter(str(tmp_path))  # a resumed run
  writer.write(3, {"train/loss": 1.0})
  writer.close()
  lines = path.read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
  with open(path, "a") as f:
    f.write("garbage\n{}\n")
  with pytest.raises(ValueError, match="line 4 is not JSON"):
    list(files.read_jsonl(str(path)))


def test_a_full_disk_stops_the_run_in_one_line(tmp_path, monkeypatch):
  config = _small(**{"train.epochs": 0.1})
  real = metrics_lib.MetricWriter.write
  calls = []

  def write(self, step, scalars):
    calls.append(step)
    if len(calls) == 2:
      raise OSError(errno.ENOSPC, "No space left on device",
                    str(tmp_path / "metrics.jsonl"))
    return real(self, step, scalars)

  monkeypatch.setattr(metrics_lib.MetricWriter, "write", write)
  with pytest.raises(trainer_lib.RunError) as info:
    run_lib.run(config, str(tmp_path))
  message = str(info.value)
  assert message.startswith(f"cannot write in {tmp_path}: No space left")
  assert "\n" not in message
  mngr = checkpoint.manager(str(tmp_path), keep=2)
  assert mngr.latest_step() == 5  # the checkpoint before it is kept
  mngr.close()


def test_checkpoints_by_time_protect_a_short_run(tmp_path):
  config = _small(**{"train.checkpoint_every": 10 ** 6, "train.keep_checkpoints": 100,
                     "train.checkpoint_seconds": 0})
  run_lib.run(config, str(tmp_path))
  mngr = checkpoint.manager(str(tmp_path), keep=10)
  steps = mngr.all_steps()
  mngr.close()
  assert 5 in steps and 10 in steps  # at logging steps, not only the end


def test_an_empty_test_split_is_refused_before_training(tmp_path):
  from tests.data_test import write_idx_dir  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "data"
  folder.mkdir()
  write_idx_dir(folder, np.random.default_rng(0), num_train=64, num_eval=0)
  config = _small(**{"data.name": "mnist", "data.source": "idx",
                     "data.data_dir": str(folder)})
  with pytest.raises(data_lib.MissingDataError,
                     match="the eval split of 'mnist'") as info:
    trainer_lib.Trainer(config, str(tmp_path / "run"))
  assert "\n" not in str(info.value)
  assert not (tmp_path / "run").exists()


def test_slim_on_a_model_without_gates_or_batchnorm_before_training(tmp_path):
  config = _small(**{"post.stages": "slim,finetune"})
  with pytest.raises(config_lib.ConfigError,
                     match=r"^post.stages: slim needs gates or BatchNorm"):
    trainer_lib.Trainer(config, str(tmp_path))
  assert not (tmp_path / "run.json").exists()


def test_the_command_line_says_divergence_in_one_line(command, tmp_path):
  status, lines = command(
      "main", "--config", "configs/quickstart.py", "--workdir", str(tmp_path),
      "--config.optimizer.learning_rate=1e30", "--config.train.epochs=0.1")
  assert status == 1
  assert len(lines) == 1 and lines[0].startswith(
      "error: training diverged: the loss or the parameters are not finite "
      "after step "), lines
  assert not (tmp_path / "model.spz").exists()
  assert not (tmp_path / "results.json").exists()
