"""The compressed file is the model of the last stage, for every stage order.

Each combination of post-training stages runs through `sparsify.run` on a
finished run of a tiny MLP (trained once per module: one run that holds
validation examples out for the selecting stages, one that does not). The
stages are wrapped to keep the model each returns; the test then decodes
``model.spz`` and compares it with the last one, weight for weight, and its
accuracy with the recorded one.
"""

import os
import shutil

import jax
import numpy as np
import pytest
from train_test import set_fields

from sparsify import spz
from sparsify.core import masking
from sparsify.core import paths
from sparsify.experiment import config as config_lib
from sparsify.experiment import run as run_lib
from sparsify.experiment import stages

BITS = 3


def _config(held_out):
  config = config_lib.default_config()
  config.model.name = "mlp"
  config.model.kwargs.hidden = (32, 16)
  if held_out:  # plain training; the stages prune (lct) or search
    config.model.kwargs.gates = False
  else:  # gates driven to zero by SSS, weights pruned by DAT
    config = config_lib.with_method(config, "sss")
    config.optimizer.kwargs.strength = 0.1
    config.compression = [config_lib.method(
        "dat", begin=0.1, end=0.7, target_sparsity=0.5, update_every=10)]
  set_fields(config, {
      "data.batch_size": 32, "data.eval_batch_size": 500,
      "train.epochs": 0.2, "train.log_every": 1000,
      "train.checkpoint_every": 1000, "train.plots": False,
      "post.validation_examples": 500, "post.finetune.epochs": 0.05,
      "post.finetune.learning_rate": 0.05,
      "post.share.bits": BITS, "post.pq.dim": 4, "post.pq.centroids": 8,
      "post.lct.steps": 5, "post.lct.prune_steps": 5, "post.lct.budget": 1.0,
      "post.lct.sparsity": 0.8, "post.search.tolerance": 0.02})
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """``run(stages) -> (results, workdir, [(stage, Model), ...])``, cached.

  The first run of each kind (held out or not) trains; the others copy its
  finished workdir, so only their stages run.
  """
  root = tmp_path_factory.mktemp("stages_file")
  done = {}

  def run(names):
    if names in done:
      return done[names]
    held_out = stages.holds_out(names)
    config = _config(held_out)
    config.post.stages = names
    workdir = str(root / names.replace(",", "_"))
    base = str(root / f"trained_{held_out}")
    if os.path.isdir(base):
      shutil.copytree(base, workdir)
    returned = []
    with pytest.MonkeyPatch.context() as mp:
      for name, fn in list(stages.STAGES.items()):
        def keep(ctx, model, cfg, fn=fn, name=name):
          out = fn(ctx, model, cfg)
          returned.append((name, out[0]))
          return out
        mp.setitem(stages.STAGES, name, keep)
      results = run_lib.run(config, workdir)
    if not os.path.isdir(base):
      shutil.copytree(workdir, base)
    done[names] = results, workdir, returned
    return done[names]

  return run


def _stored(model):
  """What the file must hold: the model's variables, masked weights zero."""
  variables = jax.tree.map(np.asarray, model.variables)
  if model.masks is not None:
    variables["params"] = jax.tree.map(np.asarray, masking.apply_masks(
        variables["params"], model.masks))
  return variables


COMBINATIONS = [
    "share", "pq", "share,finetune", "pq,finetune", "finetune,share",
    "slim,finetune,share", "share,pq", "pq,share", "share,finetune,pq",
    "search,finetune,pq", "lct", "lct,finetune",
]


@pytest.mark.parametrize("names", COMBINATIONS)
def test_file_decodes_to_the_last_stage(runs, names):
  results, workdir, returned = runs(names)
  rows = results["post"]["stages"]
  assert [r["stage"] for r in rows] == ["trained", *names.split(",")]
  assert [name for name, _ in returned] == names.split(",")
  info = results["post"]["file"]
  assert info["decoded_accuracy"] == info["recorded_accuracy"] == rows[-1][
      "test_accuracy"]
  path = os.path.join(workdir, "model.spz")
  decoded, meta = stages.load_model(path)
  assert meta["stages"] == ["trained", *names.split(",")]
  last = returned[-1][1]
  want = dict(paths.named_leaves(_stored(last)))
  got = dict(paths.named_leaves(decoded.variables))
  assert sorted(got) == sorted(want)
  for name, leaf in want.items():
    np.testing.assert_array_equal(got[name], leaf, err_msg=name)
  # The encodings the stages attached are the file's.
  encodings = {leaf.path: leaf.encoding
               for leaf in spz.file_report(path).leaves}
  for key, encoding in last.encodings.items():
    assert encodings[key] == {spz.SharedLayer: "shared", spz.PQLayer: "pq",
                              spz.TernaryLayer: "ternary"}[type(encoding)]
  assert last.encodings  # every combination compresses something


@pytest.mark.parametrize("names,stage", [
    ("share,finetune", "share"), ("pq,finetune", "pq"),
    ("lct,finetune", "lct"), ("share,finetune,pq", "share")])
def test_finetuning_moves_the_codebooks_and_keeps_the_codes(runs, names,
                                                            stage):
  _, _, returned = runs(names)
  models = dict(returned)
  before, after = models[stage], models["finetune"]
  tuned = dict(paths.named_leaves(_stored(after)["params"]))
  old = dict(paths.named_leaves(_stored(before)["params"]))
  assert after.encodings.keys() == before.encodings.keys()
  for key, encoding in before.encodings.items():
    path = key.removeprefix("params/")
    new = after.encodings[key]
    assert not np.array_equal(tuned[path], old[path]), path  # trained
    if isinstance(encoding, spz.TernaryLayer) or stage == "lct":
      magnitudes = np.unique(np.abs(tuned[path][tuned[path] != 0]))
      assert len(magnitudes) == 1, path  # still {-s, 0, s}
      np.testing.assert_array_equal(tuned[path] != 0, old[path] != 0)
      continue
    np.testing.assert_array_equal(new.codes, encoding.codes, err_msg=path)
    assert not np.array_equal(new.codebooks if stage == "pq" else
                              new.codebook, encoding.codebooks
                              if stage == "pq" else encoding.codebook)
    if stage == "share":  # 2**bits values of the kept weights, zeros kept
      kept = tuned[path][encoding.mask]
      assert len(np.unique(kept)) <= 2**BITS
      assert np.all(tuned[path][~encoding.mask] == 0)


@pytest.mark.parametrize("names,match", [
    ("share,slim", ("post.stages: got 'share,slim'; allowed: slim before "
                    "share, pq and lct")),
    ("pq,finetune,search", "allowed: search before share, pq and lct"),
    ("share,lct", "allowed: lct before"), ("lct,lct", "allowed: lct before"),
])
def test_stages_that_change_encoded_layers_are_refused_before_training(
    names, match, tmp_path):
  config = _config(False)
  config.post.stages = names
  with pytest.raises(config_lib.ConfigError, match=match) as error:
    run_lib.run(config, str(tmp_path))
  assert "\n" not in str(error.value)
  assert not os.path.exists(tmp_path / "run.json")  # nothing trained


SLIM_ERROR = (r"^post.stages: slim needs gates or BatchNorm scales .* "
              r"allowed: a model with gates \(model.gates='.\*'")


def test_slim_without_gates_or_batchnorm_is_a_config_error(runs, tmp_path):
  config = _config(True)  # an ungated MLP
  config.post.stages = "search,slim"
  # Known from the config, before training...
  with pytest.raises(config_lib.ConfigError, match=SLIM_ERROR) as error:
    stages.check_config(config, (28, 28, 1))
  assert "\n" not in str(error.value)
  # ... and checked again before the stages of a trained run.
  _, workdir, _ = runs("lct")
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
  with pytest.raises(config_lib.ConfigError, match=SLIM_ERROR):
    run_lib.run(config, str(tmp_path))
  config = _config(False)  # gates: slim has something to select by
  config.post.stages = "slim"
  stages.check_config(config, (28, 28, 1))
