"""The sparse-training presets end to end: config, trainer, report, file.

Each preset trains a small MLP for a few steps through `sparsify.run`; the
final kernels must hold the sparsity (and pattern) the preset promises,
counted by hand from the saved parameters.
"""

import numpy as np
import pytest

from sparsify.experiment import checkpoint
from sparsify.experiment import config as config_lib
from sparsify.experiment import run as run_lib
from tests.train_test import tiny_config

# preset -> final sparsity of every kernel but the 10-way head's (which the
# uniform allocations prune alike, ERK less).
PRESETS = {"set": None, "rigl": None, "snip": 0.8, "saliency": 0.8,
           "magnitude_ste": 0.8, "random_ste": 0.8, "random_erk": None,
           "gmp_2_4": 0.5, "gmp_blocks": 0.8, "saliency_global": None}


def _config(preset):
  config = config_lib.with_method(tiny_config(), preset)
  config.model.name = "mlp"
  config.model.kwargs.hidden = (32, 16)
  config.train.epochs = 0.4  # 25 steps of 128
  config.train.log_every = 25
  config.train.checkpoint_every = 25
  for entry in config.compression:
    if preset != "gmp_2_4":
      entry.kwargs.sparsity = 0.8
    if "update_every" in entry.kwargs:
      entry.kwargs.update_every = 5
  return config


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_trains_to_its_sparsity(preset, tmp_path):
  results = run_lib.run(_config(preset), str(tmp_path))
  params = checkpoint.load(str(tmp_path))["params"]
  kernels = {name: np.asarray(params[name]["kernel"])
             for name in ("fc1", "fc2", "head")}
  total = sum(k.size for k in kernels.values())
  zeros = sum(int(np.sum(k == 0)) for k in kernels.values())
  # The report counts what is saved.
  layers = {l["name"]: l for l in results["report"]["layers"]}
  for name, kernel in kernels.items():
    assert layers[f"{name}/kernel"]["nonzeros"] == np.count_nonzero(kernel)
  # 4x4 tiles: fc2 (32 x 16) has 32, so its sparsity moves in 1/32 steps.
  tolerance = 1 / 32 if preset == "gmp_blocks" else 0.01
  assert zeros / total == pytest.approx(0.8 if preset != "gmp_2_4" else 0.5,
                                        abs=tolerance)
  expected = PRESETS[preset]
  if expected is not None:
    for name, kernel in kernels.items():
      assert np.mean(kernel == 0) == pytest.approx(expected,
                                                   abs=tolerance), name
  if preset == "gmp_2_4":  # 2 of every 4 consecutive inputs of each output
    for kernel in kernels.values():
      groups = kernel.reshape(-1, 4, kernel.shape[-1])
      assert np.all(np.count_nonzero(groups, axis=1) == 2)


class _Killed(Exception):
  pass


@pytest.mark.parametrize("preset", ["rigl"])
def test_an_interrupted_run_resumes_to_the_same_state(preset, tmp_path,
                                                      monkeypatch, caplog):
  import jax  # pylint: disable=g-import-not-at-top
  config = _config(preset)
  config.train.checkpoint_every = 10
  run_lib.run(config, str(tmp_path / "whole"))
  real = run_lib._Logger.__call__  # pylint: disable=protected-access

  def killed_after_step_10(self, done, *args):
    real(self, done, *args)
    if done == 10:  # its checkpoint is being written
      self.mngr.wait_until_finished()
      raise _Killed

  monkeypatch.setattr(run_lib._Logger, "__call__", killed_after_step_10)  # pylint: disable=protected-access
  with pytest.raises(_Killed):
    run_lib.run(config, str(tmp_path / "killed"))
  monkeypatch.undo()
  with caplog.at_level("INFO", logger="sparsify"):
    run_lib.run(config, str(tmp_path / "killed"))
  assert "resumed from step 10" in caplog.text
  a, b = (checkpoint.load(str(tmp_path / n)) for n in ("whole", "killed"))
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree.map(np.testing.assert_array_equal, a["opt_state"], b["opt_state"])
