"""Shared fixtures, and how JAX compiles under the tests."""

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from unittest import mock

# The tests compile far more than they compute. Compiled programs are shared
# through JAX's persistent cache by every test, xdist worker and subprocess
# of one session (workers inherit the directory the main process makes), and
# XLA compiles without its LLVM backend optimizations (level 0: compiling
# takes about half as long, and the tests' arrays are small). Finished
# training runs
# are shared the same way (see `trained_once`). Set before JAX reads its
# configuration.
_OWN_DIRS = []
if "PYTEST_XDIST_WORKER" not in os.environ:
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_DIRS.append(tempfile.mkdtemp(prefix="sparsify-tests-jax-"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_DIRS[-1]
  _OWN_DIRS.append(tempfile.mkdtemp(prefix="sparsify-tests-runs-"))
  os.environ["SPARSIFY_TESTS_RUNS"] = _OWN_DIRS[-1]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS", ""), "--xla_llvm_disable_expensive_passes=true",
    "--xla_backend_optimization_level=0"]))

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position


def pytest_unconfigure(config):
  del config
  for path in _OWN_DIRS:
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mock_tfds():
  """tfds's own mocked ArrayRecord data (random examples, no network).

  tfds 4.9.10's mock stores `__getitems__` on the mocked reader as a plain
  instance attribute, so Python calls it without `self` and it fails; the
  patch drops the missing argument (reading is unchanged).
  """

  def getitems(record_keys, generator, serialized=False):
    assert not serialized
    return [generator[k] for k in record_keys]

  with tfds.testing.mock_data(num_examples=64,
                              policy=tfds.testing.MockPolicy.USE_CODE), \
      mock.patch.object(tfds.testing.mocking, "_getitems", getitems):
    yield


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def command(monkeypatch, capsys):
  """Runs ``python -m experiments.<name> ARGS`` in this process.

  Returns a function of the command's name and arguments that gives its exit
  status and the lines it wrote on stderr; it runs in the repository root,
  as the README's commands do.
  """
  monkeypatch.chdir(ROOT)
  monkeypatch.syspath_prepend(ROOT)  # `experiments` is a folder of the repo
  from experiments import cli  # pylint: disable=g-import-not-at-top
  from experiments import main  # pylint: disable=g-import-not-at-top
  from experiments import sweep  # pylint: disable=g-import-not-at-top
  commands = {"main": (main.define_flags, main.train),
              "sweep": (sweep.define_flags, sweep.sweep)}

  def run(name, *args):
    capsys.readouterr()
    status = cli.call(*commands[name], [name, *args])
    return status, capsys.readouterr().err.strip().splitlines()

  return run


@contextlib.contextmanager
def _locked(path):
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)  # xdist workers wait for each other
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture
def trained_once(tmp_path):
  """`sparsify.run` in ``tmp_path``, training each key once per session.

  Returns ``run(key, config) -> results``. The first test of a key trains
  and keeps a copy of its finished run; the others start from that copy, so
  only their post-training stages run (the "stages later" path a user takes
  on a finished run). Every config of a key must train the same way: all
  but ``config.post`` is compared.
  """
  from sparsify.experiment import run as run_lib  # pylint: disable=g-import-not-at-top

  def run(key, config):
    training = {k: v for k, v in json.loads(config.to_json()).items()
                if k != "post"}
    training["held_out"] = config.post.validation_examples
    shared = os.path.join(os.environ["SPARSIFY_TESTS_RUNS"], key)
    with _locked(shared + ".lock"):
      if os.path.isdir(shared):
        with open(os.path.join(shared, "training.json")) as f:
          assert json.load(f) == training, f"{key}: trained another way"
        shutil.copytree(shared, tmp_path, dirs_exist_ok=True)
        return run_lib.run(config, str(tmp_path))
      results = run_lib.run(config, str(tmp_path))
      shutil.copytree(tmp_path, shared + ".tmp")
      with open(os.path.join(shared + ".tmp", "training.json"), "w") as f:
        json.dump(training, f)
      os.rename(shared + ".tmp", shared)
      return results

  return run
