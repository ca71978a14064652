"""Bad command lines stop with one line on stderr and exit status 2.

Every case here is caught before any training starts (most before the data
is read), so the commands run in this process through `cli.call` and the
workdir stays as it was: not created, or without checkpoints.
"""

import inspect
import errno
import os
import stat

import pytest

from sparsify.experiment import registry

L300 = "configs/lenet_300_100.py"
FILE = "a Python file that defines get_config() (see configs/)"
FINITE = "allowed: a finite number"
TRAIN_FIELDS = ("checkpoint_every, checkpoint_seconds, epochs, "
                "eval_every_epochs, keep_checkpoints, log_every, plots")

# Config files that fail in each way a file can.
CONFIG_FILES = {
    "raises.py": "def get_config():\n  return 1 / 0\n",
    "syntax.py": "def get_config(:\n  pass\n",
    "no_get_config.py": "x = 1\n",
    "imports.py": "import no_such_module_here\n",
    "not_a_config.py": "def get_config():\n  return 3\n",
    "returns_none.py": "def get_config():\n  pass\n",
    "needs_arguments.py": "def get_config(a, b):\n  return 3\n",
    "random_global.py": (
        "from sparsify.experiment.config import default_config, method\n"
        "def get_config():\n"
        "  config = default_config()\n"
        "  config.compression = [method('random', sparsity=0.5,\n"
        "                               allocation='global')]\n"
        "  return config\n"),
    "random_unset.py": (
        "from sparsify.experiment.config import default_config, method\n"
        "def get_config():\n"
        "  config = default_config()\n"
        "  config.compression = [method('random')]\n"
        "  return config\n"),
    "warmup_float.py": (
        "from sparsify.experiment.config import default_config\n"
        "def get_config():\n"
        "  config = default_config()\n"
        "  with config.unlocked():\n"
        "    del config.optimizer['warmup_steps']\n"
        "    config.optimizer.warmup_steps = 1e12\n"
        "  return config\n"),
    "no_train.py": (
        "from sparsify.experiment.config import default_config\n"
        "def get_config():\n"
        "  config = default_config()\n"
        "  del config['train']\n"
        "  return config\n"),
}

# (command line after the program name, the one line expected). {cf} is the
# folder of `CONFIG_FILES`, {wd} the workdir (not created beforehand).
CASES = [
    # 1. inf and NaN, in every numeric field.
    ([f"{L300}:dat", "--config.compression[0].kwargs.c=inf"],
     f"compression[0].kwargs.c: got inf; {FINITE}"),
    ([f"{L300}:gmp", "--config.compression[0].kwargs.power=nan"],
     f"compression[0].kwargs.power: got nan; {FINITE}"),
    ([f"{L300}:gmp", "--config.compression[0].kwargs.sparsity=-inf"],
     f"compression[0].kwargs.sparsity: got -inf; {FINITE}"),
    ([f"{L300}:sss", "--config.optimizer.kwargs.strength=inf"],
     f"optimizer.kwargs.strength: got inf; {FINITE}"),
    ([f"{L300}:sss", "--config.post.slim.threshold=inf"],
     f"post.slim.threshold: got inf; {FINITE}"),
    ([f"{L300}:sss", "--config.post.finetune.epochs=inf"],
     f"post.finetune.epochs: got inf; {FINITE}"),
    ([f"{L300}:search", "--config.post.search.tolerance=inf"],
     f"post.search.tolerance: got inf; {FINITE}"),
    ([L300, "--config.train.epochs=inf"], f"train.epochs: got inf; {FINITE}"),
    ([L300, "--config.train.epochs=nan"], f"train.epochs: got nan; {FINITE}"),
    ([L300, "--config.optimizer.learning_rate=inf"],
     f"optimizer.learning_rate: got inf; {FINITE}"),
    ([L300, "--config.post.lct.budget=nan"],
     f"post.lct.budget: got nan; {FINITE}"),
    # 2. Integers out of range.
    ([L300, "--config.seed=100000000000000000000000"],
     "seed: got 100000000000000000000000; allowed: an integer >= 0 and "
     "< 2**32"),
    ([L300, "--config.seed=4294967296"],
     "seed: got 4294967296; allowed: an integer >= 0 and < 2**32"),
    ([L300, "--config.seed=-1"],
     "seed: got -1; allowed: an integer >= 0 and < 2**32"),
    ([f"{L300}:random", "--config.compression[0].kwargs.seed=4294967296"],
     "compression[0].kwargs.seed: got 4294967296; allowed: an integer >= 0 "
     "and < 2**32"),
    ([L300, "--config.optimizer.warmup_steps=1000000000000"],
     "optimizer.warmup_steps: got 1000000000000; allowed: an integer < 2**31 "
     "(JAX counts in int32)"),
    ([L300, "--config.optimizer.warmup_steps=1e12"],
     "--config.optimizer.warmup_steps: got '1e12'; allowed: an integer"),
    ([L300, "--config.optimizer.warmup_steps=-5"],
     "optimizer.warmup_steps: got -5; allowed: an integer >= 0"),
    (["{cf}/warmup_float.py"],
     "optimizer.warmup_steps: got 1000000000000.0; allowed: an integer >= 0 "
     "and < 2**31"),
    ([f"{L300}:gmp", "--config.compression[0].kwargs.update_every=3000000000"],
     "compression[0].kwargs.update_every: got 3000000000; allowed: an "
     "integer < 2**31 (JAX counts in int32)"),
    ([L300, "--config.train.epochs=1e12"],
     "train.epochs: got 1000000000000.0; allowed: a number > 0 and <= "
     "34087042 (fewer than 2**31 steps of embedded_mnist in batches of 128)"),
    ([f"{L300}:sss", "--config.post.finetune.epochs=1e9"],
     "post.finetune.epochs: got 1000000000.0; allowed: a number >= 0 and <= "
     "34087042 (fewer than 2**31 steps of embedded_mnist in batches of 128)"),
    # 3. Regular expressions that do not compile.
    ([f"{L300}:gmp", "--config.compression[0].kwargs.where=["],
     "compression[0].kwargs.where: got '['; allowed: a regular expression "
     "(unterminated character set at position 0)"),
    ([f"{L300}:slimming", "--config.compression[0].kwargs.where=(bn"],
     "compression[0].kwargs.where: got '(bn'; allowed: a regular expression "
     "(missing ), unterminated subpattern at position 0)"),
    ([L300, "--config.post.pq.where=["],
     "post.pq.where: got '['; allowed: a regular expression (unterminated "
     "character set at position 0)"),
    ([L300, "--config.post.share.where=*a"],
     "post.share.where: got '*a'; allowed: a regular expression (nothing to "
     "repeat at position 0)"),
    ([L300, "--config.model.gates=["],
     "model.gates: got '[', not a regex (unterminated character set at "
     "position 0); allowed: a regex over unit names ('.*' for every unit, '' "
     "for none)"),
    # 4. Config files and overrides.
    (["{cf}/raises.py"],
     f"--config: got '{{cf}}/raises.py', whose line 2 raises "
     f"ZeroDivisionError: division by zero; allowed: {FILE}"),
    (["{cf}/syntax.py"],
     f"--config: got '{{cf}}/syntax.py', whose line 1 is not Python "
     f"(SyntaxError: invalid syntax); allowed: {FILE}"),
    (["{cf}/no_get_config.py"],
     f"--config: got '{{cf}}/no_get_config.py', which defines no "
     f"get_config(); allowed: {FILE}"),
    (["{cf}/imports.py"],
     f"--config: got '{{cf}}/imports.py', whose line 1 raises "
     f"ModuleNotFoundError: No module named 'no_such_module_here'; allowed: "
     f"{FILE}"),
    (["{cf}/not_a_config.py"],
     "--config: got '{cf}/not_a_config.py', whose get_config() returned 3; "
     "allowed: a get_config() that returns a ConfigDict (see "
     "sparsify.default_config())"),
    (["{cf}/returns_none.py"],
     "--config: got '{cf}/returns_none.py', whose get_config() returned "
     "None; allowed: a get_config() that returns a ConfigDict (see "
     "sparsify.default_config())"),
    (["{cf}/needs_arguments.py"],
     "--config: got '{cf}/needs_arguments.py', whose get_config() cannot be "
     "called so (get_config() missing 2 required positional arguments: 'a' "
     "and 'b'); allowed: a get_config() that takes no argument, or one "
     "preset given after ':'"),
    (["configs/quickstart.py:gmp"],
     "--config: got 'configs/quickstart.py:gmp', a preset for a config file "
     "without presets; allowed: configs/quickstart.py"),
    (["{cf}/no_train.py"],
     "train: got no such field; allowed: a config built from "
     "sparsify.default_config(), which has it"),
    ([L300, "--config.train.epoch=1"],
     "--config.train.epoch: got a field the config does not have; did you "
     f"mean 'epochs'? allowed: the fields of train: {TRAIN_FIELDS}"),
    ([L300, "--config.trian.epochs=1"],
     "--config.trian.epochs: got a field the config does not have; did you "
     "mean 'train'? allowed: the config's fields: compression, data, model, "
     "optimizer, post, seed, train"),
    ([f"{L300}:gmp", "--config.compression[3].kwargs.sparsity=0.5"],
     "--config.compression[3].kwargs.sparsity: got entry 3 of compression, "
     "which has 1 entry; allowed: compression[0]"),
    ([f"{L300}:gmp", "--config.compression=3"],
     "--config.compression: got a list of entries, which cannot be set "
     "whole; allowed: the fields of its entries, e.g. "
     "--config.compression[0].begin=VALUE"),
    ([L300, "--config.seed.x=1"],
     "--config.seed.x: got a field the config does not have; allowed: "
     "--config.seed, a value without fields"),
    ([L300, "--config.model=3"],
     "--config.model: got '3'; allowed: its fields one by one, e.g. "
     "--config.model.FIELD=VALUE"),
    ([L300, "--config.train.plots=maybe"],
     "--config.train.plots: got 'maybe'; allowed: true or false"),
    ([L300, "--config.train.epochs=ten"],
     "--config.train.epochs: got 'ten'; allowed: a number"),
    ([L300, "--config.train.epochs"],
     "--config.train.epochs: got no value; allowed: "
     "--config.train.epochs=VALUE"),
    ([L300, "--epochs=3"],
     "--epochs: got a flag this command does not have; allowed: --config, "
     "--workdir"),
    # 5. Messages of nested checks read as one clean line.
    ([f"{L300}:random", "--config.compression[0].kwargs.allocation=global"],
     "compression[0].kwargs.allocation: got 'global'; allowed: erk, uniform"),
    (["{cf}/random_global.py"],
     "compression[0].kwargs.allocation: got 'global'; allowed: erk, uniform"),
    (["{cf}/random_unset.py"],
     "compression[0].kwargs.sparsity: got None; allowed: a value, which "
     "random needs (it has no default)"),
    ([f"{L300}:dat", "--config.compression[0].kwargs.recovery=1",
      "--config.compression[0].name=gmp"],
     "compression[0].kwargs: unknown argument(s) 'c', 'prune_factor', "
     "'recovery', 'revive_factor', 'statistics', 'target_mode', "
     "'target_sparsity'; allowed: " + ", ".join(sorted(inspect.signature(
         registry.METHODS["gmp"].factory).parameters))),
]


def _fill(text, cf, wd):
  return text.replace("{cf}", cf).replace("{wd}", wd)


@pytest.fixture
def config_files(tmp_path):
  folder = tmp_path / "configs"
  folder.mkdir()
  for name, source in CONFIG_FILES.items():
    (folder / name).write_text(source)
  return str(folder)


@pytest.mark.parametrize("args,expected", CASES,
                         ids=[" ".join(a)[-60:] for a, _ in CASES])
def test_bad_main_command_line_is_one_line(args, expected, command,
                                           config_files, tmp_path):
  workdir = str(tmp_path / "run")
  config, *rest = [_fill(a, config_files, workdir) for a in args]
  status, lines = command("main", "--config", config, "--workdir", workdir,
                          *rest)
  assert status == 2
  assert lines == [f"error: {_fill(expected, config_files, workdir)}"]
  assert not os.path.exists(workdir)  # nothing created, nothing trained


def _workdirs(tmp_path):
  """(workdir, the one line expected) for each kind of bad workdir."""
  afile = tmp_path / "a_file"
  afile.write_text("x")
  return [
      ("", "--workdir: got ''; allowed: a directory path (new or existing)"),
      (str(afile), f"--workdir: got '{afile}', an existing file; allowed: a "
       "directory (new or existing)"),
      (str(afile / "run"), f"--workdir: got '{afile}/run', under {afile}, "
       "which is a file; allowed: a directory path"),
      ("/proc/sparsify_run", "--workdir: got '/proc/sparsify_run', which "
       "this user cannot create or write (No such file or directory: "
       "/proc/sparsify_run); allowed: a directory it can write"),
  ]


@pytest.mark.parametrize("name", ["main", "sweep"])
@pytest.mark.parametrize("case", range(4))
def test_bad_workdir_is_one_line_before_the_config_runs(name, case, command,
                                                        tmp_path):
  workdir, expected = _workdirs(tmp_path)[case]
  # The config file would raise: the workdir is checked before it runs.
  raises = tmp_path / "raises.py"
  raises.write_text(CONFIG_FILES["raises.py"])
  grid = ["--grid", "seed=0,1"] if name == "sweep" else []
  status, lines = command(name, "--config", str(raises), "--workdir",
                          workdir, *grid)
  assert status == 2
  assert lines == [f"error: {expected}"]
  assert sorted(os.listdir(tmp_path)) == ["a_file", "raises.py"]


def test_read_only_workdir_is_one_line(command, tmp_path, monkeypatch):
  folder = tmp_path / "read_only"
  folder.mkdir()
  folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
  if os.geteuid() == 0:  # root ignores permission bits: the kernel's answer
    real = os.mkdir       # to anyone else is given here

    def mkdir(path, *args, **kwargs):
      if os.path.dirname(os.path.abspath(path)) == str(folder):
        raise PermissionError(errno.EACCES, "Permission denied", path)
      return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
  try:
    status, lines = command("main", "--config", L300, "--workdir",
                            str(folder / "run"))
  finally:
    folder.chmod(stat.S_IRWXU)
  assert status == 2
  assert len(lines) == 1 and lines[0].startswith(
      f"error: --workdir: got '{folder}/run', which this user cannot create "
      "or write (Permission denied"), lines
  assert not os.listdir(folder)


def test_a_probe_leaves_no_trace(tmp_path):
  from experiments import cli  # pylint: disable=g-import-not-at-top
  cli.check_workdir_path(str(tmp_path / "a" / "b"))
  cli.check_workdir_path(str(tmp_path))
  assert not os.listdir(tmp_path)


SWEEP = [
    (["--grid", "post.stages=share,pq"],
     "--grid post.stages: got 'share,pq', a comma list that could be one run "
     "or 2 runs; allowed: each run's value quoted: --grid "
     "\"post.stages='share,pq'\" for one run, --grid "
     "\"post.stages='share','pq'\" for 2"),
    (["--grid", "post.stages='share','nope'"],
     "post.stages: got 'nope'; allowed: a comma-separated list of finetune, "
     "lct, pq, search, share, slim"),
    (["--grid", "compression[0].kwargs.target_sparsity=0.9",
      "--set", "compression[0].kwargs.where=["],
     "compression[0].kwargs.where: got '['; allowed: a regular expression "
     "(unterminated character set at position 0)"),
    (["--grid", "compression[0].kwargs.c=1,inf"],
     "compression[0].kwargs.c: got 'inf'; allowed: a finite number"),
    (["--grid", "seed=0,4294967296"],
     "seed: got 4294967296; allowed: an integer >= 0 and < 2**32"),
    (["--grid", "train.epochs=1", "--set", "train.epochs=2"],
     "train.epochs: both in the grid and set for every run; allowed: one of "
     "the two"),
    (["--grid", "seed"],
     "--grid: got 'seed'; allowed: FIELD=VALUE,VALUE..., e.g. "
     "compression[0].kwargs.sparsity=0.8,0.9"),
]


@pytest.mark.parametrize("args,expected", SWEEP,
                         ids=[" ".join(a)[-50:] for a, _ in SWEEP])
def test_bad_sweep_command_line_is_one_line(args, expected, command,
                                            tmp_path):
  workdir = str(tmp_path / "sweep")
  status, lines = command("sweep", "--config", f"{L300}:dat", "--workdir",
                          workdir, *args)
  assert status == 2
  assert lines == [f"error: {expected}"]
  assert not os.path.exists(workdir)
