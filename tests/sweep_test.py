"""Tests of experiments/sweep.py on a tiny MLP and the embedded digits."""

import csv
import json
import os
import sys

import pytest

from sparsify.experiment import config as config_lib
from sparsify.experiment import files
from sparsify.experiment import run as run_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `experiments` is a folder of the repository
  sys.path.insert(0, ROOT)
from experiments import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_config():
  config = config_lib.default_config()
  config.model.name = "mlp"
  config.model.kwargs.hidden = (16,)
  config.data.batch_size = 32
  config.train.epochs = 0.1  # 25 steps of the 8,000 training digits
  config.train.log_every = 5
  config.train.plots = False
  # Masks at steps 0, 5, ..., 20.
  config.compression = [config_lib.method("gmp", end=0.8, update_every=5,
                                          sparsity=0.5)]
  return config


SPARSITY = "compression[0].kwargs.sparsity"
ALLOCATION = "compression[0].kwargs.allocation"
GRID = {SPARSITY: ["0.5", "0.8"], ALLOCATION: ["layerwise"]}
NAMES = [
    "compression.0.kwargs.sparsity=0.5,compression.0.kwargs.allocation="
    "layerwise",
    "compression.0.kwargs.sparsity=0.8,compression.0.kwargs.allocation="
    "layerwise"]


@pytest.fixture
def calls(monkeypatch):
  """Counts calls of train_and_evaluate (which still trains)."""
  real = run_lib.run
  seen = []

  def counting(config, workdir):
    seen.append(workdir)
    return real(config, workdir)

  monkeypatch.setattr(run_lib, "run", counting)
  return seen


def test_sweep_runs_collects_and_resumes(tmp_path, calls):
  workdir = str(tmp_path)
  rows = sweep.run_sweep(tiny_config(), workdir, GRID)
  assert calls == [os.path.join(workdir, n) for n in NAMES]
  assert [r["run"] for r in rows] == NAMES
  assert [r[SPARSITY] for r in rows] == [0.5, 0.8]

  with open(tmp_path / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert len(table) == 2
  # 784*16 + 16*10 kernel weights, 16 + 10 biases.
  kernels, biases = 784 * 16 + 16 * 10, 16 + 10
  for name, sparsity, line, row in zip(NAMES, (0.5, 0.8), table, rows):
    with open(tmp_path / name / "results.json") as f:
      results = json.load(f)
    total = results["report"]["total"]
    assert float(line["eval_accuracy"]) == results["eval_accuracy"]
    assert int(line["nonzeros"]) == total["nonzeros"]
    assert int(line["params"]) == total["params"] == kernels + biases
    assert float(line["compression_ratio"]) == total["compression_ratio"]
    assert float(line[SPARSITY]) == sparsity
    assert line[ALLOCATION] == "layerwise"
    assert line["bytes_on_disk"] == "" and row["bytes_on_disk"] is None
    # Layer-wise GMP: every kernel at the target; biases stay nonzero.
    expected = (round((1 - sparsity) * 784 * 16) +
                round((1 - sparsity) * 16 * 10) + biases)
    assert total["nonzeros"] == expected
    assert row["nonzeros"] == expected
    assert 0.1 < results["eval_accuracy"] <= 1.0
    with open(tmp_path / name / "config.json") as f:
      assert json.load(f)["compression"][0]["kwargs"]["sparsity"] == sparsity

  md = (tmp_path / "results.md").read_text().splitlines()
  assert len(md) == 4 and md[0].startswith(f"| {SPARSITY} |")
  with open(tmp_path / "pareto.png", "rb") as f:
    assert f.read(8) == PNG_SIGNATURE

  again = sweep.run_sweep(tiny_config(), workdir, GRID)
  assert len(calls) == 2  # both skipped
  assert again == rows

  # A run directory of another config is refused before training.
  other = tiny_config()
  other.seed = 1
  with pytest.raises(config_lib.ConfigError, match="seed"):
    sweep.run_sweep(other, workdir, GRID)
  assert len(calls) == 2


@pytest.mark.parametrize("grid,match", [
    ({"compression[0].kwargs.sparsty": [0.5]},
     r"compression\[0\].kwargs.sparsty: no such config field; close "
     r"matches: compression\[0\].kwargs.sparsity"),
    ({"compression[3].kwargs.sparsity": [0.5]},
     r"compression\[3\].kwargs.sparsity: no such config field"),
    ({"train.epoch": [1]}, r"close matches: train.epochs"),
    ({"nothing.like.this": [1]}, r"no such config field; allowed"),
    ({"compression[0].kwargs": [1]},
     r"a group of fields.*compression\[0\].kwargs.sparsity"),
    ({SPARSITY: ["abc"]},
     r"compression\[0\].kwargs.sparsity: got 'abc'; allowed: a finite "
     r"number"),
    ({"compression[0].kwargs.update_every": ["2.5"]},
     r"compression\[0\].kwargs.update_every: got '2.5'; allowed: an "
     r"integer"),
    ({SPARSITY: ["1.5"]},
     r"compression\[0\].kwargs.sparsity: got 1.5; allowed: a fraction in "
     r"\[0, 1\)"),
    ({"compression[0].name": ["gmp", "nope"]},
     r"compression\[0\].name: got 'nope'; allowed: .*gmp"),
    ({SPARSITY: ["0.5", "0.50"]}, r"distinct values"),
    ({SPARSITY: []}, r"got no values"),
    ({"model.kwargs.hiden": ["(8,)"]},
     r"model.kwargs: unknown argument\(s\) 'hiden' for model 'mlp'"),
    ({}, r"got no field"),
])
def test_bad_grids_fail_before_training(grid, match, tmp_path, calls):
  with pytest.raises(config_lib.ConfigError, match=match):
    sweep.run_sweep(tiny_config(), str(tmp_path), grid)
  assert not calls
  assert not os.listdir(tmp_path)


def test_field_and_override_in_both(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="both in the grid"):
    sweep.run_sweep(tiny_config(), str(tmp_path),
                    {"seed": [0, 1]}, overrides={"seed": "2"})


def test_row_reads_the_report_and_the_compressed_file():
  results = {"eval_accuracy": 0.91,
             "report": {"total": {"nonzeros": 120, "params": 1000,
                                  "compression_ratio": 4.5}},
             "post": {"stages": [], "file": {"bytes_on_disk": 777,
                                             "decoded_accuracy": 0.9}}}
  row = sweep._row("c=1.0", {"compression.c": 1.0}, results)  # pylint: disable=protected-access
  assert row == {"run": "c=1.0", "compression.c": 1.0, "eval_accuracy": 0.91,
                 "nonzeros": 120, "params": 1000, "compression_ratio": 4.5,
                 "bytes_on_disk": 777, "file_accuracy": 0.9}
  del results["post"]
  row = sweep._row("c=1.0", {"compression.c": 1.0}, results)  # pylint: disable=protected-access
  assert row["bytes_on_disk"] is None and row["file_accuracy"] is None
  md = sweep.markdown([row]).splitlines()
  assert md[2] == "| 1.0 | 0.9100 | 120 | 1,000 | 4.50 | n/a | n/a |"


def test_values_take_the_type_of_the_field():
  config = tiny_config()
  config.compression = [config_lib.method("dat")]
  c, recovery = "compression[0].kwargs.c", "compression[0].kwargs.recovery"
  where = "compression[0].kwargs.where"
  assert sweep.parse_value(config, c, "3") == 3.0
  assert isinstance(sweep.parse_value(config, c, "3"), float)
  assert sweep.parse_value(config, "train.log_every", " 7 ") == 7
  assert sweep.parse_value(config, recovery, "True") is True
  assert sweep.parse_value(config, recovery, "0") is False
  with pytest.raises(config_lib.ConfigError, match="true or false"):
    sweep.parse_value(config, recovery, "maybe")
  assert sweep.parse_value(config, "data.name", "fashion_mnist") == (
      "fashion_mnist")
  assert sweep.parse_value(config, where, "none") is None
  assert sweep.parse_value(config, where, "fc1") == "fc1"
  assert sweep.parse_value(config, "model.kwargs.hidden", "(32, 8)") == (
      32, 8)
  # A model's keyword arguments are open: a new one is read as a literal.
  assert sweep.parse_value(config, "model.kwargs.gates", "True") is True
  with pytest.raises(config_lib.ConfigError, match="allowed: an integer"):
    sweep.parse_value(config, "seed", True)
  with pytest.raises(config_lib.ConfigError, match="allowed: a string"):
    sweep.parse_value(config, "data.name", 3)


def test_split_values_and_run_names():
  assert sweep.split_values("0.8, 0.9,0.95") == ["0.8", "0.9", "0.95"]
  assert sweep.split_values("(64,),(32, 16)") == ["(64,)", "(32, 16)"]
  assert sweep.split_values("'a,b',c") == ["'a,b'", "c"]
  assert sweep.run_name({"compression[1].kwargs.c": 1.0, "seed": 2}) == (
      "compression.1.kwargs.c=1.0,seed=2")
  a = sweep.run_name({"model.kwargs.hidden": (64,)})
  b = sweep.run_name({"model.kwargs.hidden": (64, 32)})
  assert a != b
  for name in (a, b):
    assert name.startswith("model.kwargs.hidden=_64")
    assert all(ch.isalnum() or ch in "._=,+-" for ch in name)
  assert len(sweep.run_name({"x": "y" * 500})) <= 220


def test_command_line_reports_a_bad_field_in_one_line(command, tmp_path):
  status, lines = command(
      "sweep", "--config", "configs/lenet_300_100.py:dat", "--workdir",
      str(tmp_path), "--grid", "compression[0].kwargs.target_sparsity=0.8,0.9",
      "--grid", "compression[0].kwargs.cc=1,3")
  assert status == 2
  assert len(lines) == 1 and lines[0].startswith(
      "error: compression[0].kwargs.cc: no such config field; close matches: "
      "compression[0].kwargs.c,"), lines


@pytest.fixture
def fake_runs(monkeypatch):
  """Replaces training by a run that only writes its results.json."""
  seen = []

  def fake(config, workdir):
    seen.append(os.path.basename(workdir))
    results = {"eval_accuracy": 0.5, "report": {"total": {
        "nonzeros": 1, "params": 2, "compression_ratio": 2.0}}}
    if config.post.stages:
      results["post"] = {"stages": []}
    files.write_json(os.path.join(workdir, "results.json"), results)
    return results

  monkeypatch.setattr(run_lib, "run", fake)
  return seen


def test_torn_run_files_count_as_unfinished(tmp_path, fake_runs, capsys):
  workdir = str(tmp_path)
  grid = {"seed": [0, 1, 2, 3]}
  rows = sweep.run_sweep(tiny_config(), workdir, grid)
  names = [r["run"] for r in rows]
  assert fake_runs == names == ["seed=0", "seed=1", "seed=2", "seed=3"]
  # A kill while writing: an empty results.json, a torn config.json, a
  # results.json of a run that stopped before its end.
  open(tmp_path / "seed=0" / "results.json", "w").close()
  text = (tmp_path / "seed=1" / "config.json").read_text()
  (tmp_path / "seed=1" / "config.json").write_text(text[:len(text) // 2])
  (tmp_path / "seed=2" / "results.json").write_text('{"eval_accuracy": 0.5')
  capsys.readouterr()
  again = sweep.run_sweep(tiny_config(), workdir, grid)
  assert again == rows
  assert fake_runs[4:] == ["seed=0", "seed=1", "seed=2"]
  out = capsys.readouterr().out.splitlines()
  assert out[:4] == [
      "[1/4] seed=0: results.json empty, torn or incomplete: training again "
      "(resuming)",
      "[2/4] seed=1: config.json empty, torn or incomplete: training again "
      "(resuming)",
      "[3/4] seed=2: results.json empty, torn or incomplete: training again "
      "(resuming)",
      "[4/4] seed=3: done before, skipped"]
  assert json.loads((tmp_path / "seed=1" / "config.json").read_text())
  sweep.run_sweep(tiny_config(), workdir, grid)
  assert len(fake_runs) == 7  # all done now


def test_a_run_with_stages_but_no_stage_results_is_unfinished(tmp_path,
                                                              fake_runs):
  config = tiny_config()
  config.post.stages = "share"
  grid = {"seed": [0]}
  sweep.run_sweep(config, str(tmp_path), grid)
  path = tmp_path / "seed=0" / "results.json"
  results = json.loads(path.read_text())
  del results["post"]  # training finished, the stages did not
  path.write_text(json.dumps(results))
  sweep.run_sweep(config, str(tmp_path), grid)
  assert fake_runs == ["seed=0", "seed=0"]


def test_a_file_in_place_of_a_run_folder_is_refused(tmp_path, fake_runs):
  (tmp_path / "seed=0").write_text("")
  with pytest.raises(config_lib.ConfigError, match=(
      r"seed=0: got a file where the sweep keeps a run; allowed: a "
      r"directory")):
    sweep.run_sweep(tiny_config(), str(tmp_path), {"seed": [0]})
  assert not fake_runs


@pytest.mark.parametrize("text,values", [
    ("post.stages='share,pq'", ["share,pq"]),
    ("post.stages='share','pq'", ["share", "pq"]),
    ("post.stages=\"slim,finetune\",'share,pq'", ["slim,finetune", "share,pq"]),
    ("post.stages=share", ["share"]),
    ("post.stages=", [""]),
])
def test_quoted_values_hold_commas(text, values):
  field, texts = sweep.parse_assignment(text, several=True)
  runs = sweep.plan(tiny_config(), [(field, texts)])
  assert [r[1][field] for r in runs] == values
  assert [r[2].post.stages for r in runs] == values


def test_unquoted_comma_list_for_a_list_field_is_refused():
  with pytest.raises(config_lib.ConfigError, match=(
      "post.stages: got 'share,pq', a comma list that could be one run or 2 "
      "runs")):
    sweep.parse_assignment("post.stages=share,pq", several=True)
