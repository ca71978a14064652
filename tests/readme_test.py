"""The README's and docs/' commands, examples, links and numbers hold.

The README's Python blocks run in order as one script, each block's claim
checked; every page under docs/ with Python blocks runs as its own script.
Commands in bash blocks name configs, presets and fields that exist; relative
links point at files; each benchmark headline quotes its results file.
"""

import contextlib
import glob
import importlib.util
import io
import json
import os
import re
import shlex

import numpy as np
import pytest

from experiments import sweep
import sparsify
from sparsify.experiment import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _read(path):
  with open(path) as f:
    return f.read()


def _blocks(path, language):
  return re.findall(rf"```{language}\n(.*?)```", _read(path), re.S)


def _kernels(params):
  return {name: np.asarray(leaf) for name, leaf in
          sparsify.named_leaves(params) if name.endswith("kernel")}


def _runner():
  """A namespace and ``run(code)``, which executes code in it, quietly."""
  ns, out = {}, io.StringIO()

  def run(code):
    with contextlib.redirect_stdout(out):
      exec(code, ns)  # pylint: disable=exec-used

  return ns, out, run


def test_quickstart_is_two_commands_and_ci_runs_the_second():
  commands = _blocks(README, "bash")[0].strip().splitlines()
  assert len(commands) == 2
  assert "experiments.main" in commands[0] and "pytest" in commands[1]
  assert "configs/quickstart.py" in commands[0]
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    assert commands[1] in f.read().splitlines()


def test_readme_python_blocks_run_in_order_and_do_what_they_say():
  """The README's Python blocks, one script; each block's claim checked."""
  blocks = _blocks(README, "python")
  titles = ["compose", "any model", "pruning", "sparse training", "dat", "sss",
            "pq", "search", "lct", "penalties", "config"]
  assert len(blocks) == len(titles)
  ns, out, run = _runner()

  # GMP, layer by layer: every kernel exactly 90 % zeros, report printed.
  run(blocks[0])
  for name, kernel in _kernels(ns["params"]).items():
    assert np.sum(kernel == 0) == np.round(0.9 * kernel.size), name
  assert "hidden/kernel" in out.getvalue() and "total" in out.getvalue()

  # Any model: the ResNet's channels and stream, slim equal to masked; the
  # encoder's heads and MLP neurons, gates of their sizes.
  run(blocks.pop(1))
  assert ns["resnet_gap"] < 1e-5
  assert {(u.kind, u.size) for u in ns["structure"]} == {
      ("head", 4), ("neuron", 16), ("neuron", 128)}
  assert sorted(np.size(g) for g in ns["gates"]["gates"].values()) == [
      4, 16, 16, 128]

  # One-shot: every kernel exactly 90 % zeros. ERK: 90 % of all kernel
  # weights, the small output layer kept denser than the hidden one.
  run(blocks[1])
  for name, kernel in _kernels(ns["pruned"]["one-shot"]).items():
    assert np.sum(kernel == 0) == np.round(0.9 * kernel.size), name
  kernels = _kernels(ns["pruned"]["random ERK"])
  zeros = sum(int(np.sum(k == 0)) for k in kernels.values())
  assert zeros == np.round(0.9 * sum(k.size for k in kernels.values()))
  assert np.mean(kernels["hidden/kernel"] == 0) > np.mean(
      kernels["out/kernel"] == 0)
  assert "random ERK: test accuracy" in out.getvalue()

  # Sparse training: RigL and STE hold 90 % of every kernel at zero; 2:4
  # keeps 2 of every 4 consecutive inputs of each output; all of them learn.
  run(blocks.pop(2))
  for name in ("RigL", "magnitude STE"):
    for path, kernel in _kernels(ns["sparse"][name]).items():
      assert np.sum(kernel == 0) == np.round(0.9 * kernel.size), (name, path)
  for path, kernel in _kernels(ns["sparse"]["GMP 2:4"]).items():
    groups = kernel.reshape(-1, 4, kernel.shape[-1])
    assert np.all(np.count_nonzero(groups, axis=1) == 2), path
  for name in ("RigL", "magnitude STE", "GMP 2:4"):
    score = float(out.getvalue().split(f"{name}: test accuracy ")[1][:5])
    assert score > 0.8, (name, score)

  # DAT, one global budget: 90 % of all kernel weights, unevenly shared.
  run(blocks[2])
  kernels = _kernels(ns["params"])
  zeros = sum(int(np.sum(k == 0)) for k in kernels.values())
  total = sum(k.size for k in kernels.values())
  assert zeros == np.round(0.9 * total)
  assert np.mean(kernels["hidden/kernel"] == 0) > np.mean(
      kernels["out/kernel"] == 0)

  # SSS: neurons removed, and the slim network computes the same logits.
  run(blocks[3])
  assert sum(ns["hidden"]) < 400
  assert ns["slim"]["params"]["fc1"]["kernel"].shape == (784, ns["hidden"][0])
  assert ns["gap"] < 1e-4

  # PQ: the file decodes to the PQ reconstruction; it is smaller on disk.
  # Sharing: at most 16 values in every kernel, biases untouched.
  run(blocks[4])
  code = ns["codes"]["hidden/kernel"]
  np.testing.assert_array_equal(
      np.asarray(ns["restored"]["hidden"]["kernel"]),
      np.asarray(sparsify.pq_decode(code)))
  # 196 sub-spaces of 16 centroids: each row block takes at most 16 values.
  w = np.asarray(ns["restored"]["hidden"]["kernel"]).T.reshape(256, 196, 4)
  assert max(len(np.unique(w[:, j], axis=0)) for j in range(196)) <= 16
  assert sparsify.file_report(ns["path"]).compression_ratio > 3
  for name, kernel in _kernels(ns["shared"]).items():
    assert len(np.unique(kernel)) <= 16, name
  np.testing.assert_array_equal(np.asarray(ns["shared"]["hidden"]["bias"]),
                                np.asarray(ns["dense"]["hidden"]["bias"]))

  # Binary search: neurons removed within the tolerance on held-out data.
  run(blocks[5])
  result, mlp, held_out = ns["result"], ns["mlp"], ns["held_out"]
  assert sum(result.kept.values()) < 400
  baseline = ns["accuracy"](mlp, ns["params"], held_out)
  assert ns["accuracy"](mlp, result.variables["params"],
                        held_out) >= baseline - 0.01

  # LCT: the chosen layer is ternary on its mask; the others keep theirs.
  run(blocks[6])
  weights = dict(sparsify.named_leaves(ns["params"]))
  masks = dict(sparsify.named_leaves(ns["sig"].masks))
  layer = ns["layer"]
  values = np.unique(np.abs(weights[layer][weights[layer] != 0]))
  assert values.size == 1
  for name, mask in masks.items():
    np.testing.assert_array_equal(np.asarray(weights[name]) != 0,
                                  np.asarray(mask), err_msg=name)

  # Binary attractor: magnitudes gather around their mean, at a small cost.
  run(blocks[7])
  assert ns["spread"](ns["attracted"]) < 0.5 * ns["spread"](ns["dense"])
  assert ns["accuracy"](ns["model"], ns["attracted"]) > 0.85

  # A config file: the two entries, valid, as the text describes them.
  run(blocks[8])
  config = ns["get_config"]()
  config_lib.validate(config)
  assert [e.name for e in config.compression] == ["dat", "binary"]
  dat = config.compression[0]
  assert (dat.begin, dat.end, dat.kwargs.target_sparsity) == (0.1, 0.7, 0.9)
  assert config.compression[1].kwargs.strength == 1e-4


def _check_pruning(ns, out):
  """A policy of one's own: pruned exactly where it said, bias untouched."""
  kernel = np.asarray(ns["params"]["fc"]["kernel"])
  mask = np.asarray(ns["mask"])
  assert 0.2 < 1 - mask.mean() < 0.8
  np.testing.assert_array_equal(kernel != 0, mask)
  assert np.all(np.asarray(ns["params"]["fc"]["bias"]) != 0)
  assert "kernel sparsity" in out


def _check_sss(ns, out):
  """Surgery on a model of one's own: narrower, the same logits."""
  assert ns["slim_params"]["hidden"]["kernel"].shape == (20, 48)
  assert ns["slim_params"]["out"]["kernel"].shape == (48, 10)
  assert ns["gap"] < 1e-5
  assert "-> (20, 48)" in out


def _check_quantization(ns, out):
  """Weight sharing into the file: the decoded layer is the shared one."""
  np.testing.assert_array_equal(ns["loaded"]["fc"]["kernel"],
                                np.asarray(ns["shared"]["fc"]["kernel"]))
  assert 2 <= ns["values"].size <= 16
  encodings = {leaf.path: leaf.encoding for leaf in ns["report"].leaves}
  assert encodings["fc/kernel"] == "shared"
  assert ns["report"].compression_ratio > 10
  assert "shared values" in out


def _check_penalties(ns, out):
  """L1 plus group lasso add up; the bias is not selected."""
  expected = -(0.1 * np.array([[1.0, 0.0], [-1.0, 1.0]])
               + np.array([[0.6, 0.0], [-0.8, 1.0]]))
  np.testing.assert_allclose(ns["updates"]["fc"]["kernel"], expected,
                             rtol=1e-6)
  np.testing.assert_array_equal(ns["updates"]["fc"]["bias"], np.zeros(2))
  assert out


def _check_experiments(ns, out):
  """A run from Python: its steps, its file; a bad value named."""
  results = ns["results"]
  assert results["steps"] == 31
  assert [e.name for e in ns["config"].compression] == ["gmp"]
  file = results["post"]["file"]
  assert file["bytes_on_disk"] < file["float32_bytes"]
  assert file["decoded_accuracy"] == file["recorded_accuracy"]
  assert "compression[0].kwargs.sparsity: got 1.5" in out


CHECKS = {"pruning.md": _check_pruning, "sss.md": _check_sss,
          "quantization.md": _check_quantization,
          "penalties.md": _check_penalties,
          "experiments.md": _check_experiments}


@pytest.mark.parametrize("path", DOCS, ids=os.path.basename)
def test_docs_python_blocks_run_and_do_what_they_say(path):
  """Each page's Python blocks, in order, as one script of their own."""
  blocks = _blocks(path, "python")
  name = os.path.basename(path)
  assert bool(blocks) == (name in CHECKS), (
      f"{name}: a page with Python blocks needs a check here, and only one")
  if not blocks:
    return
  ns, out, run = _runner()
  for block in blocks:
    run(block)
  CHECKS[name](ns, out.getvalue())


def test_every_docs_page_is_linked_from_the_readme():
  readme = _read(README)
  for path in DOCS:
    assert f"](docs/{os.path.basename(path)})" in readme, path


@pytest.mark.parametrize("path", [README] + DOCS, ids=os.path.basename)
def test_relative_links_point_at_files(path):
  for target in re.findall(r"\]\(([^)\s]+)\)", _read(path)):
    if re.match(r"[a-z]+:", target) or target.startswith("#"):
      continue
    file = os.path.normpath(os.path.join(os.path.dirname(path),
                                         target.split("#")[0]))
    assert os.path.exists(file), f"{os.path.basename(path)}: {target}"


def _commands(path):
  """Every ``python -m experiments.{main,sweep}`` command of the bash blocks."""
  for block in _blocks(path, "bash"):
    for command in block.replace("\\\n", " ").splitlines():
      if "NAME.py" in command:  # the pattern, not a command
        continue
      words = shlex.split(command)
      if words[:3] in (["python", "-m", "experiments.main"],
                       ["python", "-m", "experiments.sweep"]):
        yield words


def _load_config(spec):
  file, _, preset = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location(
      "doc_config", os.path.join(ROOT, file))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(preset) if preset else module.get_config()


@pytest.mark.parametrize("path", [README] + DOCS, ids=os.path.basename)
def test_commands_name_configs_presets_and_fields_that_exist(path):
  """Each command's config loads, and its overrides and grids set fields."""
  for words in _commands(path):
    config = _load_config(words[words.index("--config") + 1])
    values = {}
    for flag, arg in zip(words, words[1:] + [""]):
      if flag.startswith("--config."):
        field, value = flag[len("--config."):].split("=", 1)
        values[field] = sweep.parse_value(config, field, value)
      elif flag == "--set":
        field, value = sweep.parse_assignment(arg, several=False)
        values[field] = sweep.parse_value(config, field, value)
      elif flag == "--grid":
        field, grid = sweep.parse_assignment(arg, several=True)
        values[field] = sweep.parse_value(config, field, grid[-1])
    config_lib.validate(sweep.with_values(config, values))


def _headline_rows():
  section = _read(README).split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
  rows = [line for line in section.splitlines() if line.startswith("| ")]
  return [[cell.strip() for cell in row.strip("|").split("|")]
          for row in rows[1:]]


def test_benchmark_headlines_quote_their_results_and_commands():
  """Each headline's numbers are in the linked file, with its command."""
  rows = _headline_rows()
  assert len(rows) >= 8
  command = None
  for method, headline, link, cell in rows:
    target = re.fullmatch(r"\[[^]]+\]\((experiments/benchmarks/results/"
                          r"[^)]+\.md)\)", link)
    assert target, (method, link)
    md = os.path.join(ROOT, target.group(1))
    text = _read(md)
    numbers = re.findall(r"\d+(?:,\d{3})+|\d+\.\d+", headline)
    assert numbers, method
    for number in numbers:
      assert number in text, (method, number, md)
    if cell != "the same":
      command = cell.strip("`")
    if os.path.basename(md) == "results.md":  # a sweep's own table
      assert command.startswith("python -m experiments.sweep "), method
      continue
    recorded = json.loads(_read(md[:-3] + ".json"))
    assert command in ([recorded["command"]]
                       + recorded.get("previous_commands", [])), method
