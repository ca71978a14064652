"""Tests of sparsify.plots: Pareto fronts, run plots, weight files."""

import itertools
import json
import os

import numpy as np
import pytest

from sparsify.experiment import plots

matplotlib = pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def brute_force_front(points, maximize):
  """Indices no other point dominates, by the definition, in O(n^2)."""
  sign = np.where(np.asarray(maximize), 1.0, -1.0)
  g = np.asarray(points, np.float64) * sign
  front = []
  for i in range(len(g)):
    if np.isnan(g[i]).any():
      continue
    dominated = False
    for j in range(len(g)):
      if j != i and not np.isnan(g[j]).any():
        if np.all(g[j] >= g[i]) and np.any(g[j] > g[i]):
          dominated = True
    if not dominated:
      front.append(i)
  return front


@pytest.mark.parametrize("maximize", list(itertools.product([True, False],
                                                            repeat=2)))
@pytest.mark.parametrize("seed", range(6))
def test_pareto_front_matches_brute_force(maximize, seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(1, 40))
  # Small integer grids give many ties in x, in y and whole duplicates.
  points = rng.integers(0, 6, size=(n, 2)).astype(np.float64)
  if seed % 2:
    points[rng.random(n) < 0.15, int(rng.integers(2))] = np.nan
  got = plots.pareto_front(points, maximize)
  assert sorted(got.tolist()) == brute_force_front(points, maximize)
  # By increasing x, then increasing y.
  keys = [tuple(points[i]) for i in got]
  assert keys == sorted(keys)


def test_pareto_front_continuous_points():
  rng = np.random.default_rng(7)
  points = rng.normal(size=(300, 2))
  got = plots.pareto_front(points)
  assert sorted(got.tolist()) == brute_force_front(points, (True, True))


def test_pareto_front_by_hand():
  points = [[1, 0.9], [2, 0.8], [2, 0.7], [0.5, 0.85], [1, 0.9]]
  np.testing.assert_array_equal(plots.pareto_front(points), [0, 4, 1])
  # Fewer bytes and more accuracy are better: (0.5, 0.85) is now best in x.
  np.testing.assert_array_equal(
      plots.pareto_front(points, maximize=(False, True)), [3, 0, 4])
  assert plots.pareto_front(np.zeros((0, 2))).shape == (0,)


@pytest.mark.parametrize("points,maximize,match", [
    (np.zeros((3, 3)), (True, True), "points"),
    (np.zeros(4), (True, True), "points"),
    (np.zeros((3, 2)), (True,), "maximize"),
    (np.zeros((3, 2)), ("yes", True), "maximize"),
])
def test_pareto_front_bad_input(points, maximize, match):
  with pytest.raises(ValueError, match=match):
    plots.pareto_front(points, maximize)


def _png_size(path):
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  image = matplotlib.image.imread(path)
  return image.shape[1], image.shape[0]


def _write_metrics(workdir, rows):
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def _synthetic_run(workdir, scalars=True):
  rows = []
  for step in range(10, 110, 10):
    rows.append({"step": step, "train/loss": 2.0 / step ** 0.5,
                 "train/accuracy": 1 - 1 / step, "time/step_ms": 1.0,
                 "sparsity/fc1/kernel": min(step / 100, 0.9),
                 "sparsity/head/kernel": min(step / 200, 0.5)})
    if scalars:
      rows[-1]["threshold/fc1/kernel"] = step / 1000
    if step % 50 == 0:
      rows.append({"step": step, "eval/loss": 0.5, "eval/accuracy": 0.9})
  _write_metrics(workdir, rows)


def _params(rng, sparsity=0.0):
  params = {"fc1": {"kernel": rng.normal(size=(20, 8)).astype(np.float32),
                    "bias": np.ones(8, np.float32)},
            "head": {"kernel": rng.normal(size=(8, 3)).astype(np.float32),
                     "bias": np.zeros(3, np.float32)}}
  for layer in params.values():
    k = layer["kernel"]
    k[rng.random(k.shape) < sparsity] = 0.0
  return params


def test_plot_run_writes_every_png(tmp_path):
  rng = np.random.default_rng(0)
  _synthetic_run(tmp_path)
  plots.save_weights(str(tmp_path), _params(rng), "before")
  plots.save_weights(str(tmp_path), _params(rng, 0.8), "after")
  paths = plots.plot_run(str(tmp_path))
  names = ["sparsity.png", "training.png", "histograms.png", "scales.png"]
  assert paths == [str(tmp_path / n) for n in names]
  for path in paths:
    assert os.path.getsize(path) > 5000
  # Figure sizes in inches at 100 dpi.
  assert _png_size(paths[0]) == (700, 400)
  assert _png_size(paths[1]) == (1100, 400)
  assert _png_size(paths[2]) == (900, 330)  # two layers, one row
  assert _png_size(paths[3]) == (600, 400)


def test_plot_run_skips_what_is_missing(tmp_path):
  _synthetic_run(tmp_path, scalars=False)
  paths = plots.plot_run(str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ["sparsity.png",
                                                  "training.png"]
  assert not (tmp_path / "histograms.png").exists()
  with pytest.raises(ValueError, match="metrics.jsonl"):
    plots.plot_run(str(tmp_path / "nowhere"))


def test_read_metrics_keeps_the_last_value_of_a_repeated_step(tmp_path):
  # A run resumed from step 20 logs step 30 again.
  _write_metrics(tmp_path, [
      {"step": 10, "train/loss": 3.0}, {"step": 20, "train/loss": 2.0},
      {"step": 30, "train/loss": 1.5}, {"step": 30, "train/loss": 1.25},
      {"step": 40, "train/loss": 1.0, "eval/accuracy": 0.5}])
  metrics = plots.read_metrics(str(tmp_path))
  steps, values = metrics["train/loss"]
  np.testing.assert_array_equal(steps, [10, 20, 30, 40])
  np.testing.assert_array_equal(values, [3.0, 2.0, 1.25, 1.0])
  np.testing.assert_array_equal(metrics["eval/accuracy"][0], [40])


def test_save_weights_keeps_only_kernels(tmp_path):
  params = _params(np.random.default_rng(1), 0.5)
  path = plots.save_weights(str(tmp_path), params, "after")
  assert path == str(tmp_path / "weights_after.npz")
  loaded = plots.load_weights(path)
  assert sorted(loaded) == ["fc1/kernel", "head/kernel"]
  np.testing.assert_array_equal(loaded["fc1/kernel"], params["fc1"]["kernel"])
  np.testing.assert_array_equal(loaded["head/kernel"],
                                params["head"]["kernel"])
  with pytest.raises(ValueError, match="name"):
    plots.save_weights(str(tmp_path), params, "../x")
  with pytest.raises(ValueError, match="where"):
    plots.save_weights(str(tmp_path), params, "x", where="nothing_here")


def test_histogram_counts_zeros_apart(tmp_path):
  del tmp_path
  w = np.array([0.0, 0.0, 0.0, -0.9, -0.05, 0.05, 0.3, 0.31, 1.0])
  bins = np.linspace(-1.0, 1.0, 5)  # [-1,-.5) [-.5,0) [0,.5) [.5,1]
  fig = plots._figure(4, 3)  # pylint: disable=protected-access
  ax = fig.add_subplot()
  plots._histogram(ax, w, bins, "tab:blue", "after")  # pylint: disable=protected-access
  stairs = [a for a in ax.patches if hasattr(a, "get_data")][0]
  # Nonzero weights only, counted by hand: -0.9 | -0.05 | 0.05 0.3 0.31 | 1.0
  np.testing.assert_array_equal(stairs.get_data().values, [1, 1, 3, 1])
  bars = ax.containers[0]
  assert [b.get_height() for b in bars] == [3]
  assert bars[0].get_x() + bars[0].get_width() / 2 == 0.0


def test_pareto_plot_returns_the_front(tmp_path):
  rows = [
      {"name": "a", "ratio": 5.0, "acc": 0.95, "bytes": 1000},
      {"name": "b", "ratio": 10.0, "acc": 0.94, "bytes": 600},
      {"name": "c", "ratio": 8.0, "acc": 0.93, "bytes": 500},
      {"name": "d", "ratio": 20.0, "acc": 0.90, "bytes": None},
      {"name": "e", "ratio": 4.0, "acc": 0.95, "bytes": 900},
  ]
  path = str(tmp_path / "p.png")
  front = plots.pareto(rows, "ratio", "acc", path, label="name")
  assert [r["name"] for r in front] == ["a", "b", "d"]
  assert _png_size(path) == (700, 450)
  by_bytes = plots.pareto(rows, "bytes", "acc", str(tmp_path / "b.png"),
                          label=lambda r: r["name"].upper(),
                          maximize=(False, True))
  assert [r["name"] for r in by_bytes] == ["c", "b", "e"]
  with pytest.raises(ValueError, match="none has numbers"):
    plots.pareto(rows, "ratio", "missing", path)
