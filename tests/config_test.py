"""Bad input stops a run with one line, before any training starts."""

import os

import pytest
from train_test import set_fields
from train_test import tiny_config

from sparsify.data import MissingDataError
from sparsify.experiment import config as config_lib
from sparsify.experiment import registry
from sparsify.experiment import run as run_lib
from sparsify.experiment import trainer as trainer_lib


@pytest.mark.parametrize("field,value,allowed", [
    ("model.name", "resnet9000", "lenet5, lenet_300_100, mlp, resnet, vgg"),
    ("data.name", "imagenet", "cifar10, embedded_mnist, fashion_mnist, mnist"),
    ("data.source", "ftp", "auto, embedded, idx, tfds"),
    ("compression[0].name", "prune_it_all", ", ".join(sorted(
        registry.METHODS))),
    ("post.search.order", "random", "backward, forward, size"),
    ("post.share.bits", 17, "an integer >= 1 and <= 16"),
    ("optimizer.name", "rmsprop",
     "adam, adamw, momentum, nesterov, sgd, sss"),
    ("optimizer.schedule", "linear", "constant, cosine, step"),
    ("optimizer.learning_rate", -0.1, "a number > 0"),
    ("optimizer.learning_rate", 0.0, "a number > 0"),
    ("optimizer.momentum", 1.0, "a number >= 0 and < 1"),
    ("compression[0].kwargs.sparsity", 1.0, "a fraction in [0, 1)"),
    ("compression[0].kwargs.sparsity", -0.1, "a fraction in [0, 1)"),
    ("compression[0].begin", 1.5, "a fraction of training in [0, 1]"),
    ("compression[0].kwargs.update_every", 0, "an integer >= 1"),
    ("post.lct.by", "speed", "quantization, size, sparsity"),
    ("data.batch_size", 0, "an integer >= 1"),
    ("train.epochs", -1.0, "a number > 0"),
    ("seed", -3, "an integer >= 0 and < 2**32"),
])
def test_bad_value_names_field_value_and_allowed(field, value, allowed,
                                                 tmp_path):
  config = tiny_config(compression=[config_lib.method("gmp", sparsity=0.5)])
  set_fields(config, {field: value})
  with pytest.raises(config_lib.ConfigError) as info:
    trainer_lib.Trainer(config, str(tmp_path))
  assert str(info.value) == f"{field}: got {value!r}; allowed: {allowed}"
  assert "\n" not in str(info.value)
  assert not os.listdir(tmp_path)  # nothing was written


def test_source_that_does_not_hold_the_dataset(tmp_path):
  config = tiny_config(**{"data.name": "cifar10", "data.source": "idx"})
  with pytest.raises(config_lib.ConfigError, match=(
      "data.source: cifar10 cannot be read from 'idx'; allowed: auto, tfds")):
    trainer_lib.Trainer(config, str(tmp_path))


def test_unknown_model_argument(tmp_path):
  config = tiny_config(**{"model.name": "resnet"})
  config.model.kwargs.depht = 20
  with pytest.raises(config_lib.ConfigError, match=(
      "model.kwargs: unknown argument.s. 'depht' for model 'resnet'; "
      "allowed: block, block_gates, block_plan, channel_gates, depth, "
      "inner_widths, num_classes, width")):
    trainer_lib.Trainer(config, str(tmp_path))


def test_batch_larger_than_dataset(tmp_path):
  config = tiny_config(**{"data.batch_size": 9000})
  with pytest.raises(config_lib.ConfigError, match="data.batch_size: got 9000;"
                     " allowed: at most the training set size .8000."):
    trainer_lib.Trainer(config, str(tmp_path))


def test_missing_data_names_dataset_and_place(tmp_path):
  config = tiny_config(**{"data.name": "fashion_mnist", "data.source": "idx",
                          "data.data_dir": str(tmp_path / "nowhere")})
  with pytest.raises(MissingDataError) as info:
    trainer_lib.Trainer(config, str(tmp_path / "run"))
  message = str(info.value)
  assert "fashion_mnist" in message and "nowhere" in message
  assert "apt-get install -y dataset-fashion-mnist" in message
  assert "\n" not in message


def test_workdir_of_another_model_is_refused_and_kept(tmp_path):
  run_lib.run(tiny_config(), str(tmp_path))
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  with open(tmp_path / "run.json") as f:
    run_json = f.read()
  other = tiny_config(**{"model.name": "lenet5"})
  with pytest.raises(config_lib.ConfigError, match=(
      "holds a run whose config differs in 1 field: model.name "
      "'lenet_300_100' -> 'lenet5'; allowed: the recorded config")):
    trainer_lib.Trainer(other, str(tmp_path))
  # Stages that select by accuracy hold validation examples out of training:
  # the run trained on all of them, so it cannot go on without them.
  selecting = tiny_config(**{"post.stages": "search",
                             "post.validation_examples": 500})
  with pytest.raises(config_lib.ConfigError, match=(
      "differs in 1 field: training examples held out for validation "
      "0 -> 500;")):
    trainer_lib.Trainer(selecting, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before
  with open(tmp_path / "run.json") as f:
    assert f.read() == run_json


def test_broken_checkpoints_are_refused_and_kept(tmp_path):
  run_lib.run(tiny_config(), str(tmp_path))
  ckpt = tmp_path / "checkpoints"
  steps = sorted(int(p) for p in os.listdir(ckpt) if p.isdigit())
  files = [p for p in ckpt.rglob("*")
           if p.is_file() and p.parent.name == "d"]  # the array data
  assert len(steps) == 2 and files
  for path in files:  # every checkpoint truncated
    with open(path, "r+b") as f:
      f.truncate(max(os.path.getsize(path) // 2, 1))
  with pytest.raises(config_lib.ConfigError, match=(
      f"none of its 2 checkpoint\\(s\\) can be restored \\(the newest, step "
      f"{steps[-1]}, is .*move it away")) as info:
    run_lib.run(tiny_config(), str(tmp_path))
  assert "\n" not in str(info.value)
  assert sorted(int(p) for p in os.listdir(ckpt) if p.isdigit()) == steps


def test_cli_prints_one_line_and_exits_2(command, tmp_path):
  status, lines = command(
      "main", "--config", "configs/lenet_300_100.py:gmp", "--workdir",
      str(tmp_path), "--config.compression[0].kwargs.sparsity=1.5")
  assert status == 2
  assert lines == ["error: compression[0].kwargs.sparsity: got 1.5; allowed: "
                   "a fraction in [0, 1)"]
  assert not os.path.exists(tmp_path / "checkpoints")


def test_cli_unknown_override_is_one_line(command, tmp_path):
  status, lines = command("main", "--config", "configs/lenet5.py",
                          "--workdir", str(tmp_path),
                          "--config.model.kwargs.depth=3")
  assert status == 2
  assert len(lines) == 1 and "--config.model.kwargs.depth" in lines[0], lines


@pytest.mark.parametrize("config_arg,expected", [
    ("configs/lenet5.py:pruneit", "error: config preset (after ':' in "
     "--config): got 'pruneit'; allowed: " + ", ".join(sorted(
         config_lib.METHOD_PRESETS))),
    ("configs/missing.py", "error: --config: got 'configs/missing.py', no such"
     " file; allowed: configs/lenet5.py"),
])
def test_cli_bad_config_argument_is_one_line(config_arg, expected, command,
                                             tmp_path):
  status, lines = command("main", "--config", config_arg, "--workdir",
                          str(tmp_path))
  assert status == 2
  assert len(lines) == 1 and lines[0].startswith(expected), lines


@pytest.mark.parametrize("preset", sorted(config_lib.METHOD_PRESETS))
def test_presets_validate(preset):
  config = config_lib.with_method(config_lib.default_config(), preset)
  config_lib.validate(config)
  # Every entry is a registered method, built as the trainer builds it.
  for i, entry in enumerate(config.compression):
    assert entry.name in registry.METHODS
    position, tx = registry.build_method(entry, 100, field=f"[{i}]")
    assert position in ("mask", "penalty", "wrap") and callable(tx.update)
  names = {"dense": [], "gmp": ["gmp"], "magnitude": ["magnitude"],
           "random": ["random"], "dat": ["dat"], "sss": [],
           "random_erk": ["random"], "gmp_2_4": ["gmp"],
           "gmp_blocks": ["gmp"], "magnitude_ste": ["magnitude_ste"],
           "random_ste": ["random_ste"], "set": ["set"], "rigl": ["rigl"],
           "snip": ["snip"], "saliency": ["saliency"],
           "gmp_global": ["gmp"], "saliency_global": ["saliency"],
           "slimming": ["slimming"], "search": [], "pq": [],
           "dat_pq": ["dat"], "lct": [], "deep_compression": ["dat"]}
  stages = {"sss": "slim,finetune", "slimming": "slim,finetune",
            "search": "search,finetune", "pq": "pq", "dat_pq": "pq",
            "lct": "lct", "deep_compression": "share"}
  assert [e.name for e in config.compression] == names[preset]
  assert config.post.stages == stages.get(preset, "")
  assert (config.optimizer.name == "sss") == (preset == "sss")


@pytest.mark.parametrize("preset,allowed", [
    (None, "none"), ("sss", "nonnegative, strength, where")])
def test_unknown_optimizer_argument_is_one_line(preset, allowed, tmp_path):
  config = config_lib.with_method(tiny_config(), preset)
  config.optimizer.kwargs.foo = 1
  with pytest.raises(config_lib.ConfigError) as info:
    trainer_lib.Trainer(config, str(tmp_path))
  assert str(info.value) == (
      f"optimizer.kwargs: unknown argument(s) 'foo'; allowed: {allowed}")
  assert not os.listdir(tmp_path)


def _replace(group, key, value):
  with group.unlocked():
    del group[key]
    group[key] = value


@pytest.mark.parametrize("change,message", [
    (lambda c: c.model.kwargs.update({"hidden": (16, float("inf"))}),
     "model.kwargs.hidden[1]: got inf; allowed: a finite number"),
    (lambda c: c.compression.append(config_lib.method(
        "dat", c=float("nan"))),
     "compression[0].kwargs.c: got nan; allowed: a finite number"),
    (lambda c: c.compression.append(config_lib.method(
        "gmp", sparsity="high")),
     "compression[0].kwargs.sparsity: got 'high'; allowed: a number (not "
     "text)"),
    (lambda c: c.compression.append(config_lib.method(
        "gmp", sparsity=0.5, where="fc[")),
     "compression[0].kwargs.where: got 'fc['; allowed: a regular expression "
     "(unterminated character set at position 2)"),
    (lambda c: _replace(c.post, "stages", 3),
     "post.stages: got 3; allowed: a comma-separated list of finetune, lct, "
     "pq, search, share, slim, or ''"),
    (lambda c: _replace(c, "post", 3),
     "post: got 3; allowed: a group of fields, as in "
     "sparsify.default_config()"),
    (lambda c: _replace(c.optimizer, "warmup_steps", 2.0**40),
     "optimizer.warmup_steps: got 1099511627776.0; allowed: an integer >= 0 "
     "and < 2**31"),
])
def test_validate_walks_every_field(change, message):
  config = config_lib.default_config()
  change(config)
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.validate(config)
  assert str(info.value) == message


def test_a_nested_message_is_not_wrapped_twice():
  inner = "allocation: got 'global'; allowed: erk, uniform"
  assert str(config_lib.ConfigError("compression[0].kwargs", "random", inner)
             ) == f"compression[0].kwargs.{inner}"
  full = f"compression[0].kwargs.{inner}"
  assert str(config_lib.ConfigError("compression", "random", full)) == full
  assert str(config_lib.ConfigError("a: got 1\n  allowed: 2")) == (
      "a: got 1; allowed: 2")
