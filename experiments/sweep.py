r"""Runs a grid of configs one after the other and collects their results.

  python -m experiments.sweep --config configs/lenet_300_100.py:dat --workdir /tmp/sweep \
      --grid 'compression[0].kwargs.target_sparsity=0.8,0.9,0.95' \
      --grid 'compression[0].kwargs.c=1,3' \
      --set data.name=fashion_mnist --set train.epochs=2

Every point of the Cartesian product of the ``--grid`` values (the last
``--grid`` varying fastest) trains through `sparsify.run`
in ``<workdir>/<field=value,...>``, e.g.
``compression_0_.kwargs.target_sparsity=0.9,...`` (made safe, with a hash). ``--set FIELD=VALUE`` (and
``--config.FIELD=VALUE``) changes every run. A run whose ``results.json``
holds its finished results is skipped, so a sweep started again carries on
where it stopped; a run that was interrupted resumes from its latest
checkpoint. A run folder whose ``results.json`` or ``config.json`` is empty
or torn (a kill while it was written), or whose results lack the
post-training stages the config asks for, counts as unfinished and runs
again (one line says so). Each run's config is kept in its ``config.json``:
a workdir that holds a run of another config is refused.

Values are read with the type of the config field (bool: true/false; int;
float; str; tuple: a Python literal such as ``(64, 32)``); every config of
the grid is validated before the first run starts.

The values of one ``--grid`` are separated by commas outside brackets and
quotes. A value that holds a comma itself is quoted (the quotes are not
part of it), so a field whose value is a comma list (`LIST_FIELDS`:
``post.stages``) takes one quoted value per run::

  --grid "post.stages='share','pq'"                # two runs: share; pq
  --grid "post.stages='slim,finetune','share,pq'"  # two runs of two stages

An unquoted comma list for such a field (``post.stages=share,pq``: one run
or two?) is refused with a line that shows both ways to write it.

At the end the workdir holds ``results.csv`` and ``results.md`` (one row per run: the grid fields,
eval accuracy, nonzeros, parameters, the report's compression ratio and,
with post-training stages, the compressed file's bytes on disk and decoded
accuracy) and ``pareto.png`` (eval accuracy against compression ratio, the
Pareto front highlighted).

From Python: ``rows = run_sweep(config, workdir,
{'compression[0].kwargs.sparsity': [0.8, 0.9]})``.
"""

import ast
from collections.abc import Mapping, Sequence
import copy
import csv
import difflib
import hashlib
import importlib.util
import io
import itertools
import json
import math
import os
import re
from typing import Any

from absl import flags
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from experiments import cli
from sparsify import models
from sparsify.experiment import config as config_lib
from sparsify.experiment import files
from sparsify.experiment import run as run_lib

# Groups whose keys are free (a model's keyword arguments): a new key may be
# added there; anywhere else an unknown field is an error.
OPEN_GROUPS = ("model.kwargs",)
_INDEX = re.compile(r"\[(\d+)\]")
_SAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
_MAX_NAME = 200
# Fields whose value is itself a comma-separated list: their grid values
# are quoted, one per run.
LIST_FIELDS = ("post.stages",)


def _entries(value: Any) -> bool:
  """Whether a field holds a list of groups (like ``compression``)."""
  return isinstance(value, (list, tuple)) and bool(value) and all(
      isinstance(v, ml_collections.ConfigDict) for v in value)


def config_fields(config: ml_collections.ConfigDict, prefix: str = ""
                  ) -> list[str]:
  """Every leaf field of ``config`` as a path, in config order.

  Groups join with ``.``, entries of a list of groups with ``[i]``, e.g.
  ``compression[0].kwargs.sparsity``.
  """
  out = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      out.extend(config_fields(value, f"{path}."))
    elif _entries(value):
      for i, entry in enumerate(value):
        out.extend(config_fields(entry, f"{path}[{i}]."))
    else:
      out.append(path)
  return out


def _unknown(config, field: str) -> config_lib.ConfigError:
  """The error for a field ``config`` lacks, naming its closest fields.

  Close: a field of the same group whose last name is similar, a field
  elsewhere with the same last name, or a field whose whole path is very
  similar (a misspelt group).
  """
  fields = config_fields(config)
  group, _, last = field.rpartition(".")
  siblings = {f.rpartition(".")[2]: f for f in fields
              if f.rpartition(".")[0] == group}
  close = [siblings[n] for n in difflib.get_close_matches(
      last, list(siblings), n=3, cutoff=0.6)]
  close += [f for f in fields if f.rpartition(".")[2] == last]
  close += difflib.get_close_matches(field, fields, n=3, cutoff=0.85)
  close = list(dict.fromkeys(close))
  hint = (f"close matches: {', '.join(close)}" if close else
          "allowed: a field of the config (see sparsify.default_config())")
  return config_lib.ConfigError(f"{field}: no such config field; {hint}")


def _locate(config: ml_collections.ConfigDict, field: str):
  """The group holding ``field`` and the field's last name, or an error."""
  if not isinstance(field, str) or not field:
    raise config_lib.ConfigError(f"grid: got field {field!r}; allowed: a "
                                 "config field, e.g. "
                                 "compression[0].kwargs.sparsity")
  try:
    *parents, leaf = config_path.split(field)
  except (ValueError, SyntaxError) as e:
    raise _unknown(config, field) from e
  node, group = config, []
  for part in parents:
    if isinstance(part, int):
      ok = _entries(node) and -len(node) <= part < len(node)
      child = node[part] if ok else None
    elif isinstance(node, ml_collections.ConfigDict):
      child = node.get(part)
    else:
      child = None
    if not (isinstance(child, ml_collections.ConfigDict) or _entries(child)):
      raise _unknown(config, field)
    node = child
    group.append(str(part))
  if isinstance(leaf, int) or not isinstance(node, ml_collections.ConfigDict):
    raise _unknown(config, field)
  if leaf not in node and ".".join(group) not in OPEN_GROUPS:
    raise _unknown(config, field)
  value = node.get(leaf)
  if isinstance(value, ml_collections.ConfigDict) or _entries(value):
    inner = (config_fields(value, f"{field}.") if isinstance(
        value, ml_collections.ConfigDict) else
             config_fields(ml_collections.ConfigDict({leaf: value}),
                           field[:-len(leaf)]))
    raise config_lib.ConfigError(
        f"{field}: a group of fields, not a field; allowed: one of "
        f"{', '.join(inner) or 'its fields'}")
  return node, leaf


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, MemoryError, RecursionError):
    return text


def _quoted(text: str) -> bool:
  """Whether ``text`` is one quoted string, ``'a,b'`` or ``"a,b"``."""
  text = text.strip()
  return len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" and (
      isinstance(_literal(text), str))


def _unquote(text: str) -> str:
  """The string a quoted ``text`` holds; other text as it is."""
  return _literal(text.strip()) if _quoted(text) else text


def parse_value(config: ml_collections.ConfigDict, field: str,
                value: Any) -> Any:
  """``value`` (text or Python) as the type of ``config``'s ``field``.

  Args:
    config: the config that has the field.
    field: a field, e.g. ``'compression[0].kwargs.sparsity'``.
    value: text from the command line (``'0.9'``, ``'true'``, ``'(64,)'``)
      or a Python value.

  Returns:
    The value with the field's type: bool, int, float, str, tuple, or None
    for an unset optional field given ``'none'``.

  Raises:
    sparsify.ConfigError: the field does not exist or the value does not fit
      its type; the message names the field and what is allowed.
  """
  node, leaf = _locate(config, field)
  if leaf not in node:  # a new key of an open group: any literal
    return _literal(value) if isinstance(value, str) else value
  kind = node.get_type(leaf)
  optional = node.get(leaf) is None
  if optional and (value is None or (isinstance(value, str)
                                     and value.lower() == "none")):
    return None
  text = value if isinstance(value, str) else None

  def bad(allowed):
    return config_lib.ConfigError(field, value, allowed)

  if kind is bool:
    if isinstance(value, bool):
      return value
    words = {"true": True, "yes": True, "1": True, "false": False,
             "no": False, "0": False}
    if text is not None and text.strip().lower() in words:
      return words[text.strip().lower()]
    raise bad("true or false")
  if kind is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if text is not None and re.fullmatch(r"\s*[+-]?\d+\s*", text):
      return int(text)
    raise bad("an integer")
  if kind is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    if text is not None:
      try:
        number = float(text)
      except ValueError:
        number = math.nan
      if math.isfinite(number):
        return number
    raise bad("a finite number")
  if kind is str:
    if isinstance(value, str):
      return _unquote(value)
    raise bad("a string" + (" or none" if optional else ""))
  if kind in (tuple, list):
    parsed = _literal(value) if text is not None else value
    if isinstance(parsed, (tuple, list)):
      return tuple(parsed)
    raise bad("a tuple written as a Python literal, e.g. (64, 32)")
  raise bad(f"a value of type {kind.__name__}, which the sweep cannot set; "
            "set it in the config file")


def with_values(config: ml_collections.ConfigDict,
                values: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with the parsed ``values`` (field -> value) set."""
  config = copy.deepcopy(config)
  with config.unlocked():
    for field, value in values.items():
      node, leaf = _locate(config, field)
      node[leaf] = value
  return config


def split_values(text: str) -> list[str]:
  """Splits ``'0.8,0.9'`` or ``'(64,),(32,16)'`` at top-level commas."""
  parts, depth, quote, start = [], 0, None, 0
  for i, ch in enumerate(text):
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      parts.append(text[start:i].strip())
      start = i + 1
  parts.append(text[start:].strip())
  return parts


def parse_assignment(text: str, *, several: bool) -> tuple[str, Any]:
  """``'field=value'`` (``several``: ``'field=v1,v2'``) -> (field, text)."""
  if "=" not in text:
    flag, example = (("--grid", "compression[0].kwargs.sparsity=0.8,0.9") if several
                     else ("--set", "train.epochs=2"))
    raise config_lib.ConfigError(f"{flag}: got {text!r}; allowed: FIELD=VALUE"
                                 f"{',VALUE...' if several else ''}, e.g. "
                                 f"{example}")
  field, value = text.split("=", 1)
  field = field.strip()
  if not several:
    return field, value
  values = split_values(value)
  if field in LIST_FIELDS and len(values) > 1 and not all(
      _quoted(v) for v in values):
    one = ",".join(_unquote(v) for v in values)
    raise config_lib.ConfigError(
        f"--grid {field}: got {value!r}, a comma list that could be one run "
        f"or {len(values)} runs; allowed: each run's value quoted: --grid "
        f"\"{field}='{one}'\" for one run, --grid \"{field}="
        f"{','.join(repr(_unquote(v)) for v in values)}\" for "
        f"{len(values)}")
  return field, values


def _token(value: Any) -> str:
  if isinstance(value, bool):
    return "true" if value else "false"
  if value is None:
    return "none"
  if isinstance(value, float):
    return repr(value)
  return str(value)


def _dot(match: re.Match[str]) -> str:
  return "." + match.group(1)


def run_name(values: Mapping[str, Any]) -> str:
  """The directory name of one run: ``field=value,...`` made safe.

  Characters other than letters, digits and ``. _ = , + -`` become ``_``;
  when anything was replaced, a value holds ``=`` (so that its commas could
  read as more fields), or the name is long, a short hash of the exact
  values is appended so that different runs never share a directory.
  """
  # An entry of a list of groups, ``compression[0].x``, reads ``compression.0.x``.
  exact = ",".join(f"{_INDEX.sub(_dot, f)}={_token(v)}"
                   for f, v in values.items())
  name = _SAFE.sub("_", exact)
  if name != exact or len(name) > _MAX_NAME or any(
      "=" in _token(v) for v in values.values()):
    digest = hashlib.sha1(exact.encode()).hexdigest()[:8]
    name = f"{name[:_MAX_NAME]}-{digest}"
  return name or "default"


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """A nested dict (a config as JSON) as ``{'a.b.c': value}``."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _read_json(path: str) -> Any:
  """The JSON object in ``path``; None if it is missing, empty or torn."""
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, ValueError):  # missing, unreadable, empty, torn, binary
    return None
  return value if isinstance(value, dict) else None


def _check_run_dir(config, run_dir: str) -> bool:
  """Refuses a run directory whose ``config.json`` is another config's.

  Returns:
    False when ``config.json`` is there but empty or torn (the run is then
    treated as unfinished), else True.
  """
  if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
    raise config_lib.ConfigError(
        f"{run_dir}: got a file where the sweep keeps a run; allowed: a "
        "directory (remove the file, or pass another --workdir)")
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    return True
  theirs = _read_json(path)
  if theirs is None:
    return False
  theirs = _flat(theirs)
  mine = _flat(json.loads(config.to_json()))
  differ = sorted(k for k in set(mine) | set(theirs)
                  if mine.get(k) != theirs.get(k))
  if differ:
    shown = ", ".join(f"{k} (this sweep: {mine.get(k)!r}, there: "
                      f"{theirs.get(k)!r})" for k in differ[:5])
    raise config_lib.ConfigError(
        f"{run_dir} holds a run of another config, differing in {shown}; "
        "allowed: the same config, or another --workdir")
  return True


def _finished_row(name: str, values: Mapping[str, Any], run_dir: str,
                  config: ml_collections.ConfigDict
                  ) -> dict[str, Any] | None:
  """The row of a finished run in ``run_dir``, or None if it is not done.

  Done: ``results.json`` reads as the results of a whole run, its
  post-training stages included when the config has some.
  """
  results = _read_json(os.path.join(run_dir, "results.json"))
  if results is None or (config.post.stages and not results.get("post")):
    return None
  try:
    return _row(name, values, results)
  except (KeyError, TypeError, AttributeError):
    return None


def _row(name: str, values: Mapping[str, Any],
         results: Mapping[str, Any]) -> dict[str, Any]:
  total = results["report"]["total"]
  file_info = (results.get("post") or {}).get("file") or {}
  return {"run": name, **values,
          "eval_accuracy": results["eval_accuracy"],
          "nonzeros": total["nonzeros"], "params": total["params"],
          "compression_ratio": total["compression_ratio"],
          "bytes_on_disk": file_info.get("bytes_on_disk"),
          "file_accuracy": file_info.get("decoded_accuracy")}


def _cell(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, bool):
    return "true" if value else "false"
  return str(value)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str) -> None:
  """The rows as CSV; None becomes an empty cell."""
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=list(rows[0]))
  writer.writeheader()
  for row in rows:
    writer.writerow({k: _cell(v) for k, v in row.items()})
  files.write_text(path, text.getvalue())


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
  """The rows as a markdown table (n/a where a value is missing)."""
  formats = {"eval_accuracy": ".4f", "file_accuracy": ".4f",
             "compression_ratio": ".2f", "nonzeros": ",", "params": ",",
             "bytes_on_disk": ","}
  keys = [k for k in rows[0] if k != "run"]
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  for row in rows:
    cells = ["n/a" if row[k] is None else
             format(row[k], formats[k]) if k in formats else _cell(row[k])
             for k in keys]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _grid_items(grid) -> list[tuple[str, list[Any]]]:
  items = list(grid.items()) if isinstance(grid, Mapping) else list(grid)
  if not items:
    raise config_lib.ConfigError("grid: got no field; allowed: at least one "
                                 "field with its values")
  seen = set()
  out = []
  for field, values in items:
    if field in seen:
      raise config_lib.ConfigError(f"grid: field {field!r} given twice; "
                                   "allowed: each field once, with all its "
                                   "values")
    seen.add(field)
    values = [values] if isinstance(values, str) else list(values)
    if not values:
      raise config_lib.ConfigError(f"grid: {field}: got no values; allowed: "
                                   "one or more")
    out.append((field, values))
  return out


def plan(config: ml_collections.ConfigDict, grid, overrides=None
         ) -> list[tuple[str, dict[str, Any], ml_collections.ConfigDict]]:
  """The runs of a sweep, ``[(name, grid values, config), ...]``, validated.

  Args:
    config: the base config.
    grid: ``{field: [value, ...]}`` (or ``[(field, values), ...]``); values
      are text or Python values, read with the field's type.
    overrides: ``{field: value}`` set in every run.

  Returns:
    One entry per point of the Cartesian product, the last field varying
    fastest.

  Raises:
    sparsify.ConfigError: an unknown field, a value of the wrong type, a
      repeated value, a field both in the grid and the overrides, or a config
      that `sparsify.experiment.config.validate` refuses.
  """
  items = _grid_items(grid)
  overrides = dict(overrides or {})
  both = sorted(set(overrides) & {f for f, _ in items})
  if both:
    raise config_lib.ConfigError(f"{', '.join(both)}: both in the grid and "
                                 "set for every run; allowed: one of the two")
  fixed = {f: parse_value(config, f, v) for f, v in overrides.items()}
  base = with_values(config, fixed)
  axes = []
  for field, values in items:
    parsed = [parse_value(base, field, v) for v in values]
    tokens = [_token(v) for v in parsed]
    if len(set(tokens)) != len(tokens):
      raise config_lib.ConfigError(field, values, "distinct values (each "
                                   "value once)")
    axes.append([(field, v) for v in parsed])
  runs = []
  for point in itertools.product(*axes):
    values = dict(point)
    run_config = with_values(base, values)
    config_lib.validate(run_config)
    try:  # a model's keyword arguments are checked when it is built
      models.get_model(run_config.model.name,
                       **run_config.model.kwargs.to_dict())
    except (ValueError, TypeError) as e:
      raise config_lib.ConfigError(
          f"model.kwargs: {str(e).removeprefix('model: ')}") from e
    runs.append((run_name(values), values, run_config))
  return runs


def run_sweep(config: ml_collections.ConfigDict, workdir: str, grid,
              overrides: Mapping[str, Any] | None = None
              ) -> list[dict[str, Any]]:
  """Trains every config of a grid in sequence; writes and returns results.

  Runs whose ``results.json`` already exists are skipped (their results are
  read back); an interrupted run resumes from its checkpoint. Writes
  ``results.csv``, ``results.md`` and, when matplotlib is installed,
  ``pareto.png`` into ``workdir``.

  Args:
    config: the base config (e.g. ``get_config('dat')`` of a config file).
    workdir: the sweep's directory; run ``i`` trains in
      ``<workdir>/<field=value,...>``.
    grid: ``{field: [value, ...]}``, values as text or Python values.
    overrides: ``{field: value}`` set in every run.

  Returns:
    One row per run: ``run`` (its directory name), the grid fields, then
    ``eval_accuracy``, ``nonzeros``, ``params``, ``compression_ratio``,
    ``bytes_on_disk`` and ``file_accuracy`` (None without a compressed
    file).

  Example:
    >>> rows = run_sweep(config, '/tmp/sweep',
    ...                  {'compression[0].kwargs.sparsity': [0.8, 0.9, 0.95]})
  """
  runs = plan(config, grid, overrides)
  os.makedirs(workdir, exist_ok=True)
  rows = []
  for i, (name, values, run_config) in enumerate(runs, 1):
    run_dir = os.path.join(workdir, name)
    step = f"[{i}/{len(runs)}] {name}"
    known = _check_run_dir(run_config, run_dir)
    row = _finished_row(name, values, run_dir, run_config)
    if known and row is not None:
      print(f"{step}: done before, skipped", flush=True)
    else:
      torn = [f for f, bad in (("config.json", not known),
                               ("results.json", row is None))
              if bad and os.path.exists(os.path.join(run_dir, f))]
      print(f"{step}: " + (f"{' and '.join(torn)} empty, torn or "
                           "incomplete: training again (resuming)"
                           if torn else "training"), flush=True)
      os.makedirs(run_dir, exist_ok=True)
      files.write_text(os.path.join(run_dir, "config.json"),
                       run_config.to_json(indent=2))
      run_lib.run(run_config, run_dir)
      row = _finished_row(name, values, run_dir, run_config)
      if row is None:
        raise config_lib.ConfigError(
            f"{run_dir}: got no complete results.json after training; "
            "allowed: a run that writes its results (see its log)")
    rows.append(row)
  write_csv(rows, os.path.join(workdir, "results.csv"))
  files.write_text(os.path.join(workdir, "results.md"), markdown(rows))
  if importlib.util.find_spec("matplotlib") is not None:
    from sparsify.experiment import plots  # pylint: disable=g-import-not-at-top
    fields = list(runs[0][1])
    if any(r["compression_ratio"] is not None for r in rows):
      plots.pareto(rows, "compression_ratio", "eval_accuracy",
                   os.path.join(workdir, "pareto.png"),
                   label=lambda r: ",".join(_token(r[f]) for f in fields),
                   title="eval accuracy vs compression ratio")
  return rows


def define_flags(flag_values: flags.FlagValues, argv: list[str]) -> None:
  config_flags.DEFINE_config_file(
      "config", None, "Path to a config file (configs/*.py[:PRESET]).",
      flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "The sweep's directory.",
                      flag_values=flag_values)
  flags.DEFINE_multi_string(
      "grid", [], "FIELD=V1,V2,...: values of one field; several --grid "
      "give their product. A value holding a comma is quoted: "
      "\"post.stages='share,pq','slim,finetune'\" is two runs.",
      flag_values=flag_values)
  flags.DEFINE_multi_string("set", [], "FIELD=VALUE, set in every run.",
                            flag_values=flag_values)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


def sweep(flag_values: flags.FlagValues) -> None:
  grid = [parse_assignment(g, several=True) for g in flag_values.grid]
  overrides = dict(parse_assignment(s, several=False) for s in flag_values.set)
  rows = run_sweep(flag_values.config, flag_values.workdir, grid, overrides)
  print()
  print(markdown(rows))
  print(f"results: {os.path.join(flag_values.workdir, 'results.csv')}")


if __name__ == "__main__":
  cli.main(define_flags, sweep)
