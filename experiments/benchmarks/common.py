"""Shared pieces of the benchmark scripts: machine info and result files.

Every benchmark writes ``<out>.json`` (all numbers plus the command and the
machine) and ``<out>.md`` (a markdown table of the headline columns).
"""

import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
from typing import Any

import jax


def commit() -> str | None:
  """The git commit of the code that produced the numbers, if known."""
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def machine() -> dict[str, Any]:
  """What the numbers were measured on."""
  return {
      "commit": commit(),
      "platform": platform.platform(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "devices": jax.device_count(),
      "cpu_count": os.cpu_count(),
  }


def markdown_table(rows: list[dict[str, Any]],
                   columns: list[tuple[str, str, str]]) -> str:
  """Rows as a markdown table; ``columns`` is ``[(key, header, format)]``."""
  lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  for row in rows:
    cells = [format(row[k], f) if row.get(k) is not None else "n/a"
             for k, _, f in columns]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_results(out: str, rows: list[dict[str, Any]],
                  columns: list[tuple[str, str, str]], **meta: Any) -> str:
  """Writes ``out.json`` and ``out.md``; prints and returns the table."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  command = "python -m " + __package__ + "." + os.path.basename(
      sys.argv[0]).removesuffix(".py") + " " + " ".join(sys.argv[1:])
  table = markdown_table(rows, columns)
  record = {"command": command.strip(), "date": datetime.date.today().isoformat(),
            "machine": machine(), **meta, "rows": rows}
  with open(out + ".json", "w") as f:
    json.dump(record, f, indent=2)
  with open(out + ".md", "w") as f:
    f.write(f"{table}\n\nCommand: `{record['command']}`\n")
  print(table)
  return table


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "experiments", "benchmarks", "results")


def load_config(name: str, preset: str | None = None):
  """``get_config(preset)`` of ``configs/<name>.py``."""
  path = os.path.join(ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset) if preset else module.get_config()


def set_sparsity(config, sparsity: float) -> None:
  """Sets the target sparsity of the config's first compression entry.

  DAT names it ``target_sparsity``; the masking methods ``sparsity``.
  """
  entry = config.compression[0]
  key = "target_sparsity" if entry.name == "dat" else "sparsity"
  entry.kwargs[key] = sparsity


def steady_steps_per_second(workdir: str) -> float:
  """Median training steps/s over a run's log intervals, the first excluded.

  The first interval includes compilation.
  """
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    times = [r["time/step_ms"] for r in map(json.loads, f)
             if "time/step_ms" in r]
  return 1e3 / statistics.median(times[1:] or times)
