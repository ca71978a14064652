"""Checkpoints that can be trusted: checksums, fall back, rotation."""

import gc
import logging
import os
import shutil
import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from sparsify.experiment import checkpoint
from sparsify.experiment.config import ConfigError


def _state(step, finite=True):
  """A small training state; its arrays are different at every step."""
  rng = np.random.default_rng(step)
  kernel = rng.normal(size=(64, 64)).astype(np.float32)
  if not finite:
    kernel[3, 5] = np.nan
  params = {"fc1": {"kernel": kernel,
                    "bias": rng.normal(size=(64,)).astype(np.float32)}}
  zeros = jax.tree.map(np.zeros_like, params)
  adam = optax.ScaleByAdamState(count=np.int32(step), mu=zeros, nu=zeros)
  return jax.tree.map(jax.numpy.asarray, {
      "params": params, "opt_state": (adam, optax.EmptyState()),
      "step": np.int32(step), "rng": np.zeros(2, np.uint32),
      "data_step": np.int32(step)})


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a),
               jax.device_get(b))


def _saved(workdir, steps, keep=10):
  mngr = checkpoint.manager(str(workdir), keep=keep)
  for step in steps:
    checkpoint.save(mngr, step, _state(step))
  mngr.close()


def _steps(workdir):
  return sorted(int(n) for n in os.listdir(workdir / "checkpoints")
                if n.isdigit())


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records
          if r.name == "sparsify" and r.levelno >= logging.WARNING]


def _restore(workdir, caplog):
  mngr = checkpoint.manager(str(workdir), keep=10)
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="sparsify"):
    try:
      return checkpoint.restore_or_init(mngr, _state(0))
    finally:
      mngr.close()


def _data_file(workdir, step):
  """The largest file of array data of a step (an OCDBT data file)."""
  root = workdir / "checkpoints" / str(step) / "default"
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
           if os.path.basename(d) == "d"]
  return max(files, key=os.path.getsize)


def _flip_bit(path):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0x01
    f.seek(0)
    f.write(data)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def test_a_flipped_bit_falls_back_to_the_step_before(tmp_path, caplog):
  _saved(tmp_path, (10, 20, 30))
  _flip_bit(_data_file(tmp_path, 30))
  # Orbax alone reads the damaged file back as other numbers, silently.
  raw = ocp.StandardCheckpointer().restore(
      tmp_path / "checkpoints" / "30" / "default")
  assert not np.array_equal(raw["params"]["fc1"]["kernel"],
                            _state(30)["params"]["fc1"]["kernel"])

  restored = _restore(tmp_path, caplog)
  _assert_same(restored, _state(20))
  assert _warnings(caplog) == [(
      f"checkpoint {tmp_path}/checkpoints/30 is corrupt (checksum mismatch "
      "in params/fc1/kernel); falling back")]
  assert _steps(tmp_path) == [10, 20, 30]  # nothing deleted
  with pytest.raises(checkpoint.CorruptCheckpointError,
                     match=r"checkpoints/30 is corrupt \(checksum mismatch"):
    checkpoint.load(str(tmp_path))
  _assert_same(checkpoint.load(str(tmp_path), 20)["params"],
               _state(20)["params"])


def test_a_truncated_file_falls_back_in_one_line(tmp_path, caplog,
                                                 monkeypatch):
  _saved(tmp_path, (10, 20))
  _truncate(_data_file(tmp_path, 20))
  unraisable = []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  restored = _restore(tmp_path, caplog)
  _assert_same(restored, _state(10))
  [warning] = _warnings(caplog)
  assert warning.startswith(
      f"checkpoint {tmp_path}/checkpoints/20 is unreadable (")
  assert warning.endswith("); falling back") and "\n" not in warning
  # Orbax's failed read leaves coroutines that print a traceback when they
  # are collected (whether they are left is a race); none are left now.
  gc.collect()
  assert not unraisable
  with pytest.raises(checkpoint.CorruptCheckpointError, match="unreadable"):
    checkpoint.load(str(tmp_path))


def test_no_usable_checkpoint_is_a_config_error_in_one_line(tmp_path, caplog):
  _saved(tmp_path, (10, 20))
  _flip_bit(_data_file(tmp_path, 20))
  _truncate(_data_file(tmp_path, 10))
  with pytest.raises(ConfigError) as e:
    _restore(tmp_path, caplog)
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"{tmp_path}/checkpoints: none of its 2 ")
  assert "step 20, is corrupt (checksum mismatch in params/fc1/kernel)" in (
      message)
  assert message.endswith("; move it away or pass another --workdir")
  assert len(_warnings(caplog)) == 2
  assert _warnings(caplog)[-1].endswith("; no older checkpoint")
  assert _steps(tmp_path) == [10, 20]


def test_rotation_keeps_the_last_finite_step(tmp_path, caplog):
  mngr = checkpoint.manager(str(tmp_path), keep=2)
  for step in (10, 20, 30, 40, 50):  # diverges after step 20
    checkpoint.save(mngr, step, _state(step, finite=step <= 20))
  mngr.wait_until_finished()
  assert _steps(tmp_path) == [20, 40, 50]
  assert checkpoint.last_good_step(mngr) == 20
  mngr.close()

  restored = _restore(tmp_path, caplog)
  _assert_same(restored, _state(20))
  assert _warnings(caplog) == [
      f"checkpoint {tmp_path}/checkpoints/{step} is not finite "
      "(params/fc1/kernel has NaN or infinite values); falling back"
      for step in (50, 40)]

  # Training on from step 20 saves 30 and 40 again: the non-finite steps
  # are moved aside, not deleted, and rotation goes on as before.
  mngr = checkpoint.manager(str(tmp_path), keep=2)
  for step in (30, 40, 50):
    checkpoint.save(mngr, step, _state(step))
  mngr.wait_until_finished()
  assert _steps(tmp_path) == [40, 50]
  assert checkpoint.last_good_step(mngr) == 50
  mngr.close()
  assert sorted(n.split(".")[0] for n in os.listdir(tmp_path / "checkpoints")
                if "superseded" in n) == ["40", "50"]
  _assert_same(checkpoint.load(str(tmp_path))["params"],
               _state(50)["params"])


def test_rotation_keeps_the_newest(tmp_path):
  mngr = checkpoint.manager(str(tmp_path), keep=2)
  assert checkpoint.last_good_step(mngr) is None
  for step in (10, 20, 30, 40):
    checkpoint.save(mngr, step, _state(step))
    # While a step is saved, the newest finalized one is not deleted.
    assert step - 10 in _steps(tmp_path) or step == 10
  mngr.wait_until_finished()
  assert _steps(tmp_path) == [30, 40]
  mngr.close()


def test_an_interrupted_save_is_skipped_and_cleaned_up(tmp_path, caplog):
  _saved(tmp_path, (10, 20))
  ckpt = tmp_path / "checkpoints"
  # Killed while orbax wrote step 30: its temporary directory, checksums
  # and all, never renamed into place.
  shutil.copytree(ckpt / "20", ckpt / "30.orbax-checkpoint-tmp")
  # Killed while writing step 40 where directories are not renamed (a
  # bucket): the directory, without its data, checksums or commit file.
  shutil.copytree(ckpt / "20", ckpt / "40")
  shutil.rmtree(ckpt / "40" / "checksums")
  shutil.rmtree(ckpt / "40" / "default" / "ocdbt.process_0")
  os.remove(ckpt / "40" / "commit_success.txt")

  restored = _restore(tmp_path, caplog)
  assert not (ckpt / "30.orbax-checkpoint-tmp").exists()
  _assert_same(restored, _state(20))
  [warning] = _warnings(caplog)
  assert warning.startswith(f"checkpoint {ckpt}/40 is unreadable (")


def test_a_checkpoint_without_checksums_is_restored_unverified(tmp_path,
                                                               caplog):
  # As saved before checksums were recorded: orbax's single default item.
  old = ocp.CheckpointManager(
      tmp_path / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=2))
  old.save(10, args=ocp.args.StandardSave(_state(10)))
  old.close()

  restored = _restore(tmp_path, caplog)
  _assert_same(restored, _state(10))
  assert _warnings(caplog) == [(
      f"checkpoint {tmp_path}/checkpoints/10 has no checksums (saved before "
      "they were recorded); restored it unverified")]
  _saved(tmp_path, (20,), keep=1)
  assert _steps(tmp_path) == [10, 20]  # until a newer good step is final
  _assert_same(checkpoint.load(str(tmp_path))["params"],
               _state(20)["params"])
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="sparsify"):
    _assert_same(checkpoint.load(str(tmp_path), 10)["params"],
                 _state(10)["params"])
  [warning] = _warnings(caplog)
  assert "has no checksums" in warning


def test_a_checkpoint_of_another_model_is_a_config_error(tmp_path):
  _saved(tmp_path, (10,))
  mngr = checkpoint.manager(str(tmp_path), keep=2)
  state = _state(0)
  state["params"]["fc1"]["bias"] = jax.numpy.zeros(32)
  with pytest.raises(ConfigError, match=(
      r"checkpoints/10 does not fit the model \(params/fc1/bias is "
      r"float32\[64\], the model's float32\[32\]\); move it away")):
    checkpoint.restore_or_init(mngr, state)
  mngr.close()
