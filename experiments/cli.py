"""What the command-line entry points share: flags, bad input, exits.

A command is two functions: ``define(flag_values, argv)`` defines its flags
and ``body(flag_values)`` does the work. `main` runs one from the command
line; `call` runs one in this process and returns its exit status, which is
how the tests drive them. Bad input stops a command with one line on stderr,
naming what is wrong and what is allowed, and exit status 2, before any
training starts: `parse_flags` checks ``--workdir`` (`check_workdir_path`)
and the config file (`check_config_file`) before the file runs, and turns
whatever goes wrong while the flags parse (a config file that raises, an
override of a field the config lacks, a value of the wrong type, an unknown
flag) into that line. A run that started and then stopped (training
diverged, the disk is full: `RunError`) also ends with one ``error:`` line,
and exit status 1; its checkpoints and the files written before are kept.
"""

from collections.abc import Callable
import contextlib
import difflib
import logging
import os
import re
import sys
import tempfile
import traceback
import types
from typing import Any

from absl import app
from absl import flags
import ml_collections
from ml_collections.config_flags import config_flags
from ml_collections.config_flags import config_path

from sparsify.data import MissingDataError
from sparsify.experiment.config import ConfigError
from sparsify.experiment.errors import RunError
from sparsify.experiment.config import one_line

Define = Callable[[flags.FlagValues, list[str]], None]
Body = Callable[[flags.FlagValues], None]

_CONFIG_FILE = "a Python file that defines get_config() (see configs/)"
# The module name config_flags gives the file of the flag named 'config'.
_CONFIG_MODULE = "config_config"


class UsageError(Exception):
  """A bad command line; the message says what is wrong and what is allowed."""


def _argument(argv: list[str], name: str) -> str | None:
  """The last value of ``--name`` (``--name=V`` or ``--name V``) in argv."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    flag, eq, text = arg.lstrip("-").partition("=")
    if not arg.startswith("-") or flag != name:
      continue
    if eq:
      value = text
    elif i + 1 < len(argv):
      value = argv[i + 1]
  return value


def check_workdir_path(path: Any, flag: str = "--workdir") -> None:
  """Checks that a run can create and write ``path``, leaving no trace.

  Missing directories are created and a probe file written and removed in
  the last one; what was created is removed again. Trying is the only test
  that holds for every user (root ignores permission bits) and every file
  system (``/proc``, read-only mounts).

  Args:
    path: the directory given on the command line.
    flag: the flag's name, for the message.

  Raises:
    UsageError: ``path`` is empty, an existing file, lies under a file, or
      cannot be created or written; one line naming it.
  """
  if not isinstance(path, str) or not path.strip():
    raise UsageError(f"{flag}: got {path!r}; allowed: a directory path (new "
                     "or existing)")
  target = os.path.abspath(path)
  if os.path.lexists(target) and not os.path.isdir(target):
    raise UsageError(f"{flag}: got {path!r}, an existing file; allowed: a "
                     "directory (new or existing)")
  missing, ancestor = [], target
  while not os.path.lexists(ancestor):
    missing.append(ancestor)
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise UsageError(f"{flag}: got {path!r}, under {ancestor}, which is a "
                     "file; allowed: a directory path")
  created = []
  try:
    for directory in reversed(missing):
      os.mkdir(directory)
      created.append(directory)
    os.listdir(target)
    fd, probe = tempfile.mkstemp(dir=target, prefix=".write-probe-")
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    reason = e.strerror or type(e).__name__
    raise UsageError(
        f"{flag}: got {path!r}, which this user cannot create or write "
        f"({reason}: {e.filename or target}); allowed: a directory it can "
        "write") from None
  finally:
    for directory in reversed(created):
      with contextlib.suppress(OSError):
        os.rmdir(directory)


def check_config_file(argument: str) -> None:
  """Checks ``--config FILE[:PRESET]``: a readable file of Python.

  Args:
    argument: the flag's value.

  Raises:
    UsageError: the file is missing, not a regular file, unreadable or not
      Python (a syntax error names its line).
  """
  path = argument.split(":", 1)[0]
  if not os.path.isfile(path):
    configs = sorted(f for f in os.listdir("configs") if f.endswith(".py")
                     ) if os.path.isdir("configs") else []
    raise UsageError(
        f"--config: got {argument!r}, no such file; allowed: "
        f"{', '.join('configs/' + f for f in configs) or 'a config file'}")
  try:
    with open(path, "rb") as f:
      source = f.read()
  except OSError as e:
    raise UsageError(f"--config: got {argument!r}, which cannot be read "
                     f"({e.strerror}); allowed: {_CONFIG_FILE}") from None
  try:
    compile(source, path, "exec")
  except SyntaxError as e:
    raise UsageError(
        f"--config: got {argument!r}, whose line {e.lineno} is not Python "
        f"({type(e).__name__}: {e.msg}); allowed: {_CONFIG_FILE}") from None
  except ValueError as e:  # e.g. null bytes: not a text file
    raise UsageError(f"--config: got {argument!r}, which is not Python "
                     f"({e}); allowed: {_CONFIG_FILE}") from None


def _chain(error: BaseException) -> list[BaseException]:
  """``error`` and the errors it was raised from, outermost first."""
  out = []
  while error is not None and error not in out:
    out.append(error)
    error = error.__cause__ or error.__context__
  return out


def _line_in(error: BaseException, path: str) -> int | None:
  """The line of ``path`` where ``error`` passed last, if it did."""
  lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
           if os.path.abspath(frame.filename) == path]
  return lines[-1] if lines else None


def _config_file_error(chain: list[BaseException], argument: str
                       ) -> str | None:
  """The message for a config file that fails to load, or None."""
  path = os.path.abspath(argument.split(":", 1)[0])
  for error in reversed(chain):  # deepest first
    if isinstance(error, ConfigError):  # e.g. an unknown preset
      return str(error)
    line = _line_in(error, path)
    if line is not None:
      return (f"--config: got {argument!r}, whose line {line} raises "
              f"{type(error).__name__}: {one_line(error)}; allowed: "
              f"{_CONFIG_FILE}")
  deepest = chain[-1]
  if isinstance(deepest, AttributeError) and (
      getattr(deepest, "name", None) == "get_config") and isinstance(
          getattr(deepest, "obj", None), types.ModuleType):
    return (f"--config: got {argument!r}, which defines no get_config(); "
            f"allowed: {_CONFIG_FILE}")
  if isinstance(deepest, TypeError) and "get_config()" in str(deepest):
    file, preset = (argument.split(":", 1) + [None])[:2]
    if preset is not None and "takes 0 positional" in str(deepest):
      return (f"--config: got {argument!r}, a preset for a config file "
              f"without presets; allowed: {file}")
    return (f"--config: got {argument!r}, whose get_config() cannot be "
            f"called so ({one_line(deepest)}); allowed: a get_config() that "
            "takes no argument, or one preset given after ':'")
  return None


def _load(argument: str) -> Any:
  """The config a ``--config`` argument gives, or None if it fails."""
  sys.modules.pop(_CONFIG_MODULE, None)
  try:
    return config_flags.ConfigFileFlagParser("config").parse(argument)
  except Exception:  # pylint: disable=broad-except
    return None


def _field_error(config: Any, field: str) -> str | None:
  """Why ``--config.FIELD`` names no field of ``config``, or None."""
  flag = f"--config.{field}"
  try:
    parts = config_path.split(field)
  except Exception:  # pylint: disable=broad-except
    parts = None
  if not parts or not all(isinstance(p, (int, str)) for p in parts):
    return (f"{flag}: got a field path that does not parse; allowed: names "
            "joined with '.', [i] for an entry of a list, e.g. "
            "--config.compression[0].kwargs.sparsity")
  node, done = config, ""
  for part in parts:
    if isinstance(part, int):
      size = len(node) if isinstance(node, (list, tuple)) else None
      if size is not None and -size <= part < size:
        node, done = node[part], f"{done}[{part}]"
        continue
      if size is not None:
        return (f"{flag}: got entry {part} of {done}, which has {size} "
                "entr" + ("y" if size == 1 else "ies") + "; allowed: " + (
                    f"{done}[0]" if size == 1 else
                    f"{done}[0] to {done}[{size - 1}]" if size else
                    "none: add entries in the config file or a preset"))
    elif isinstance(node, ml_collections.ConfigDict):
      if part in node:
        node, done = node[part], f"{done}.{part}" if done else part
        continue
      names = sorted(node.keys())
      close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
      hint = f"did you mean {close[0]!r}? " if close else ""
      group = f"the fields of {done}" if done else "the config's fields"
      return (f"{flag}: got a field the config does not have; {hint}"
              f"allowed: {group}: {', '.join(names) or 'none'}")
    return (f"{flag}: got a field the config does not have; allowed: "
            f"--config.{done}, a value without fields")
  if isinstance(node, (list, tuple)) and node and all(
      isinstance(v, ml_collections.ConfigDict) for v in node):
    return (f"{flag}: got a list of entries, which cannot be set whole; "
            f"allowed: the fields of its entries, e.g. "
            f"{flag}[0].{sorted(node[0].keys())[0]}=VALUE")
  return None


_FLAG_VALUE = re.compile(r"^flag --([^=\s]+)=(.*?): (.*)$")


def _flag_error(error: flags.Error, flag_values: flags.FlagValues) -> str:
  """An absl flag error as one ``--flag: got v; allowed: a`` line."""
  text = one_line(error)
  if isinstance(error, flags.UnrecognizedFlagError):
    names = sorted(n for n in flag_values if "." not in n and len(n) > 1)
    allowed = ", ".join(f"--{n}" for n in names) if len(names) <= 12 else (
        "the flags --help lists")
    return (f"--{error.flagname}: got a flag this command does not have; "
            f"allowed: {allowed}")
  match = re.match(r"^Missing value for flag (\S+)", text)
  if match:
    return f"{match.group(1)}: got no value; allowed: {match.group(1)}=VALUE"
  match = _FLAG_VALUE.match(text)
  if not match:
    return text
  name, value, reason = match.groups()
  if "must have a value other than None" in reason:
    return f"--{name}: got no value; allowed: a value (the flag is required)"
  allowed = (
      "a number" if "to float" in reason else
      "an integer" if "int()" in reason else
      "true or false" if "boolean" in reason.lower() else
      f"its fields one by one, e.g. --{name}.FIELD=VALUE"
      if "as a ConfigDict" in reason else reason)
  return f"--{name}: got {value!r}; allowed: {allowed}"


def _parse_error(error: Exception, argv: list[str],
                 flag_values: flags.FlagValues,
                 config_argument: str | None) -> str:
  """One line for whatever stopped the flags from parsing."""
  chain = _chain(error)
  if config_argument is not None:
    message = _config_file_error(chain, config_argument)
    if message is not None:
      return message
    overrides = [a.lstrip("-").split("=", 1)[0][len("config."):]
                 for a in argv if re.match(r"^--?config\.", a)]
    config = _load(config_argument) if overrides else None
    for field in overrides if config is not None else ():
      message = _field_error(config, field)
      if message is not None:
        return message
  for inner in chain:
    if isinstance(inner, flags.Error):
      if config_argument is not None and (
          "--config must have a value other than None" in str(inner)):
        return _not_a_config(config_argument, None)
      return _flag_error(inner, flag_values)
  return f"{type(chain[-1]).__name__}: {one_line(chain[-1])}"


def _not_a_config(argument: str, config: Any) -> str:
  """The message for a config file whose get_config() gave no config."""
  error = vars(config).get("_error") if hasattr(
      type(config), "_ReportError") else None  # config_flags' load error
  got = (f"which cannot be loaded ({one_line(error)})" if error else
         f"whose get_config() returned {config!r:.80}")
  return (f"--config: got {argument!r}, {got}; allowed: a get_config() that "
          "returns a ConfigDict (see sparsify.default_config())")


def parse_flags(argv: list[str],
                flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Parses absl flags; bad flags, config files and workdirs are one line.

  Before the config file is run, it is checked (a readable file of Python)
  and so is ``--workdir`` when the command has one (`check_workdir_path`).

  Args:
    argv: the command line, program name first.
    flag_values: where the command's flags are defined.

  Returns:
    The arguments left after the flags.

  Raises:
    UsageError: for a missing or broken config file (one that does not
      compile, raises, has no ``get_config`` or returns no config), an
      unknown preset, an override of a field the config does not have or
      with a value of the wrong type, an unknown flag, or a workdir that
      cannot be written.
  """
  config_argument = _argument(argv, "config") if "config" in flag_values else (
      None)
  if config_argument is not None:
    check_config_file(config_argument)
  workdir = _argument(argv, "workdir") if "workdir" in flag_values else None
  if workdir is not None:
    check_workdir_path(workdir)
  # config_flags loads the file as the module 'config_config' and reuses one
  # of that name: a get_config() left there by an earlier file (in this
  # process) would be called instead of reporting that this one has none.
  sys.modules.pop(_CONFIG_MODULE, None)
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # a None config is reported below
  try:
    rest = flag_values(argv)
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError(_parse_error(e, argv, flag_values, config_argument)
                     ) from None
  finally:
    absl_logger.setLevel(level)
  if config_argument is not None:
    config = flag_values["config"].value
    if not isinstance(config, ml_collections.ConfigDict):
      raise UsageError(_not_a_config(config_argument, config))
  if workdir is None and "workdir" in flag_values and (
      flag_values["workdir"].value is not None):  # e.g. from a --flagfile
    check_workdir_path(flag_values["workdir"].value)
  return rest


def _not_rethrown(record: logging.LogRecord) -> bool:
  """False for orbax's log of a background failure it raises again later.

  A checkpoint save that fails in orbax's background threads (a full disk)
  is logged there with its traceback, once per thread and stage, and raised
  again in the training loop, where the run reports it in one line.
  """
  return not (record.levelno >= logging.ERROR
              and f"{os.sep}orbax{os.sep}" in record.pathname)


def _quiet_closed_loops(previous):
  """An excepthook that drops the echoes of a failed background write.

  After a failed checkpoint write, the storage library's callbacks try to
  wake asyncio loops that orbax already closed; each prints a traceback
  ending in ``RuntimeError: Event loop is closed`` through `sys.excepthook`.
  """
  def hook(kind, value, traceback):
    if kind is RuntimeError and str(value) == "Event loop is closed":
      return
    previous(kind, value, traceback)
  hook.quiet_closed_loops = True
  return hook


def quiet_logging() -> None:
  """Progress lines from sparsify; only warnings from the libraries."""
  logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
  for noisy in ("absl", "jax", "orbax", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  absl_logger = logging.getLogger("absl")
  if _not_rethrown not in absl_logger.filters:
    absl_logger.addFilter(_not_rethrown)
  if not getattr(sys.excepthook, "quiet_closed_loops", False):
    sys.excepthook = _quiet_closed_loops(sys.excepthook)
  if not getattr(sys.unraisablehook, "quiet_closed_loops", False):
    previous = sys.unraisablehook

    def unraisable(info):
      if not (isinstance(info.exc_value, RuntimeError)
              and str(info.exc_value) == "Event loop is closed"):
        previous(info)
    unraisable.quiet_closed_loops = True
    sys.unraisablehook = unraisable


def _error(e: Exception) -> int:
  print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
  return 2


def _guarded(fn: Callable[..., Any], *args: Any) -> int:
  """Calls ``fn(*args)``: 0, or 2 (bad input) or 1 (a run that stopped)."""
  try:
    fn(*args)
  except (UsageError, ConfigError, MissingDataError) as e:
    return _error(e)
  except RunError as e:  # the run started and stopped (NaN, a full disk)
    print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
    return 1
  return 0


def _run_body(body: Body, flag_values: flags.FlagValues) -> int:
  quiet_logging()
  return _guarded(body, flag_values)


def call(define: Define, body: Body, argv: list[str]) -> int:
  """Runs a command in this process, on fresh flags.

  Args:
    define: defines the command's flags.
    body: the command's work.
    argv: its command line, program name first.

  Returns:
    The exit status `main` would give: 0, or 2 (bad input) or 1 (a run
    that stopped) after one ``error:`` line on
    stderr.
  """
  flag_values = flags.FlagValues()
  define(flag_values, argv)
  return (_guarded(parse_flags, argv, flag_values)
          or _run_body(body, flag_values))


def main(define: Define, body: Body) -> None:
  """Runs a command from ``sys.argv`` under absl (``--help`` included)."""
  define(flags.FLAGS, sys.argv)

  def parse(argv):
    try:
      return parse_flags(argv)
    except UsageError as e:
      sys.exit(_error(e))

  def run(argv):
    del argv
    status = _run_body(body, flags.FLAGS)
    if status:
      # Background checkpoint threads may still hold callbacks for a closed
      # event loop and would print tracebacks at the interpreter's teardown.
      sys.stdout.flush()
      os._exit(status)  # pylint: disable=protected-access

  app.run(run, flags_parser=parse)
