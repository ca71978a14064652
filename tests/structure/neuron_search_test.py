"""Binary-search neuron pruning against linear scans and numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsify import data
from sparsify import models
from sparsify.structure import neuron_search
from sparsify.structure import surgery

HIDDEN = (5, 9, 7)
FREE = {"fc1": 2, "fc2": 3, "fc3": 1}  # removals that cost nothing
COST = {"fc1": 0.05, "fc2": 0.02, "fc3": 0.03}  # per removal beyond FREE


def _toy_params(seed=0, hidden=HIDDEN, inputs=6):
  rng = np.random.default_rng(seed)
  widths = (inputs,) + tuple(hidden) + (3,)
  names = [f"fc{i + 1}" for i in range(len(hidden))] + ["head"]
  return {n: {"kernel": rng.normal(size=(a, b)).astype(np.float32),
              "bias": rng.normal(size=(b,)).astype(np.float32)}
          for n, a, b in zip(names, widths[:-1], widths[1:])}


def _removed(params, name):
  """Neurons of a layer whose kernel column is entirely zero."""
  w = np.asarray(params[name]["kernel"])
  return int(np.sum(np.all(w == 0, axis=0)))


def _toy_accuracy(removed, top=1.0):
  """A monotone accuracy from the number of neurons removed per layer."""
  return top - sum(COST[n] * max(0, r - FREE[n]) ** 1.5
                   for n, r in removed.items())


class Counter:
  """The toy evaluate, recording which layers are pruned at each call."""

  def __init__(self, top=1.0, bonus=False):
    self.calls = []
    self.top = top
    self.bonus = bonus

  def __call__(self, params):
    removed = {n: _removed(params, n) for n in FREE}
    self.calls.append(removed)
    extra = float(params["bonus"]) if self.bonus else 0.0
    return _toy_accuracy(removed, self.top) + extra


def _linear_scan(order, threshold, min_keep=1, top=1.0, bonus_after=None):
  """Per layer, removes 0, 1, 2, ... neurons while accuracy >= threshold."""
  sizes = dict(zip(FREE, HIDDEN))
  removed = {n: 0 for n in FREE}
  bonus = 0.0
  for name in order:
    m = 0
    while m < sizes[name] - min_keep and _toy_accuracy(
        {**removed, name: m + 1}, top) + bonus >= threshold:
      m += 1
    removed[name] = m
    if bonus_after is not None:
      bonus = bonus_after
  return removed


@pytest.mark.parametrize("tolerance", [0.0, 0.03, 0.1, 0.25, 0.6, 5.0])
@pytest.mark.parametrize("min_keep", [1, 2])
def test_search_matches_linear_scan_with_log_many_evaluations(tolerance,
                                                             min_keep):
  params = _toy_params()
  spec = models.structure("mlp", hidden=HIDDEN)
  evaluate = Counter()
  result = neuron_search.binary_search_prune(
      params, evaluate, tolerance, spec=spec, min_keep=min_keep)
  expected = _linear_scan(list(FREE), 1.0 - tolerance, min_keep)
  assert result.counts == expected
  assert {n: _removed(result.params, n) for n in FREE} == expected
  assert result.kept == {n: N - expected[n] for n, N in zip(FREE, HIDDEN)}
  assert result.baseline == 1.0
  # One baseline call, then at most ceil(log2 N) + 1 per layer.
  assert evaluate.calls[0] == {n: 0 for n in FREE}
  assert len(evaluate.calls) == len(result.log)
  assert result.log[0] == (None, 0, 1.0, True)
  for name, n in zip(FREE, HIDDEN):
    steps = [s for s in result.log if s.unit == name]
    assert len(steps) <= math.ceil(math.log2(n)) + 1
    accepted = [s.mid for s in steps if s.accepted]
    assert result.counts[name] == max(accepted, default=0)
    assert all(s.accepted == (s.accuracy >= 1.0 - tolerance) for s in steps)
  for step, removed in zip(result.log[1:], evaluate.calls[1:]):
    assert removed[step.unit] == step.mid


def test_kept_neurons_are_the_highest_scoring_numpy_reference():
  params = _toy_params(seed=3)
  spec = models.structure("mlp", hidden=HIDDEN)
  result = neuron_search.binary_search_prune(
      params, Counter(), 0.2, spec=spec, norm="l2")
  rows = np.ones(6, bool)  # inputs of fc1 all alive
  for name in FREE:
    w = params[name]["kernel"] * rows[:, None]  # inputs from removed: zero
    s = np.sqrt(np.sum(w.astype(np.float64) ** 2, axis=0))
    k = result.counts[name]
    assert k > 0
    expected = np.ones(w.shape[1], bool)
    expected[np.argsort(s, kind="stable")[:k]] = False
    np.testing.assert_array_equal(result.keep[name], expected)
    rows = expected


@pytest.mark.parametrize("order,visits", [
    ("forward", ["fc1", "fc2", "fc3"]),
    ("backward", ["fc3", "fc2", "fc1"]),
    ("size", ["fc2", "fc3", "fc1"]),  # 9, 7, 5 neurons
])
def test_order_of_layers(order, visits):
  params = _toy_params()
  spec = models.structure("mlp", hidden=HIDDEN)
  result = neuron_search.binary_search_prune(
      params, Counter(), 0.1, spec=spec, order=order)
  units = [s.unit for s in result.log[1:]]
  assert [u for i, u in enumerate(units) if i == 0 or units[i - 1] != u] == (
      visits)
  assert result.counts == _linear_scan(visits, 0.9)


def test_layers_subset_leaves_others_whole():
  params = _toy_params()
  spec = models.structure("mlp", hidden=HIDDEN)
  result = neuron_search.binary_search_prune(
      params, Counter(), 0.1, spec=spec, layers=["fc3", "fc1"])
  assert {s.unit for s in result.log[1:]} == {"fc1", "fc3"}
  assert result.counts["fc2"] == 0 and result.keep["fc2"].all()
  assert result.counts == _linear_scan(["fc1", "fc3"], 0.9)  # spec order


def test_relative_tolerance_is_a_fraction_of_the_baseline():
  params = _toy_params()
  spec = models.structure("mlp", hidden=HIDDEN)
  rel = neuron_search.binary_search_prune(
      params, Counter(top=0.8), 0.25, spec=spec, relative=True)
  absolute = neuron_search.binary_search_prune(
      params, Counter(top=0.8), 0.25, spec=spec)
  assert rel.counts == _linear_scan(list(FREE), 0.8 * 0.75, top=0.8)
  assert absolute.counts == _linear_scan(list(FREE), 0.8 - 0.25, top=0.8)
  assert rel.counts != absolute.counts


def test_finetune_called_once_per_layer_with_current_keep():
  params = {**_toy_params(), "bonus": np.float32(0.0)}
  spec = models.structure("mlp", hidden=HIDDEN)
  seen = []

  def finetune(p, keep):
    seen.append(({n: k.copy() for n, k in keep.items()},
                 {n: _removed(p, n) for n in FREE}))
    # Raises accuracy by 0.1 and moves every weight, removed ones included.
    return {**jax.tree.map(lambda x: x + 1.0, p), "bonus": np.float32(0.1)}

  result = neuron_search.binary_search_prune(
      params, Counter(bonus=True), 0.1, spec=spec, order="backward",
      finetune=finetune)
  order = ["fc3", "fc2", "fc1"]
  assert len(seen) == 3
  for i, (keep, removed) in enumerate(seen):
    for j, name in enumerate(order):
      if j <= i:
        np.testing.assert_array_equal(keep[name], result.keep[name])
      else:
        assert keep[name].all()
      assert removed[name] == (result.counts[name] if j <= i else 0)
  # The baseline stays the unpruned 1.0: after the first layer, the bonus
  # lets later layers go down to 0.9 + 0.1 below the pruned accuracy.
  assert result.baseline == 1.0
  assert result.counts == _linear_scan(order, 0.9, bonus_after=0.1)
  assert result.counts != _linear_scan(order, 0.9)
  for name in FREE:
    w = np.asarray(result.params[name]["kernel"])
    k = result.keep[name]
    np.testing.assert_array_equal(w[:, ~k], 0.0)
    np.testing.assert_allclose(w[:, k], params[name]["kernel"][:, k] + 3.0,
                               rtol=1e-6)
  np.testing.assert_allclose(result.params["head"]["kernel"],
                             params["head"]["kernel"] + 3.0, rtol=1e-6)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_neuron_scores_dense_and_conv_numpy_reference(norm):
  rng = np.random.default_rng(1)
  stages = ((4, 6), (5,))
  params = {
      "block1_0": {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4))},
                   "bn": {"scale": rng.normal(size=4),
                          "bias": rng.normal(size=4)}},
      "block1_1": {"conv": {"kernel": rng.normal(size=(3, 3, 4, 6))},
                   "bn": {"scale": rng.normal(size=6),
                          "bias": rng.normal(size=6)}},
      "block2_0": {"conv": {"kernel": rng.normal(size=(3, 3, 6, 5))},
                   "bn": {"scale": rng.normal(size=5),
                          "bias": rng.normal(size=5)}},
      "head": {"kernel": rng.normal(size=(5, 3)), "bias": np.zeros(3)},
  }
  scores = neuron_search.neuron_scores(
      params, models.structure("vgg", stages=stages), norm)
  for b in ("block1_0", "block1_1", "block2_0"):
    w = params[b]["conv"]["kernel"]
    expected = [np.abs(w[..., j]).sum() if norm == "l1" else
                np.sqrt((w[..., j] ** 2).sum()) for j in range(w.shape[-1])]
    np.testing.assert_allclose(scores[b], expected, rtol=1e-12)
  # MLP: the kernel column only, the bias does not count.
  mlp = _toy_params()
  spec = models.structure("mlp", hidden=HIDDEN)
  s = neuron_search.neuron_scores(mlp, spec, norm)
  mlp["fc2"]["bias"] = mlp["fc2"]["bias"] * 100.0
  w = mlp["fc2"]["kernel"].astype(np.float64)
  ref = np.abs(w).sum(0) if norm == "l1" else np.sqrt((w ** 2).sum(0))
  np.testing.assert_allclose(s["fc2"], ref, rtol=1e-12)
  np.testing.assert_allclose(neuron_search.neuron_scores(mlp, spec, norm)[
      "fc2"], ref, rtol=1e-12)


def test_neuron_masks_by_hand_and_argsort_reference():
  masks = neuron_search.neuron_masks(
      {"a": np.array([1.0, 0.0, 1.0, 0.0, 2.0]), "b": np.array([3.0, 1.0])},
      {"a": 3})
  np.testing.assert_array_equal(masks["a"], [False, False, True, False, True])
  np.testing.assert_array_equal(masks["b"], [True, True])
  rng = np.random.default_rng(2)
  ties = rng.integers(0, 4, size=60).astype(float)  # many equal scores
  for count in (5, 17, 31):
    m = neuron_search.neuron_masks({"t": ties}, {"t": count})["t"]
    lowest = sorted(range(60), key=lambda i: (ties[i], i))[:count]
    assert set(np.flatnonzero(~m)) == set(lowest)
  s = rng.random(50)
  for count in (0, 1, 17, 49, 50):
    m = neuron_search.neuron_masks({"x": s}, {"x": count})["x"]
    assert m.sum() == 50 - count
    removed = set(np.argsort(s)[:count])
    assert set(np.flatnonzero(~m)) == removed
    if 0 < count < 50:
      assert s[~m].max() < s[m].min()


def test_apply_neuron_masks_numpy_reference():
  params = _toy_params(seed=4)
  spec = models.structure("mlp", hidden=HIDDEN)
  keep = {"fc2": np.array([1, 0, 1, 1, 0, 0, 1, 1, 1], bool)}
  out = neuron_search.apply_neuron_masks(params, spec, keep)
  w, b = params["fc2"]["kernel"].copy(), params["fc2"]["bias"].copy()
  w[:, [1, 4, 5]] = 0.0
  b[[1, 4, 5]] = 0.0
  np.testing.assert_array_equal(out["fc2"]["kernel"], w)
  np.testing.assert_array_equal(out["fc2"]["bias"], b)
  for name in ("fc1", "fc3", "head"):
    np.testing.assert_array_equal(out[name]["kernel"], params[name]["kernel"])
  assert out["fc2"]["kernel"].dtype == jnp.float32
  both = neuron_search.apply_neuron_masks(params, spec, keep, consumers=True)
  rows = params["fc3"]["kernel"].copy()
  rows[[1, 4, 5], :] = 0.0
  np.testing.assert_array_equal(both["fc3"]["kernel"], rows)
  jitted = jax.jit(
      lambda p, k: neuron_search.apply_neuron_masks(p, spec, k))
  np.testing.assert_array_equal(jitted(params, keep)["fc2"]["kernel"], w)


def _digits(n):
  ds = data.load_dataset("embedded_mnist")
  return next(data.eval_batches(ds.eval, batch_size=n, mean=ds.mean,
                                std=ds.std))["image"]


def _random_variables(model, x, seed=0):
  """Random variables shaped like ``model.init``'s (running variances > 0).

  Drawn with numpy from the shapes of `jax.eval_shape`, which compiles
  nothing: ``model.init`` of a conv net takes seconds on a loaded CPU.
  """
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if "var" in name:
      return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
    fan_in = math.prod(s.shape[:-1]) if len(s.shape) > 1 else 4
    return (rng.normal(size=s.shape) / math.sqrt(fan_in)).astype(s.dtype)

  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("name,kwargs", [
    ("mlp", {"hidden": (64, 32)}),
    ("vgg", {"stages": ((8, 8), (16,))}),
])
def test_slim_of_search_result_equals_masked_model(name, kwargs):
  x = _digits(128)
  model = models.get_model(name, **kwargs)
  variables = _random_variables(model, x[:1])
  rest = {k: v for k, v in variables.items() if k != "params"}
  apply = jax.jit(lambda p: model.apply({"params": p, **rest}, x))
  reference = np.argmax(apply(variables["params"]), axis=-1)

  def agreement(p):
    return float(np.mean(np.argmax(apply(p), axis=-1) == reference))

  spec = neuron_search.ungated_spec(models.structure(name, **kwargs),
                                    variables["params"])
  result = neuron_search.binary_search_prune(
      variables["params"], agreement, 0.15, spec=spec, order="size")
  assert result.baseline == 1.0
  assert sum(result.counts.values()) > 0
  assert agreement(result.params) >= 0.85
  slim_vars = surgery.slim({"params": result.params, **rest}, spec,
                           result.keep)
  slim_model = models.get_model(
      name, **models.slimmed_kwargs(name, kwargs, result.keep))
  np.testing.assert_allclose(slim_model.apply(slim_vars, x), apply(
      result.params), rtol=1e-5, atol=1e-5)
  assert (models.count_params(slim_vars["params"]) <
          models.count_params(variables["params"]))


@pytest.mark.parametrize("kwargs,match", [
    ({"order": "random"}, "order"),
    ({"tolerance": -0.1}, "tolerance"),
    ({"tolerance": float("nan")}, "tolerance"),
    ({"layers": ["fc9"]}, "fc9"),
    ({"layers": "fc1"}, "layers"),
    ({"norm": "l3"}, "norm"),
    ({"min_keep": 0}, "min_keep"),
    ({"min_keep": 6}, "fc1"),
])
def test_bad_options_raise(kwargs, match):
  args = {"tolerance": 0.1, **kwargs}
  with pytest.raises(ValueError, match=match):
    neuron_search.binary_search_prune(
        _toy_params(), Counter(), spec=models.structure("mlp", hidden=HIDDEN),
        **args)


def test_bad_masks_raise():
  params = _toy_params()
  spec = models.structure("mlp", hidden=HIDDEN)
  with pytest.raises(ValueError, match="fc7"):
    neuron_search.apply_neuron_masks(params, spec, {"fc7": np.ones(3, bool)})
  with pytest.raises(ValueError, match="shape"):
    neuron_search.apply_neuron_masks(params, spec, {"fc1": np.ones(4, bool)})
  with pytest.raises(ValueError, match="counts"):
    neuron_search.neuron_masks({"a": np.ones(3)}, {"a": 4})
  with pytest.raises(ValueError, match="unknown"):
    neuron_search.neuron_masks({"a": np.ones(3)}, {"b": 1})
  with pytest.raises(ValueError, match="kernel"):
    neuron_search.neuron_scores({"fc1": {"bias": np.ones(3)}},
                                models.structure("mlp", hidden=(3,)))
