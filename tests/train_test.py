"""End-to-end tests of the trainer on the embedded MNIST digits."""

import importlib.util
import os
import signal
import subprocess
import sys
import time

import jax
from ml_collections.config_flags import config_path
import numpy as np
import pytest

from sparsify import data as data_lib
from sparsify.core import paths
from sparsify.experiment import checkpoint
from sparsify.experiment import config as config_lib
from sparsify.experiment import run as run_lib
from sparsify.experiment import trainer as trainer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  config = config_lib.default_config()
  config.data.batch_size = 32
  config.data.eval_batch_size = 400
  config.train.epochs = 0.25
  config.train.log_every = 20
  config.train.checkpoint_every = 20
  config.train.plots = False  # see test_same_config_and_seed_...
  set_fields(config, overrides)
  return config


def set_fields(config, values):
  """Sets fields by path, e.g. ``compression[0].kwargs.sparsity``."""
  for path, value in values.items():
    config_path.set_value(path, config, value)


@pytest.mark.parametrize("model,kwargs", [
    ("lenet_300_100", {}),
    ("vgg", {"stages": ((8,), (16,)), "width": 1.0}),
])
def test_train_step_lowers_loss_on_a_fixed_batch(model, kwargs, tmp_path):
  config = tiny_config(**{"model.name": model, "optimizer.schedule": "constant",
                          "optimizer.learning_rate": 0.1})
  config.model.kwargs.update(kwargs)
  trainer = trainer_lib.Trainer(config, str(tmp_path))
  state = trainer.init_state()
  batch = next(data_lib.batches(
      trainer.dataset.train, batch_size=32, seed=0,
      mean=trainer.dataset.mean, std=trainer.dataset.std))
  batch = jax.device_put(batch, trainer.sharded)
  stats_before = jax.device_get(state.batch_stats)
  losses = []
  for _ in range(30):
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.7 * losses[0], losses
  assert int(state.step) == 30
  if stats_before:  # BatchNorm running statistics move during training.
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), stats_before,
                           jax.device_get(state.batch_stats))
    assert all(jax.tree.leaves(changed))


def test_same_config_and_seed_give_the_same_parameters(tmp_path):
  config = tiny_config(compression=[config_lib.method(
      "gmp", sparsity=0.8, update_every=10)])
  a = run_lib.run(config, str(tmp_path / "a"))
  config.train.plots = True  # plots change nothing but the PNGs
  b = run_lib.run(config, str(tmp_path / "b"))
  pngs = {"sparsity.png", "training.png", "histograms.png"}
  assert pngs <= set(os.listdir(tmp_path / "b"))
  assert not pngs & set(os.listdir(tmp_path / "a"))
  pa, pb = (checkpoint.load(str(tmp_path / d))["params"] for d in "ab")
  jax.tree.map(np.testing.assert_array_equal, pa, pb)
  assert a["eval_accuracy"] == b["eval_accuracy"]
  # The report reflects the masks: every kernel ends at 80 % sparsity.
  for layer in a["report"]["layers"]:
    if layer["name"].endswith("kernel"):
      assert layer["nonzeros"] == round(0.2 * layer["params"])
  assert os.path.exists(tmp_path / "a" / "report.json")


def test_seed_changes_the_result(tmp_path):
  run_lib.run(tiny_config(seed=0), str(tmp_path / "a"))
  run_lib.run(tiny_config(seed=1), str(tmp_path / "b"))
  pa, pb = (checkpoint.load(str(tmp_path / d))["params"] for d in "ab")
  assert not np.array_equal(pa["fc1"]["kernel"], pb["fc1"]["kernel"])


_RESUME_FIELDS = {
    "data.batch_size": 32, "train.epochs": 0.5, "train.checkpoint_every": 25,
    "train.log_every": 50, "compression[0].kwargs.sparsity": 0.9,
    "compression[0].kwargs.update_every": 20, "train.plots": False}


def _resume_config():
  config = _load_config("lenet_300_100", "gmp")
  set_fields(config, _RESUME_FIELDS)
  return config


def test_killed_run_resumes_to_the_same_parameters(tmp_path, caplog):
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  # The run to kill is the command line, in a process of its own.
  overrides = [f"--config.{k}={v}" for k, v in _RESUME_FIELDS.items()]
  proc = subprocess.Popen(
      [sys.executable, "-m", "experiments.main", "--config",
       os.path.join(ROOT, "configs", "lenet_300_100.py:gmp"), "--workdir",
       str(killed), *overrides], cwd=ROOT,
      env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  ckpt = killed / "checkpoints"
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline and proc.poll() is None:
    if ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()):
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.01)
  assert proc.wait() == -signal.SIGKILL, "the run ended before it was killed"
  assert not (killed / "results.json").exists()
  saved = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
  total = 8000 // 32 // 2  # half an epoch
  assert saved and saved[-1] < total

  run_lib.run(_resume_config(), str(whole))
  with caplog.at_level("INFO", logger="sparsify"):
    run_lib.run(_resume_config(), str(killed))
  assert f"resumed from step {saved[-1]}" in caplog.text
  a, b = checkpoint.load(str(whole)), checkpoint.load(str(killed))
  assert int(a["step"]) == int(b["step"]) == total
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree.map(np.testing.assert_array_equal, a["opt_state"], b["opt_state"])


def _sharded_config():
  config = tiny_config(**{"model.name": "vgg", "compression": [
      config_lib.method("gmp", sparsity=0.5, update_every=2)]})
  config.model.kwargs.stages = ((8,), (16,))
  config.train.epochs = 10 / 250  # ten steps of 32 examples
  return config


_SHARDED_RUN = """
import sys, jax
from sparsify.experiment import run as run_lib
sys.path.insert(0, {tests!r})
from train_test import _sharded_config
run_lib.run(_sharded_config(), sys.argv[1])
print("devices", jax.device_count())
"""


def test_eight_devices_match_one_device(tmp_path):
  # Both runs in their own process, compiled with XLA's usual optimizations
  # (the suite's level 0 rounds differently enough to flip GMP's choice of
  # a weight whose magnitude ties the threshold), on 1 and 8 devices.
  script = _SHARDED_RUN.format(tests=os.path.join(ROOT, "tests"))
  flags = os.environ.get("XLA_FLAGS", "").replace(
      "--xla_backend_optimization_level=0", "")
  for n in (1, 8):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": (
        f"{flags} --xla_force_host_platform_device_count={n}")}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / str(n))], cwd=ROOT,
        env=env, check=True, capture_output=True, text=True).stdout
    assert out.split("devices")[-1].strip() == str(n)
  one, eight = (checkpoint.load(str(tmp_path / str(n))) for n in (1, 8))
  init = trainer_lib.Trainer(_sharded_config(), str(tmp_path / "init")).init_state()
  # Same global batch, different reduction order: the two runs differ by
  # float rounding only, a small fraction of how far training moved each
  # leaf. (Sharding mistakes, such as per-device BatchNorm statistics or
  # unaveraged gradients, give differences of the order of the movement.)
  named = lambda tree: dict(paths.named_leaves(tree))
  eight_params, start = named(eight["params"]), named(init.params)
  for name, a in named(one["params"]).items():
    moved = np.linalg.norm(a - np.asarray(start[name]))
    assert moved > 0, name
    assert np.linalg.norm(a - eight_params[name]) < 1e-2 * moved, name
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-5),
               one["batch_stats"], eight["batch_stats"])
  masks, masks8 = ([np.asarray(x) for x in jax.tree.leaves(run["opt_state"])
                    if np.asarray(x).dtype == bool] for run in (one, eight))
  assert len(masks) == len(masks8) == 3  # two conv kernels and the head
  for a, b in zip(masks, masks8):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("preset,extra", [
    ("magnitude", {}), ("random", {}), ("dat", {}),
    ("dat", {"recovery": True}),
    ("dat", {"target_mode": "solve"}),
], ids=["magnitude", "random", "dat", "dat_recovery", "dat_solve"])
def test_every_preset_trains_and_reports(preset, extra, tmp_path):
  config = config_lib.with_method(tiny_config(), preset)
  kwargs = config.compression[0].kwargs
  if "update_every" in kwargs:
    kwargs.update_every = 10
  kwargs["target_sparsity" if preset == "dat" else "sparsity"] = 0.8
  kwargs.update(extra)
  results = run_lib.run(config, str(tmp_path))
  kernels = [l for l in results["report"]["layers"]
             if l["name"].endswith("kernel")]
  zeros = sum(l["params"] - l["nonzeros"] for l in kernels)
  total = sum(l["params"] for l in kernels)
  assert 0 < zeros <= round(0.8 * total) + len(kernels)  # never past target
  # The hysteresis band closes at the last update: recovery meets it too.
  if preset == "dat" and kwargs.target_mode == "global":  # one budget
    assert zeros == round(0.8 * total)
  else:
    assert zeros == sum(round(0.8 * l["params"]) for l in kernels)


@pytest.mark.parametrize("config_file,preset", [("lenet_300_100", "gmp"),
                                                ("lenet5", "dat")])
def test_configs_train_on_tfds_mnist(config_file, preset, mock_tfds, tmp_path):
  del mock_tfds  # the fixture serves 64 random examples per split
  config = _load_config(config_file, preset)
  config.data.name, config.data.source = "mnist", "tfds"
  config.data.batch_size = config.data.eval_batch_size = 16
  config.train.epochs = 2.0
  results = run_lib.run(config, str(tmp_path))
  assert results["steps"] == 2 * 64 // 16
  assert results["dataset"] == "mnist" and results["method"] == preset
  assert 0.0 <= results["eval_accuracy"] <= 1.0


def _load_config(name, preset):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)
