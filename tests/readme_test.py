"""The README's commands and example are the ones that work."""

import contextlib
import io
import os
import re

import numpy as np

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


def test_composition_example_runs_and_prunes():
  namespace = {}
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(_blocks("python")[0], namespace)  # pylint: disable=exec-used
  params = namespace["params"]
  for layer in ("Dense_0", "Dense_1"):
    kernel = np.asarray(params[layer]["kernel"])
    assert np.mean(kernel == 0) == np.round(0.9 * kernel.size) / kernel.size
  assert "Dense_0/kernel" in out.getvalue() and "total" in out.getvalue()
