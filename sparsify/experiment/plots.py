"""Plots of a run (sparsity, training curves, weights) and Pareto fronts.

`plot_run` reads what a run wrote into its workdir and saves PNG files next
to it:

* ``sparsity.png``: the sparsity of every layer over the training steps
  (``sparsity/<path>`` in ``metrics.jsonl``);
* ``training.png``: train loss, train accuracy and eval accuracy over steps;
* ``histograms.png``: per layer, the weights before and after compression,
  from ``weights_before.npz`` / ``weights_after.npz`` (`save_weights`), on a
  log count axis with the exact zeros as their own bar;
* ``scales.png``: ``scale/<path>`` and ``threshold/<path>`` scalars over
  training, when the run logged any.

`pareto_front` finds the non-dominated points of a two-objective trade-off
(accuracy against compression), `pareto` draws them. Matplotlib is imported
inside the plotting functions (figures go through its Agg canvas, the pyplot
state is left alone), so `sparsify` imports without it.
"""

from collections.abc import Callable, Mapping, Sequence
import io
import math
import os
import re
from typing import Any

import numpy as np

from sparsify.core import paths
from sparsify.core import types
from sparsify.experiment import files

METRICS_FILE = "metrics.jsonl"
SCALAR_PREFIXES = ("scale/", "threshold/")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _figure(width: float, height: float):
  """A matplotlib Figure drawn by the Agg canvas (no pyplot, no GUI)."""
  try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("sparsify.plots needs matplotlib: pip install "
                      "matplotlib (or pip install -e '.[notebooks]')") from e
  fig = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def weights_path(workdir: str, name: str) -> str:
  """``<workdir>/weights_<name>.npz``, the file `save_weights` writes.

  Args:
    workdir: the run's directory.
    name: the file's tag, e.g. ``'before'``: letters, digits, ``_``, ``-``
      and ``.`` only.

  Returns:
    The path of the file.

  Raises:
    ValueError: ``name`` is empty or has another character.
  """
  if not isinstance(name, str) or not _NAME.match(name):
    raise ValueError(f"name: got {name!r}; allowed: letters, digits, '_', "
                     "'-' and '.', e.g. 'before' or 'after'")
  return os.path.join(workdir, f"weights_{name}.npz")


def save_weights(workdir: str, params: types.Params, name: str, *,
                 where: str | Callable[[str, Any], bool] | None = None
                 ) -> str:
  """Saves the selected kernels of ``params`` as ``weights_<name>.npz``.

  The file holds one array per selected leaf, keyed by its path
  (``'fc1/kernel'``), so `plot_run` can draw weight histograms: it reads
  ``weights_before.npz`` and ``weights_after.npz``.

  Args:
    workdir: the run's directory (created if missing).
    params: a parameter pytree (Linen ``variables['params']`` or an NNX
      ``nnx.state(model, nnx.Param)``).
    name: the file's tag, ``'before'`` or ``'after'`` for `plot_run`.
    where: which leaves: ``None`` for Dense and Conv kernels, a regex on the
      path or a predicate ``(path, leaf) -> bool``.

  Returns:
    The path written.

  Raises:
    ValueError: ``name`` is not a valid tag (see `weights_path`) or
      ``where`` selects no leaf.

  Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> import sparsify
    >>> from sparsify.experiment import plots
    >>> params = {'fc1': {'kernel': np.ones((4, 3)), 'bias': np.zeros(3)}}
    >>> with tempfile.TemporaryDirectory() as workdir:
    ...   path = sparsify.save_weights(workdir, params, 'before')
    ...   saved = plots.load_weights(path)
    >>> os.path.basename(path), {k: v.shape for k, v in saved.items()}
    ('weights_before.npz', {'fc1/kernel': (4, 3)})
  """
  path = weights_path(workdir, name)
  chosen = paths.path_predicate(where)
  arrays = {n: np.asarray(leaf) for n, leaf in paths.named_leaves(params)
            if chosen(n, leaf)}
  if not arrays:
    raise ValueError(f"where: got {where!r}, which selects no parameter; "
                     "allowed: a regex or predicate matching at least one")
  os.makedirs(workdir, exist_ok=True)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(buffer.getvalue())
  os.replace(tmp, path)
  return path


def load_weights(path: str) -> dict[str, np.ndarray]:
  """Reads a file of `save_weights` back as ``{path: array}``.

  Args:
    path: the ``.npz`` file.

  Returns:
    ``{leaf path: numpy array}``, e.g. ``{'fc1/kernel': ...}``.
  """
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def read_metrics(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The scalars of ``metrics.jsonl`` as ``{name: (steps, values)}``.

  Steps are sorted; when a step was written more than once (a run resumed
  from an earlier checkpoint logs those steps again), the last value wins.

  Args:
    workdir: a run's directory.

  Returns:
    For every scalar name (``'train/loss'``, ``'sparsity/fc1/kernel'``, ...)
    its steps (int) and values (float).

  Raises:
    ValueError: ``workdir`` has no ``metrics.jsonl``, or a line of it (but
      a torn last one, which a kill leaves and which is skipped) is not a
      JSON object with a ``step``.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    raise ValueError(f"workdir: got {workdir!r}, which holds no "
                     f"{METRICS_FILE}; allowed: the workdir of a run")
  series: dict[str, dict[int, float]] = {}
  for number, row in enumerate(files.read_jsonl(path), 1):
    try:
      step = int(row.pop("step"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      raise ValueError(f"{path}: row {number} is not a metrics row "
                       f"({e})") from e
    for key, value in row.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        series.setdefault(key, {})[step] = float(value)
  out = {}
  for key, points in series.items():
    steps = np.array(sorted(points), dtype=np.int64)
    out[key] = steps, np.array([points[s] for s in steps], np.float64)
  return out


def _plot_sparsity(metrics, path):
  keys = sorted(k for k in metrics if k.startswith("sparsity/"))
  if not keys:
    return None
  fig = _figure(7, 4)
  ax = fig.add_subplot()
  for key in keys:
    steps, values = metrics[key]
    ax.plot(steps, 100 * values, label=key.removeprefix("sparsity/"))
  ax.set(xlabel="step", ylabel="sparsity (%)", ylim=(-2, 102),
         title="sparsity per layer")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  fig.savefig(path, dpi=100)
  return path


def _plot_training(metrics, path):
  curves = [k for k in ("train/loss", "eval/loss", "train/accuracy",
                        "eval/accuracy") if k in metrics]
  if not curves:
    return None
  fig = _figure(11, 4)
  loss_ax, acc_ax = fig.subplots(1, 2)
  for key in curves:
    steps, values = metrics[key]
    ax = loss_ax if key.endswith("loss") else acc_ax
    style = dict(marker="o", linestyle="-") if key.startswith("eval") else {}
    ax.plot(steps, values, label=key, **style)
  loss_ax.set(xlabel="step", ylabel="loss", title="loss")
  if all(metrics[k][1].min() > 0 for k in curves if k.endswith("loss")):
    loss_ax.set_yscale("log")
  acc_ax.set(xlabel="step", ylabel="accuracy", title="accuracy")
  for ax in (loss_ax, acc_ax):
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize="small")
  fig.savefig(path, dpi=100)
  return path


def _histogram(ax, weights, bins, color, label):
  """Nonzero weights as a step histogram, exact zeros as a bar at 0."""
  w = np.asarray(weights, np.float64).ravel()
  nonzero = w[w != 0]
  counts, _ = np.histogram(nonzero, bins=bins)
  ax.stairs(counts, bins, color=color, label=f"{label}: {nonzero.size:,} "
            "nonzero")
  zeros = int(w.size - nonzero.size)
  if zeros:
    width = bins[1] - bins[0]
    ax.bar([0.0], [zeros], width=width, color=color, alpha=0.45,
           hatch="//", edgecolor=color, label=f"{label}: {zeros:,} zeros")


def _plot_histograms(workdir, path):
  found = {tag: load_weights(weights_path(workdir, tag))
           for tag in ("before", "after")
           if os.path.exists(weights_path(workdir, tag))}
  if not found:
    return None
  layers = sorted({name for arrays in found.values() for name in arrays})
  cols = min(3, len(layers))
  rows = math.ceil(len(layers) / cols)
  fig = _figure(4.5 * cols, 3.3 * rows)
  axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
  colors = {"before": "tab:gray", "after": "tab:blue"}
  for ax, layer in zip(axes, layers):
    present = {tag: arrays[layer] for tag, arrays in found.items()
               if layer in arrays}
    peak = max(float(np.abs(w).max()) for w in present.values())
    peak = peak if peak > 0 else 1.0
    bins = np.linspace(-peak, peak, 82)  # 81 bins: the middle one holds 0
    for tag, w in present.items():
      _histogram(ax, w, bins, colors[tag], tag)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.8)
    ax.set(title=layer, xlabel="weight", ylabel="count")
    ax.legend(fontsize="x-small")
  for ax in axes[len(layers):]:
    ax.set_visible(False)
  fig.savefig(path, dpi=100)
  return path


def _plot_scalars(metrics, path):
  groups = [(p, sorted(k for k in metrics if k.startswith(p)))
            for p in SCALAR_PREFIXES]
  groups = [(p, keys) for p, keys in groups if keys]
  if not groups:
    return None
  fig = _figure(6 * len(groups), 4)
  axes = np.atleast_1d(fig.subplots(1, len(groups)))
  for ax, (prefix, keys) in zip(axes, groups):
    for key in keys:
      steps, values = metrics[key]
      ax.plot(steps, values, label=key.removeprefix(prefix))
    ax.set(xlabel="step", ylabel=prefix.rstrip("/"),
           title=f"{prefix.rstrip('/')} per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  fig.savefig(path, dpi=100)
  return path


def plot_run(workdir: str) -> list[str]:
  """Draws a run's metrics and weights into PNG files in its workdir.

  Writes ``sparsity.png`` (per-layer sparsity over steps), ``training.png``
  (train loss and accuracy, eval accuracy), ``histograms.png`` (when
  ``weights_before.npz`` or ``weights_after.npz`` exist, see
  `save_weights`) and ``scales.png`` (when ``metrics.jsonl`` has
  ``scale/<path>`` or ``threshold/<path>`` scalars); a plot whose data is
  missing is skipped.

  Args:
    workdir: the run's directory, holding ``metrics.jsonl``.

  Returns:
    The paths written, in the order above.

  Raises:
    ValueError: ``workdir`` has no readable ``metrics.jsonl``.

  Example:
    A run's workdir holds ``metrics.jsonl``; here three rows are written by
    hand:

    >>> import json, os, tempfile
    >>> import sparsify
    >>> with tempfile.TemporaryDirectory() as workdir:
    ...   with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    ...     for step in (0, 100, 200):
    ...       row = {'step': step, 'train/loss': 2.3 / (1 + step / 100),
    ...              'sparsity/fc1/kernel': step / 400}
    ...       print(json.dumps(row), file=f)
    ...   written = sparsify.plot_run(workdir)
    ...   names = [os.path.relpath(p, workdir) for p in written]
    >>> names
    ['sparsity.png', 'training.png']
  """
  metrics = read_metrics(workdir)
  written = [
      _plot_sparsity(metrics, os.path.join(workdir, "sparsity.png")),
      _plot_training(metrics, os.path.join(workdir, "training.png")),
      _plot_histograms(workdir, os.path.join(workdir, "histograms.png")),
      _plot_scalars(metrics, os.path.join(workdir, "scales.png")),
  ]
  return [p for p in written if p is not None]


def _check_maximize(maximize) -> tuple[bool, bool]:
  if (not isinstance(maximize, (tuple, list)) or len(maximize) != 2
      or not all(isinstance(m, (bool, np.bool_)) for m in maximize)):
    raise ValueError(f"maximize: got {maximize!r}; allowed: a pair of bools,"
                     " (x higher is better, y higher is better)")
  return bool(maximize[0]), bool(maximize[1])


def pareto_front(points: Any, maximize: Sequence[bool] = (True, True)
                 ) -> np.ndarray:
  r"""Indices of the non-dominated points of a two-objective trade-off.

  With every objective turned into "higher is better" (negated where
  ``maximize`` is False), point :math:`p` is dominated when some point
  :math:`q` has :math:`q_x \ge p_x` and :math:`q_y \ge p_y` with one of the
  two strict. The front is found in :math:`O(n \log n)`: by decreasing
  :math:`x`, the best point of each group of equal :math:`x` is on the front
  exactly when its :math:`y` beats every :math:`y` of larger :math:`x`.
  Equal points are all kept; points with a NaN are never on the front.

  Args:
    points: ``(n, 2)`` array-like of ``(x, y)``.
    maximize: per objective, True when higher is better (e.g. accuracy,
      compression ratio), False when lower is (e.g. bytes on disk).

  Returns:
    int array of the front's indices into ``points``, by increasing ``x``
    (ties by increasing ``y``).

  Example:
    >>> import sparsify
    >>> ratio_and_accuracy = [[1, 0.9], [2, 0.8], [2, 0.7], [0.5, 0.85]]
    >>> sparsify.pareto_front(ratio_and_accuracy)
    array([0, 1])
    >>> bytes_and_accuracy = [[400, 0.9], [300, 0.8], [500, 0.95]]
    >>> sparsify.pareto_front(bytes_and_accuracy, maximize=(False, True))
    array([1, 0, 2])
  """
  mx, my = _check_maximize(maximize)
  p = np.asarray(points, np.float64)
  if p.ndim != 2 or p.shape[1] != 2:
    raise ValueError(f"points: got shape {p.shape}; allowed: (n, 2)")
  gain = p * np.array([1.0 if mx else -1.0, 1.0 if my else -1.0])
  valid = np.flatnonzero(~np.isnan(gain).any(axis=1))
  order = valid[np.lexsort((-gain[valid, 1], -gain[valid, 0]))]
  front, best, i = [], -np.inf, 0
  while i < len(order):
    j = i
    while j < len(order) and gain[order[j], 0] == gain[order[i], 0]:
      j += 1
    group = order[i:j]  # equal x, by decreasing y
    top = gain[group[0], 1]
    if top > best:
      front.extend(k for k in group if gain[k, 1] == top)
      best = top
    i = j
  front = np.array(front, dtype=np.int64)
  return front[np.lexsort((p[front, 1], p[front, 0]))]


def pareto(rows: Sequence[Mapping[str, Any]], x: str, y: str, path: str, *,
           label: str | Callable[[Mapping[str, Any]], str] | None = None,
           maximize: Sequence[bool] = (True, True),
           title: str | None = None) -> list[Mapping[str, Any]]:
  """Scatter of ``rows`` on ``(x, y)`` with the Pareto front highlighted.

  Rows whose ``x`` or ``y`` is missing, None or NaN are left out.

  Args:
    rows: one mapping per run (e.g. the rows of a sweep).
    x: the key plotted along x, e.g. ``'compression_ratio'`` or
      ``'bytes_on_disk'``.
    y: the key plotted along y, e.g. ``'eval_accuracy'``.
    path: the PNG file to write.
    label: annotates each point: a key of the rows or a callable
      ``row -> str``; None for no annotation.
    maximize: per axis, True when higher is better (see `pareto_front`).
    title: the figure's title.

  Returns:
    The rows on the front, by increasing ``x``.

  Raises:
    ValueError: ``maximize`` is not a pair of bools, or no row has numbers
      under both ``x`` and ``y``.

  Example:
    >>> import os, tempfile
    >>> import sparsify
    >>> rows = [
    ...     {'sparsity': 0.5, 'compression_ratio': 2.0, 'eval_accuracy': 0.98},
    ...     {'sparsity': 0.8, 'compression_ratio': 5.0, 'eval_accuracy': 0.97},
    ...     {'sparsity': 0.9, 'compression_ratio': 10., 'eval_accuracy': 0.975},
    ...     {'sparsity': 0.95, 'compression_ratio': 20., 'eval_accuracy': 0.95}]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   front = sparsify.pareto(rows, 'compression_ratio', 'eval_accuracy',
    ...                           os.path.join(tmp, 'pareto.png'),
    ...                           label='sparsity')
    >>> [row['sparsity'] for row in front]  # 0.8 is dominated by 0.9
    [0.5, 0.9, 0.95]
  """
  mx, my = _check_maximize(maximize)

  def number(row, key):
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float,
                                                         np.number)):
      return math.nan
    return float(value)

  kept = [r for r in rows if not math.isnan(number(r, x))
          and not math.isnan(number(r, y))]
  if not kept:
    raise ValueError(f"rows: none has numbers under both {x!r} and {y!r}")
  points = np.array([[number(r, x), number(r, y)] for r in kept])
  front = pareto_front(points, (mx, my))
  fig = _figure(7, 4.5)
  ax = fig.add_subplot()
  ax.scatter(points[:, 0], points[:, 1], color="tab:gray", alpha=0.7,
             label="runs")
  ax.scatter(points[front, 0], points[front, 1], color="tab:red", zorder=3,
             label="Pareto front")
  ax.plot(points[front, 0], points[front, 1], color="tab:red", alpha=0.6,
          drawstyle="steps-pre" if mx else "steps-post")
  if label is not None:
    text = label if callable(label) else lambda r: str(r.get(label))
    at: dict[tuple[float, float], list[str]] = {}  # equal points share one
    for row, (px, py) in zip(kept, points):
      at.setdefault((px, py), []).append(text(row))
    for (px, py), texts in at.items():
      ax.annotate("; ".join(texts), (px, py), textcoords="offset points",
                  xytext=(4, 4), fontsize="x-small")
  better = {True: "higher is better", False: "lower is better"}
  ax.set(xlabel=f"{x} ({better[mx]})", ylabel=f"{y} ({better[my]})",
         title=title or f"{y} vs {x}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  return [kept[i] for i in front]
