"""Binary-search neuron pruning against linear scans and numpy references.

The models are written as users write them (`nn.Sequential`, Linen modules
with automatic names, the zoo's ResNet); their units come from
`sparsify.structure_of`.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpy_init
import pytest
import zoo

import sparsify
from sparsify import data

HIDDEN = (5, 9, 7)
INPUTS = 6
# nn.Sequential names its layers by position: Dense, relu, Dense, relu, ...
LAYERS = tuple(f"layers_{2 * i}" for i in range(len(HIDDEN)))
HEAD = f"layers_{2 * len(HIDDEN)}"
FREE = dict(zip(LAYERS, (2, 3, 1)))  # removals that cost nothing
COST = dict(zip(LAYERS, (0.05, 0.02, 0.03)))  # per removal beyond FREE


def _toy_net():
  layers = []
  for width in HIDDEN:
    layers += [nn.Dense(width), nn.relu]
  return nn.Sequential(layers + [nn.Dense(3)])


def _toy_variables(seed=0):
  """The toy MLP's variables, drawn by numpy under nn.Sequential's names."""
  rng = np.random.default_rng(seed)
  widths = (INPUTS,) + HIDDEN + (3,)
  return {"params": {
      n: {"kernel": rng.normal(size=(a, b)).astype(np.float32),
          "bias": rng.normal(size=(b,)).astype(np.float32)}
      for n, a, b in zip(LAYERS + (HEAD,), widths[:-1], widths[1:])}}


@functools.cache
def _toy_structure():
  x = jnp.ones((2, INPUTS))
  return sparsify.structure_of(_toy_net().apply, _toy_variables(), x)


def _removed(variables, name):
  """Neurons of a layer whose kernel column is entirely zero."""
  w = np.asarray(variables["params"][name]["kernel"])
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

  def __call__(self, variables):
    removed = {n: _removed(variables, n) for n in FREE}
    self.calls.append(removed)
    extra = float(variables["bonus"]) if self.bonus else 0.0
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


def test_the_toy_structure_is_the_hidden_layers():
  structure = _toy_structure()
  assert [(u.name, u.kind, u.size, u.exact) for u in structure] == [
      (n, "neuron", w, True) for n, w in zip(LAYERS, HIDDEN)]


@pytest.mark.parametrize("tolerance", [0.0, 0.03, 0.1, 0.25, 0.6, 5.0])
@pytest.mark.parametrize("min_keep", [1, 2])
def test_search_matches_linear_scan_with_log_many_evaluations(tolerance,
                                                             min_keep):
  variables = _toy_variables()
  evaluate = Counter()
  result = sparsify.binary_search_prune(
      variables, evaluate, tolerance, structure=_toy_structure(),
      min_keep=min_keep)
  expected = _linear_scan(list(FREE), 1.0 - tolerance, min_keep)
  assert result.counts == expected
  assert {n: _removed(result.variables, n) for n in FREE} == expected
  assert result.kept == {n: N - expected[n] for n, N in zip(FREE, HIDDEN)}
  assert result.baseline == 1.0
  # One baseline call, then at most ceil(log2(N - min_keep + 1)) per layer.
  assert evaluate.calls[0] == {n: 0 for n in FREE}
  assert len(evaluate.calls) == len(result.log)
  assert result.log[0] == (None, 0, 1.0, True)
  for name, n in zip(FREE, HIDDEN):
    steps = [s for s in result.log if s.unit == name]
    assert len(steps) <= math.ceil(math.log2(n - min_keep + 1))
    accepted = [s.mid for s in steps if s.accepted]
    assert result.counts[name] == max(accepted, default=0)
    assert all(s.accepted == (s.accuracy >= 1.0 - tolerance) for s in steps)
  for step, removed in zip(result.log[1:], evaluate.calls[1:]):
    assert removed[step.unit] == step.mid
  # The input variables are left alone.
  assert all(_removed(variables, n) == 0 for n in FREE)


def test_kept_neurons_are_the_highest_scoring_numpy_reference():
  variables = _toy_variables(seed=3)
  result = sparsify.binary_search_prune(
      variables, Counter(), 0.2, structure=_toy_structure(), norm="l2")
  rows = np.ones(INPUTS, bool)  # inputs of the first layer all alive
  for name in FREE:
    w = variables["params"][name]["kernel"] * rows[:, None]  # removed: 0
    s = np.sqrt(np.sum(w.astype(np.float64) ** 2, axis=0))
    k = result.counts[name]
    assert k > 0
    expected = np.ones(w.shape[1], bool)
    expected[np.argsort(s, kind="stable")[:k]] = False
    np.testing.assert_array_equal(result.keep[name], expected)
    rows = expected


@pytest.mark.parametrize("order,visits", [
    ("forward", list(LAYERS)),
    ("backward", list(LAYERS[::-1])),
    ("size", [LAYERS[1], LAYERS[2], LAYERS[0]]),  # 9, 7, 5 neurons
])
def test_order_of_layers(order, visits):
  result = sparsify.binary_search_prune(
      _toy_variables(), Counter(), 0.1, structure=_toy_structure(),
      order=order)
  units = [s.unit for s in result.log[1:]]
  assert [u for i, u in enumerate(units) if i == 0 or units[i - 1] != u] == (
      visits)
  assert result.counts == _linear_scan(visits, 0.9)


def test_layers_subset_leaves_others_whole():
  variables = _toy_variables()
  result = sparsify.binary_search_prune(
      variables, Counter(), 0.1, structure=_toy_structure(),
      layers=[LAYERS[2], LAYERS[0]])
  assert {s.unit for s in result.log[1:]} == {LAYERS[0], LAYERS[2]}
  # Visited in the structure's order, not the order given.
  assert result.log[1].unit == LAYERS[0]
  expected = _linear_scan([LAYERS[0], LAYERS[2]], 0.9)
  assert {n: result.counts[n] for n in (LAYERS[0], LAYERS[2])} == {
      n: expected[n] for n in (LAYERS[0], LAYERS[2])}
  assert _removed(result.variables, LAYERS[1]) == 0
  np.testing.assert_array_equal(
      result.variables["params"][LAYERS[1]]["kernel"],
      variables["params"][LAYERS[1]]["kernel"])


def test_layers_subset_reports_the_others_whole():
  result = sparsify.binary_search_prune(
      _toy_variables(), Counter(), 0.1, structure=_toy_structure(),
      layers=[LAYERS[2], LAYERS[0]])
  assert result.counts[LAYERS[1]] == 0 and result.keep[LAYERS[1]].all()
  assert result.counts == _linear_scan([LAYERS[0], LAYERS[2]], 0.9)


def test_relative_tolerance_is_a_fraction_of_the_baseline():
  structure = _toy_structure()
  rel = sparsify.binary_search_prune(
      _toy_variables(), Counter(top=0.8), 0.25, structure=structure,
      relative=True)
  absolute = sparsify.binary_search_prune(
      _toy_variables(), Counter(top=0.8), 0.25, structure=structure)
  assert rel.counts == _linear_scan(list(FREE), 0.8 * 0.75, top=0.8)
  assert absolute.counts == _linear_scan(list(FREE), 0.8 - 0.25, top=0.8)
  assert rel.counts != absolute.counts
  assert rel.baseline == pytest.approx(0.8)


def test_finetune_called_once_per_layer_with_current_keep():
  variables = {**_toy_variables(), "bonus": np.float32(0.0)}
  seen = []

  def finetune(v, keep):
    seen.append(({n: k.copy() for n, k in keep.items()},
                 {n: _removed(v, n) for n in FREE}))
    # Raises accuracy by 0.1 and moves every weight, removed ones included.
    return {**jax.tree.map(lambda x: x + 1.0, v), "bonus": np.float32(0.1)}

  result = sparsify.binary_search_prune(
      variables, Counter(bonus=True), 0.1, structure=_toy_structure(),
      order="backward", finetune=finetune)
  order = list(LAYERS[::-1])
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
  params, before = result.variables["params"], variables["params"]
  for name in FREE:
    w, b = np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])
    k = result.keep[name]
    np.testing.assert_array_equal(w[:, ~k], 0.0)
    np.testing.assert_array_equal(b[~k], 0.0)
    np.testing.assert_allclose(w[:, k], before[name]["kernel"][:, k] + 3.0,
                               rtol=1e-6)
  np.testing.assert_allclose(params[HEAD]["kernel"],
                             before[HEAD]["kernel"] + 3.0, rtol=1e-6)


class _Cnn(nn.Module):
  """conv-BN-relu, pool, conv-BN-relu, global pool, Dense; automatic names."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    for width in (6, 8):
      x = nn.Conv(width, (3, 3))(x)
      x = nn.BatchNorm(use_running_average=not train)(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), (2, 2))
    return nn.Dense(10)(x.mean(axis=(1, 2)))


class _Grouped(nn.Module):
  """A 1x1 conv read by a 3x3 conv of 4 groups."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (1, 1))(x))
    x = nn.relu(nn.Conv(8, (3, 3), feature_group_count=4)(x))
    return nn.Dense(3)(x.mean(axis=(1, 2)))


def _norm(w, axes, norm):
  """Per-slice l1 or l2 norm of ``w`` over ``axes``, in float64."""
  w = np.asarray(w, np.float64)
  if norm == "l1":
    return np.abs(w).sum(axis=axes)
  return np.sqrt((w ** 2).sum(axis=axes))


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_neuron_scores_dense_and_conv_numpy_reference(norm):
  x = np.ones((2, 8, 8, 3), np.float32)
  cnn = _Cnn()
  variables = numpy_init.init(cnn, x, seed=1)
  apply = functools.partial(cnn.apply, train=False)
  structure = sparsify.structure_of(apply, variables, x)
  assert [(u.name, u.kind, u.size) for u in structure] == [
      ("Conv_0", "channel", 6), ("Conv_1", "channel", 8)]
  scores = sparsify.neuron_scores(variables, structure, norm)
  for name in ("Conv_0", "Conv_1"):
    w = variables["params"][name]["kernel"]  # HWIO: a filter is [..., j]
    expected = [_norm(w[..., j], None, norm) for j in range(w.shape[-1])]
    np.testing.assert_allclose(scores[name], expected, rtol=1e-12)
  # Dense: the kernel column only; neither the bias nor BatchNorm counts.
  variables["params"]["BatchNorm_0"]["scale"] *= 100.0
  np.testing.assert_allclose(
      sparsify.neuron_scores(variables, structure, norm)["Conv_0"],
      scores["Conv_0"], rtol=1e-12)
  mlp = _toy_variables()
  s = sparsify.neuron_scores(mlp, _toy_structure(), norm)
  w = mlp["params"][LAYERS[1]]["kernel"]
  ref = _norm(w, 0, norm)
  np.testing.assert_allclose(s[LAYERS[1]], ref, rtol=1e-12)
  mlp["params"][LAYERS[1]]["bias"] = mlp["params"][LAYERS[1]]["bias"] * 100
  np.testing.assert_allclose(
      sparsify.neuron_scores(mlp, _toy_structure(), norm)[LAYERS[1]], ref,
      rtol=1e-12)
  # Some of the units only.
  assert list(sparsify.neuron_scores(mlp, _toy_structure()[1:], norm)) == [
      LAYERS[1], LAYERS[2]]


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_neuron_scores_of_a_group_sum_its_channels(norm):
  x = np.ones((2, 6, 6, 3), np.float32)
  net = _Grouped()
  variables = numpy_init.init(net, x, seed=2)
  structure = sparsify.structure_of(net.apply, variables, x)
  groups = [u for u in structure if u.kind == "group"]
  assert [u.size for u in groups] == [4]
  scores = sparsify.neuron_scores(variables, groups, norm)[groups[0].name]
  # Group j is channels 2j, 2j+1 of the grouped conv, which read channels
  # 2j, 2j+1 of the 1x1 conv and nothing else: removing the group removes
  # those filters of both kernels.
  first = np.asarray(variables["params"]["Conv_0"]["kernel"], np.float64)
  second = np.asarray(variables["params"]["Conv_1"]["kernel"], np.float64)
  for j in range(4):
    both = np.concatenate([first[..., 2 * j:2 * j + 2].ravel(),
                           second[..., 2 * j:2 * j + 2].ravel()])
    np.testing.assert_allclose(scores[j], _norm(both, None, norm),
                               rtol=1e-12)


def test_neuron_masks_by_hand_and_argsort_reference():
  masks = sparsify.neuron_masks(
      {"a": np.array([1.0, 0.0, 1.0, 0.0, 2.0]), "b": np.array([3.0, 1.0])},
      {"a": 3})
  np.testing.assert_array_equal(masks["a"], [False, False, True, False, True])
  np.testing.assert_array_equal(masks["b"], [True, True])
  rng = np.random.default_rng(2)
  ties = rng.integers(0, 4, size=60).astype(float)  # many equal scores
  for count in (5, 17, 31):
    m = sparsify.neuron_masks({"t": ties}, {"t": count})["t"]
    lowest = sorted(range(60), key=lambda i: (ties[i], i))[:count]
    assert set(np.flatnonzero(~m)) == set(lowest)
  s = rng.random(50)
  for count in (0, 1, 17, 49, 50):
    m = sparsify.neuron_masks({"x": s}, {"x": count})["x"]
    assert m.sum() == 50 - count
    removed = set(np.argsort(s)[:count])
    assert set(np.flatnonzero(~m)) == removed
    if 0 < count < 50:
      assert s[~m].max() < s[m].min()


def test_apply_neuron_masks_numpy_reference():
  variables = _toy_variables(seed=4)
  params = variables["params"]
  name, after = LAYERS[1], LAYERS[2]
  keep = {name: np.array([1, 0, 1, 1, 0, 0, 1, 1, 1], bool)}
  out = sparsify.apply_neuron_masks(variables, _toy_structure(), keep)
  w, b = params[name]["kernel"].copy(), params[name]["bias"].copy()
  w[:, [1, 4, 5]] = 0.0
  b[[1, 4, 5]] = 0.0
  np.testing.assert_array_equal(out["params"][name]["kernel"], w)
  np.testing.assert_array_equal(out["params"][name]["bias"], b)
  for other in (LAYERS[0], after, HEAD):
    np.testing.assert_array_equal(out["params"][other]["kernel"],
                                  params[other]["kernel"])
  assert out["params"][name]["kernel"].dtype == np.float32
  assert jax.tree.structure(out) == jax.tree.structure(variables)
  both = sparsify.apply_neuron_masks(variables, _toy_structure(), keep,
                                     consumers=True)
  rows = params[after]["kernel"].copy()
  rows[[1, 4, 5], :] = 0.0
  np.testing.assert_array_equal(both["params"][after]["kernel"], rows)
  # The inputs are not modified, and the function is `sparsify.mask`.
  np.testing.assert_array_equal(params[name]["kernel"],
                                _toy_variables(seed=4)["params"][name][
                                    "kernel"])
  np.testing.assert_array_equal(
      sparsify.mask(variables, _toy_structure(), keep)["params"][name][
          "kernel"], w)


def test_batchnorm_running_statistics_are_not_masked():
  x = np.ones((2, 8, 8, 3), np.float32)
  cnn = _Cnn()
  variables = numpy_init.init(cnn, x, seed=5)
  structure = sparsify.structure_of(
      functools.partial(cnn.apply, train=False), variables, x)
  keep = {"Conv_0": np.array([1, 0, 1, 1, 1, 0], bool)}
  out = sparsify.apply_neuron_masks(variables, structure, keep)
  bn = variables["params"]["BatchNorm_0"]
  for leaf in ("scale", "bias"):
    expected = bn[leaf].copy()
    expected[[1, 5]] = 0.0
    np.testing.assert_array_equal(out["params"]["BatchNorm_0"][leaf],
                                  expected)
  for leaf in ("mean", "var"):
    np.testing.assert_array_equal(out["batch_stats"]["BatchNorm_0"][leaf],
                                  variables["batch_stats"]["BatchNorm_0"][
                                      leaf])


def _digits(n):
  ds = data.load_dataset("embedded_mnist")
  return next(data.eval_batches(ds.eval, batch_size=n, mean=ds.mean,
                                std=ds.std))["image"]


def _agreement(apply, x):
  """``variables -> fraction of x whose argmax agrees with the first call``."""
  apply = jax.jit(apply)
  reference = []

  def evaluate(variables):
    predicted = np.argmax(apply(variables, x), axis=-1)
    if not reference:
      reference.append(predicted)
    return float(np.mean(predicted == reference[0]))

  return evaluate


def _sequential_mlp():
  net = nn.Sequential([lambda x: x.reshape((x.shape[0], -1)), nn.Dense(32),
                       nn.relu, nn.Dense(16), nn.relu, nn.Dense(10)])
  return net.apply, net


def _cnn():
  cnn = _Cnn()
  return functools.partial(cnn.apply, train=False), cnn


@pytest.mark.parametrize("make", [_sequential_mlp, _cnn],
                         ids=["sequential_mlp", "cnn_batchnorm"])
def test_slim_model_of_search_result_equals_masked_model(make):
  x = np.asarray(_digits(128))
  apply_fn, module = make()
  variables = numpy_init.init(module, x[:1])
  structure = sparsify.structure_of(apply_fn, variables, x[:1])
  evaluate = _agreement(apply_fn, x)
  result = sparsify.binary_search_prune(variables, evaluate, 0.15,
                                        structure=structure, order="size")
  assert result.baseline == 1.0
  assert sum(result.counts.values()) > 0
  assert evaluate(result.variables) >= 0.85
  slim_apply, small = sparsify.slim_model(apply_fn, result.variables,
                                          result.keep, x[:1])
  np.testing.assert_allclose(slim_apply(small, x),
                             apply_fn(result.variables, x),
                             rtol=1e-5, atol=1e-5)
  # Each unit's kernel lost the neurons the search removed.
  for unit in structure:
    kernel = unit.producers()[0]
    module_path = kernel.path.split("/")[1:-1]
    leaf = small["params"]
    for part in module_path + ["kernel"]:
      leaf = leaf[part]
    assert leaf.shape[kernel.axis] == result.kept[unit.name]
  assert (sum(np.size(v) for v in jax.tree.leaves(small)) <
          sum(np.size(v) for v in jax.tree.leaves(variables)))


def test_slim_model_of_a_zoo_resnet_search_equals_masked_model():
  case = zoo.CASES["resnet18"]
  apply_fn = functools.partial(case.build().apply, **case.apply_kwargs)
  variables = zoo.variables(case, seed=0)
  example = case.example()
  structure = sparsify.structure_of(apply_fn, variables, example)
  x = np.random.default_rng(3).standard_normal(
      (64,) + example.shape[1:]).astype(np.float32)
  evaluate = _agreement(apply_fn, x)
  result = sparsify.binary_search_prune(variables, evaluate, 0.2,
                                        structure=structure)
  searched = {s.unit for s in result.log[1:]}
  # By default residual streams are not searched, the blocks' channels are.
  assert searched == {u.name for u in structure
                      if u.exact and u.kind != "stream"}
  assert searched and sum(result.counts.values()) > 0
  slim_apply, small = sparsify.slim_model(apply_fn, result.variables,
                                          result.keep, example)
  np.testing.assert_allclose(slim_apply(small, x),
                             apply_fn(result.variables, x),
                             rtol=1e-5, atol=1e-5)
  assert (sum(np.size(v) for v in jax.tree.leaves(small)) <
          sum(np.size(v) for v in jax.tree.leaves(variables)))


@pytest.mark.parametrize("kwargs,match", [
    ({"order": "random"}, "order"),
    ({"tolerance": -0.1}, "tolerance"),
    ({"tolerance": float("nan")}, "tolerance"),
    ({"tolerance": "a lot"}, "tolerance"),
    ({"layers": ["fc9"]}, "fc9"),
    ({"layers": LAYERS[0]}, "layers"),
    ({"norm": "l3"}, "norm"),
    ({"min_keep": 0}, "min_keep"),
    ({"min_keep": 6}, LAYERS[0]),
    ({"finetune": 3}, "finetune"),
])
def test_bad_options_raise(kwargs, match):
  args = {"tolerance": 0.1, **kwargs}
  evaluate = Counter()
  with pytest.raises(ValueError, match=match):
    sparsify.binary_search_prune(_toy_variables(), evaluate,
                                 structure=_toy_structure(), **args)
  assert not evaluate.calls  # raised before evaluating anything


def test_bad_masks_raise():
  variables = _toy_variables()
  structure = _toy_structure()
  with pytest.raises(ValueError, match="fc7"):
    sparsify.apply_neuron_masks(variables, structure,
                                {"fc7": np.ones(3, bool)})
  with pytest.raises(ValueError, match="shape"):
    sparsify.apply_neuron_masks(variables, structure,
                                {LAYERS[0]: np.ones(4, bool)})
  with pytest.raises(ValueError, match="counts"):
    sparsify.neuron_masks({"a": np.ones(3)}, {"a": 4})
  with pytest.raises(ValueError, match="unknown"):
    sparsify.neuron_masks({"a": np.ones(3)}, {"b": 1})
  with pytest.raises(ValueError, match="kernel"):
    sparsify.neuron_scores({"params": {LAYERS[0]: {"bias": np.ones(5)}}},
                           structure[:1])
  with pytest.raises(ValueError, match="norm"):
    sparsify.neuron_scores(variables, structure, "l0")
