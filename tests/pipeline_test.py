"""Stages after training, end to end through `sparsify.run`.

Tests of one training (the same key of `trained_once`) share it: the first
trains, the others run their stages on a copy of its finished run.
"""

import math
import os

import numpy as np
import pytest
from train_test import set_fields

from sparsify import spz
from sparsify.experiment import config as config_lib
from sparsify.experiment import run as run_lib
from sparsify.experiment import stages


def _config(preset, **overrides):
  config = config_lib.default_config()
  config.model.name = "mlp"
  config.model.kwargs.hidden = (32, 16)
  config.model.kwargs.gates = False
  config = config_lib.with_method(config, preset)
  config.data.batch_size = 32
  config.data.eval_batch_size = 400
  config.train.epochs = 1.0
  config.train.log_every = 50
  config.train.checkpoint_every = 1000
  config.train.plots = False
  config.post.validation_examples = 800
  config.post.finetune.epochs = 0.25
  set_fields(config, overrides)
  return config


def _file_matches_record(results, workdir):
  info = results["post"]["file"]
  assert info["bytes_on_disk"] == os.path.getsize(
      os.path.join(workdir, "model.spz"))
  # The decoded file is the model whose accuracy was recorded at save time.
  assert info["decoded_accuracy"] == info["recorded_accuracy"]
  assert info["recorded_accuracy"] == results["post"]["stages"][-1][
      "test_accuracy"]


@pytest.mark.parametrize("multiple", [1, 8])
def test_sss_slim_keeps_the_function_and_removes_units(multiple, trained_once,
                                                       tmp_path):
  config = _config("sss", **{"optimizer.kwargs.strength": 0.3,
                             "post.stages": "slim",
                             "post.slim.multiple": multiple})
  assert config.model.kwargs.gates  # the preset switches gates on
  results = trained_once("mlp_sss", config)
  trained, slim = results["post"]["stages"]
  assert sum(slim["units_after"].values()) < 48  # APG zeroed some gates
  assert slim["params"] < trained["params"]
  assert slim["flops"] < trained["flops"]
  # Removing zero-gated units is exact.
  assert slim["test_accuracy"] == pytest.approx(trained["test_accuracy"],
                                                abs=1e-9)
  hidden = tuple(slim["units_after"][f"fc{i}"] for i in (1, 2))
  assert all(h % multiple == 0 for h in hidden)  # 32 and 16 wide at most
  # Parameters of the slim MLP, counted by hand: 784 -> h1 -> h2 -> 10,
  # and the kept gates, one per neuron.
  expected = 784 * hidden[0] + hidden[0] + hidden[0] * hidden[1] + (
      hidden[1] + hidden[1] * 10 + 10) + sum(hidden)
  assert slim["params"] == expected
  _file_matches_record(results, str(tmp_path))


def test_resnet_blocks_and_channels_slimmed_exactly(tmp_path):
  config = _config("sss", **{"optimizer.kwargs.strength": 2.0, "post.stages": "slim",
                             "train.epochs": 0.25})
  config.model.name = "resnet"
  config.model.kwargs = {"depth": 8, "width": 4, "block_gates": True,
                         "channel_gates": True}
  results = run_lib.run(config, str(tmp_path))
  trained, slim = results["post"]["stages"]
  assert slim["params"] < trained["params"]
  assert slim["test_accuracy"] == pytest.approx(trained["test_accuracy"],
                                                abs=1e-9)
  assert len(slim["block_plan"]) == 3
  _file_matches_record(results, str(tmp_path))


def test_search_removes_neurons_within_tolerance_then_finetunes(trained_once,
                                                               tmp_path):
  config = _config("search", **{"post.search.tolerance": 0.02})
  results = trained_once("mlp_held_out", config)
  trained, search, tuned = results["post"]["stages"]
  bound = sum(math.ceil(math.log2(n)) + 1 for n in (32, 16))
  assert search["evaluations"] <= bound + 1  # plus the baseline
  accepted = [s for s in search["log"] if s["accepted"] and s["unit"]]
  assert all(s["accuracy"] >= search["validation_baseline"] - 0.02
             for s in accepted)
  assert search["params"] < trained["params"]
  assert tuned["params"] == search["params"]
  # 800 validation examples are held out of the 8,000 training digits.
  assert tuned["steps"] == round(0.25 * ((8000 - 800) // 32))
  assert results["steps"] == (8000 - 800) // 32
  _file_matches_record(results, str(tmp_path))


def test_pq_file_holds_codes_and_its_size_is_counted(tmp_path):
  config = _config("pq", **{"post.pq.dim": 4, "post.pq.centroids": 8,
                            "train.epochs": 0.25})
  results = run_lib.run(config, str(tmp_path))
  _file_matches_record(results, str(tmp_path))
  params, meta = spz.load(os.path.join(str(tmp_path), "model.spz"))
  assert meta["stages"] == ["trained", "pq"]
  for name, m in (("fc1", 32), ("fc2", 16), ("head", 10)):
    w = params["params"][name]["kernel"]
    # Each of the n / 4 sub-vectors of a row is one of at most 8 codewords.
    blocks = w.T.reshape(m, -1, 4)
    for j in range(blocks.shape[1]):
      assert len(np.unique(blocks[:, j], axis=0)) <= min(8, m)
  report = spz.file_report(os.path.join(str(tmp_path), "model.spz"))
  encodings = {leaf.path: leaf.encoding for leaf in report.leaves}
  # PQ where it is smaller than float32 (dense layers, no mask): codebooks
  # 4 k n bytes plus 3-bit codes, m rows x n / 4 sub-vectors.
  for name, n, m in (("fc1", 784, 32), ("fc2", 32, 16), ("head", 16, 10)):
    pq_bytes = 4 * 8 * n + math.ceil(3 * m * (n // 4) / 8)
    assert (encodings[f"params/{name}/kernel"] == "pq") == (
        pq_bytes < 4 * n * m)


def test_lct_leaves_ternary_layers_in_the_file(trained_once, tmp_path):
  config = _config("lct", **{"post.lct.steps": 20, "post.lct.prune_steps": 20,
                             "post.lct.budget": 1.0})
  results = trained_once("mlp_held_out", config)
  lct = results["post"]["stages"][-1]
  # With the whole budget every layer is accepted, least significant first.
  assert lct["ternary_layers"] == lct["order"]
  assert len(lct["order"]) == 3
  params, _ = spz.load(os.path.join(str(tmp_path), "model.spz"))
  for layer in lct["ternary_layers"]:
    w = params["params"][layer.split("/")[0]]["kernel"]
    values = np.unique(np.abs(w))
    assert len(values) <= 2 and values[0] == 0.0  # {-s, 0, s}
  _file_matches_record(results, str(tmp_path))


def test_unknown_stage_is_named(tmp_path):
  config = _config(None, **{"post.stages": "slim,prune"})
  with pytest.raises(config_lib.ConfigError,
                     match="post.stages: got 'prune'; allowed: .*finetune"):
    run_lib.run(config, str(tmp_path))


def test_deep_compression_shares_values_of_the_surviving_weights(
    trained_once, tmp_path):
  config = _config("deep_compression", **{
      "compression[0].kwargs.target_sparsity": 0.9, "post.share.bits": 3})
  results = trained_once("mlp_dat", config)
  _file_matches_record(results, str(tmp_path))
  params, _ = spz.load(os.path.join(str(tmp_path), "model.spz"))
  report = spz.file_report(os.path.join(str(tmp_path), "model.spz"))
  encodings = {leaf.path: leaf.encoding for leaf in report.leaves}
  kept = 0
  for name in ("fc1", "fc2", "head"):
    w = params["params"][name]["kernel"]
    assert encodings[f"params/{name}/kernel"] == "shared"
    assert len(np.unique(w[w != 0])) <= 2**3  # 3-bit shared values
    kept += np.count_nonzero(w)
  assert kept <= round(0.1 * (784 * 32 + 32 * 16 + 16 * 10)) + 3


def test_lenet5_search_cuts_filters_through_the_flatten(tmp_path):
  config = _config("search", **{"post.search.tolerance": 0.05,
                                "post.search.finetune_steps": 5,
                                "post.stages": "search",
                                "post.validation_examples": 400,
                                "train.epochs": 0.25,
                                # LeNet-5 diverges at the preset's rate.
                                "optimizer.learning_rate": 0.01})
  config.model.name, config.model.kwargs = "lenet5", {}
  results = run_lib.run(config, str(tmp_path))
  trained, search = results["post"]["stages"]
  c1, c2, h = (search["units_after"][n] for n in ("conv1", "conv2", "fc1"))
  # LeNet-5 with c1, c2 filters and h hidden units, counted by hand.
  expected = (25 * c1 + c1) + (25 * c1 * c2 + c2) + (16 * c2 * h + h) + (
      h * 10 + 10)
  assert search["params"] == expected < trained["params"] == 431080
  bound = sum(math.ceil(math.log2(n)) + 1 for n in (20, 50, 500))
  assert search["evaluations"] <= bound + 1
  _file_matches_record(results, str(tmp_path))


def test_stages_run_later_on_a_finished_run(trained_once, tmp_path):
  config = _config("dat", **{"compression[0].kwargs.target_sparsity": 0.9})
  first = trained_once("mlp_dat", config)
  assert "post" not in first
  config.post.stages = "share"  # the same run, compressed afterwards
  again = run_lib.run(config, str(tmp_path))
  assert again["steps"] == first["steps"]  # nothing left to train
  trained = again["post"]["stages"][0]
  assert trained["test_accuracy"] == pytest.approx(first["eval_accuracy"],
                                                  abs=1e-6)
  assert trained["nonzeros"] == first["report"]["total"]["nonzeros"]
  _file_matches_record(again, str(tmp_path))


@pytest.mark.parametrize("relative,kept", [(False, 4), (True, 3)])
def test_slim_threshold_absolute_or_relative_to_the_largest_gate(relative,
                                                                 kept):
  rng = np.random.default_rng(0)
  params = {"fc1": {"kernel": rng.normal(size=(6, 4)).astype(np.float32),
                    "bias": np.zeros(4, np.float32)},
            "fc1_gate": {"gate": np.array([10.0, 0.5, 5.0, 0.05], np.float32)},
            "head": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                     "bias": np.zeros(3, np.float32)}}
  model = stages.Model("mlp", {"hidden": (4,), "gates": True,
                               "num_classes": 3},
                       {"params": params}, input_shape=(6,))
  cfg = config_lib.default_config().post.slim
  cfg.threshold, cfg.relative = 0.01, relative
  slim, record = stages.slim_stage(None, model, cfg)
  # Relative: kept above 0.01 * 10 = 0.1, so the 0.05 gate goes.
  assert record["units_after"] == {"fc1": kept}
  assert slim.variables["params"]["fc1"]["kernel"].shape == (6, kept)
  assert slim.variables["params"]["head"]["kernel"].shape == (kept, 3)


def test_vgg_search_cuts_channels_with_their_batchnorm(tmp_path):
  config = _config("search", **{"post.search.tolerance": 0.05,
                                "post.stages": "search",
                                "post.validation_examples": 400,
                                "train.epochs": 0.1})
  config.model.name = "vgg"
  config.model.kwargs = {"stages": ((8,), (16,)), "width": 1.0}
  results = run_lib.run(config, str(tmp_path))
  trained, search = results["post"]["stages"]
  c1, c2 = (search["units_after"][n]
            for n in ("block1_0/conv", "block2_0/conv"))
  # 3x3 convs with BatchNorm (scale, bias), then the head on pooled c2.
  expected = (9 * 1 * c1 + 2 * c1) + (9 * c1 * c2 + 2 * c2) + (c2 * 10 + 10)
  assert search["params"] == expected
  assert (c1, c2) != (8, 16) or search["params"] == trained["params"]
  _file_matches_record(results, str(tmp_path))


def test_sss_on_batchnorm_scales_folds_the_shifts_of_removed_channels(
    tmp_path):
  # Without gates SSS drives BatchNorm scales to zero; a removed channel
  # still outputs relu(shift), which slim folds into the next layer.
  config = _config("sss", **{"optimizer.kwargs.strength": 0.05,
                             "post.stages": "slim", "train.epochs": 0.5})
  config.model.name = "vgg"
  config.model.kwargs = {"stages": ((8,), (16,)), "width": 1.0,
                         "gates": False}
  results = run_lib.run(config, str(tmp_path))
  trained, slim = results["post"]["stages"]
  assert sum(slim["units_after"].values()) < 24  # APG zeroed some scales
  # Exact, while dropping the shifts instead costs 3 points here.
  assert slim["test_accuracy"] == pytest.approx(trained["test_accuracy"],
                                                abs=1e-9)
  _, meta = spz.load(os.path.join(str(tmp_path), "model.spz"))
  (entry,) = meta["model"]["plan"]
  assert entry["folds"]  # the shifts of the removed channels, folded
  _file_matches_record(results, str(tmp_path))
