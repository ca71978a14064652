"""The README's commands and example are the ones that work."""

import contextlib
import io
import os
import re

import numpy as np

import sparsify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks(language):
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_quickstart_is_two_commands_and_ci_runs_the_second():
  commands = _blocks("bash")[0].strip().splitlines()
  assert len(commands) == 2
  assert "experiments.main" in commands[0] and "pytest" in commands[1]
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    assert commands[1] in f.read().splitlines()


def _kernels(params):
  return {name: np.asarray(leaf) for name, leaf in
          sparsify.named_leaves(params) if name.endswith("kernel")}


def test_python_blocks_run_in_order_and_do_what_they_say():
  """The README's Python blocks, one script; each block's claim checked."""
  blocks = _blocks("python")
  titles = ["compose", "dat", "pq", "sss", "search", "lct"]
  assert len(blocks) == len(titles)
  ns, out = {}, io.StringIO()

  def run(i):
    with contextlib.redirect_stdout(out):
      exec(blocks[i], ns)  # pylint: disable=exec-used

  # GMP, layer by layer: every kernel exactly 90 % zeros, report printed.
  run(0)
  for name, kernel in _kernels(ns["params"]).items():
    assert np.sum(kernel == 0) == np.round(0.9 * kernel.size), name
  assert "hidden/kernel" in out.getvalue() and "total" in out.getvalue()

  # DAT, one global budget: 90 % of all kernel weights, unevenly shared.
  run(1)
  kernels = _kernels(ns["params"])
  zeros = sum(int(np.sum(k == 0)) for k in kernels.values())
  total = sum(k.size for k in kernels.values())
  assert zeros == np.round(0.9 * total)
  assert np.mean(kernels["hidden/kernel"] == 0) > np.mean(
      kernels["out/kernel"] == 0)

  # PQ: the file decodes to the PQ reconstruction; it is smaller on disk.
  run(2)
  code = ns["codes"]["hidden/kernel"]
  np.testing.assert_array_equal(
      np.asarray(ns["restored"]["hidden"]["kernel"]),
      np.asarray(sparsify.pq_decode(code)))
  # 196 sub-spaces of 16 centroids: each row block takes at most 16 values.
  w = np.asarray(ns["restored"]["hidden"]["kernel"]).T.reshape(256, 196, 4)
  assert max(len(np.unique(w[:, j], axis=0)) for j in range(196)) <= 16
  assert sparsify.file_report(ns["path"]).compression_ratio > 3

  # SSS: neurons removed, and the slim network computes the same logits.
  run(3)
  assert sum(ns["slim"].hidden) < 400
  assert ns["gap"] < 1e-4

  # Binary search: neurons removed within the tolerance on held-out data.
  run(4)
  result, mlp, held_out = ns["result"], ns["mlp"], ns["held_out"]
  assert sum(result.kept.values()) < 400
  baseline = ns["accuracy"](mlp, ns["params"], held_out)
  assert ns["accuracy"](mlp, result.params, held_out) >= baseline - 0.01

  # LCT: the chosen layer is ternary on its mask; the others keep theirs.
  run(5)
  weights = dict(sparsify.named_leaves(ns["params"]))
  masks = dict(sparsify.named_leaves(ns["sig"].masks))
  layer = ns["layer"]
  values = np.unique(np.abs(weights[layer][weights[layer] != 0]))
  assert values.size == 1
  for name, mask in masks.items():
    np.testing.assert_array_equal(np.asarray(weights[name]) != 0,
                                  np.asarray(mask), err_msg=name)
