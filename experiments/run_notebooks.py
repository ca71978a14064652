r"""Executes the notebooks in notebooks/ and prints the seconds each took.

  python -m experiments.run_notebooks            # every notebook
  python -m experiments.run_notebooks dat pq     # some of them

Each notebook runs from top to bottom in a fresh ``python3`` kernel, with
notebooks/ as the working directory and at most 600 s per cell; its outputs
are not written back (the notebooks stay without outputs). The exit status is
1 when a notebook fails, and the failing notebook and cell are named.
Needs ``pip install nbclient nbformat ipykernel matplotlib``.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
CELL_TIMEOUT = 600


def notebook_paths(names=()) -> list[str]:
  """The notebooks to run: all of notebooks/, or those named (no suffix)."""
  found = sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb"))
  if not names:
    return [os.path.join(NOTEBOOKS, f) for f in found]
  chosen = []
  for name in names:
    file = name if name.endswith(".ipynb") else f"{name}.ipynb"
    if file not in found:
      raise SystemExit(f"error: notebook {name!r} not found; allowed: "
                       f"{', '.join(f.removesuffix('.ipynb') for f in found)}")
    chosen.append(os.path.join(NOTEBOOKS, file))
  return chosen


def run_notebook(path: str) -> tuple[float, str | None]:
  """Runs one notebook; returns its seconds and None, or a failure line."""
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top

  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=CELL_TIMEOUT, kernel_name="python3",
      resources={"metadata": {"path": NOTEBOOKS}})
  start = time.perf_counter()
  failure = None
  client.reset_execution_trackers()
  with client.setup_kernel():
    for index, cell in enumerate(nb.cells):
      if cell.cell_type != "code":
        continue
      try:
        client.execute_cell(cell, index)
      except nbclient.exceptions.CellExecutionError as e:
        first = next((line for line in cell.source.splitlines()
                      if line.strip()), "")
        error = f"{e.ename}: {e.evalue}".strip().splitlines()
        failure = (f"{os.path.basename(path)}: cell {index} ({first!r}) "
                   f"failed: {error[0] if error else e.ename}")
        break
      except nbclient.exceptions.CellTimeoutError:
        failure = (f"{os.path.basename(path)}: cell {index} ran past "
                   f"{CELL_TIMEOUT} s")
        break
      except nbclient.exceptions.DeadKernelError as e:
        failure = (f"{os.path.basename(path)}: cell {index}: the kernel "
                   f"died ({e})")
        break
  return time.perf_counter() - start, failure


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("names", nargs="*",
                      help="notebooks to run (default: all)")
  args = parser.parse_args(argv)
  failures = []
  for path in notebook_paths(args.names):
    seconds, failure = run_notebook(path)
    status = "ok" if failure is None else "FAILED"
    print(f"{os.path.basename(path):<24} {seconds:7.1f} s  {status}",
          flush=True)
    if failure is not None:
      failures.append(failure)
  for failure in failures:
    print(f"error: {failure}", file=sys.stderr)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
