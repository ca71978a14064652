"""The contract every transform of sparsify satisfies, from one case table.

Every factory of the flat API that returns an `optax.GradientTransformation`
has at least one entry in `CASES` (a test fails otherwise), and every entry
goes through the same checks, as optax's shared optimizer tests do: it
compiles under jit and keeps its state's shapes and dtypes across steps,
chains with an optimizer and changes the result, works under `optax.masked`,
under `optax.inject_hyperparams` with every numeric hyper-parameter traced
(equal to the plain transform), with every numeric hyper-parameter given as a
schedule (equal again), inside `optax.MultiSteps` (equal to the plain
transform on the mean gradients), keeps bfloat16 parameters and updates in
bfloat16, gives under `jax.vmap` over initial parameters (and seeds) what a
Python loop gives, needs ``params``, and runs with flax's
`TrainState.apply_gradients` and `nnx.Optimizer.update` with no extra call
(the checks of how a transform is driven, MultiSteps, vmap, TrainState and
nnx, take one case per factory).
The masking transforms also keep pruned weights at exactly zero and reach
their target sparsity after any optimizer.
"""

import functools
import inspect
import re
from typing import Any, Callable, NamedTuple

from flax import nnx
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsify


class Case(NamedTuple):
  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict[str, Any]
  # Where it goes: 'after' the optimizer, 'before' it (a penalty), or
  # 'alone' (it is the whole optimizer).
  place: str
  masks: bool = False  # holds its masks in a `MaskState`
  sparsity: float | None = None  # reached by every selected kernel
  zeroes: bool = False  # drives weights or whole units to exactly zero
  static: tuple[str, ...] = ()  # structural or callable: static when injected
  reads_params: bool = True  # False: a function of the updates alone


def _keep_positive(params):
  return jax.tree.map(lambda w: w >= 0, params)


LR = 0.05
STEPS = 12
CASES = {
    "gmp": Case(sparsify.gradual_magnitude_pruning,
                dict(sparsity=0.8, begin_step=2, end_step=8, update_every=3),
                "after", masks=True, sparsity=0.8),
    "gmp_global": Case(sparsify.gradual_magnitude_pruning,
                       dict(sparsity=0.7, begin_step=0, end_step=6,
                            allocation="global"), "after", masks=True),
    "one_shot": Case(sparsify.magnitude_pruning, dict(sparsity=0.6, step=4),
                     "after", masks=True, sparsity=0.6),
    "random": Case(sparsify.random_sparsity, dict(sparsity=0.75, seed=1),
                   "after", masks=True, sparsity=0.75),
    "random_pruning": Case(sparsify.random_pruning,
                           dict(sparsity=0.7, step=4, seed=2), "after",
                           masks=True, sparsity=0.7),
    "random_erk": Case(sparsify.random_sparsity,
                       dict(sparsity=0.75, allocation="erk"), "after",
                       masks=True),
    "dat_clamp": Case(sparsify.dynamic_adaptive_threshold,
                      dict(c=2.0, begin_step=0, end_step=8, update_every=2,
                           target_sparsity=0.9), "after", masks=True,
                      sparsity=0.9),
    "dat_solve": Case(sparsify.dynamic_adaptive_threshold,
                      dict(c=0.5, begin_step=0, end_step=8, update_every=2,
                           target_sparsity=0.85, target_mode="solve"),
                      "after", masks=True, sparsity=0.85),
    "dat_global": Case(sparsify.dynamic_adaptive_threshold,
                       dict(c=1.0, begin_step=0, end_step=8, update_every=2,
                            target_sparsity=0.8, target_mode="global"),
                       "after", masks=True),
    "dat_recovery": Case(sparsify.dynamic_adaptive_threshold,
                         dict(c=1.0, begin_step=0, end_step=8, update_every=2,
                              recovery=True), "after", masks=True),
    "mask_updates": Case(sparsify.mask_updates,
                         dict(init_masks=_keep_positive), "after", masks=True,
                         static=("init_masks",)),
    "apg": Case(sparsify.accelerated_proximal_gradient,
                dict(learning_rate=0.1, strength=5.0), "alone", zeroes=True),
    "ista": Case(sparsify.proximal_sgd, dict(learning_rate=0.1, strength=5.0),
                 "alone", zeroes=True),
    "group_lasso_prox": Case(sparsify.group_lasso_prox,
                             dict(learning_rate=0.1, strength=5.0), "after",
                             zeroes=True, static=("axis",)),
    "sss": Case(sparsify.sparse_structure_selection,
                dict(learning_rate=0.1, strength=5.0), "alone", zeroes=True),
    "sss_optimizer": Case(sparsify.sss_optimizer,
                          dict(weights_tx=optax.sgd(LR),
                               scales_tx=sparsify.proximal_sgd(
                                   0.1, strength=5.0)), "alone", zeroes=True),
    "network_slimming": Case(sparsify.network_slimming, dict(strength=1e-3),
                             "before"),
    "binary_attractor": Case(sparsify.binary_attractor,
                             dict(strength=1e-2, alpha=0.5), "before"),
    "kcentre_attractor": Case(sparsify.kcentre_attractor,
                              dict(strength=1e-2, centres=3, refresh_every=2),
                              "before", static=("centres", "iterations")),
    "l1": Case(sparsify.l1, dict(strength=1e-2), "before"),
    "group_lasso": Case(sparsify.group_lasso, dict(strength=1e-2), "before",
                        static=("axis",)),
    "ternary_learned": Case(sparsify.ternary_constrained,
                            dict(sigma="learned", sigma_learning_rate=0.01),
                            "after"),
    "ternary_mean": Case(sparsify.ternary_constrained,
                         dict(sigma_learning_rate=0.01, threshold=0.3),
                         "after", zeroes=True),
    "gmp_2_4": Case(sparsify.gradual_magnitude_pruning,
                    dict(sparsity=0.5, begin_step=2, end_step=8,
                         update_every=3, pattern="2:4"), "after",
                    masks=True, sparsity=0.5),
    "gmp_blocks_global": Case(sparsify.gradual_magnitude_pruning,
                              dict(sparsity=0.7, begin_step=0, end_step=6,
                                   allocation="global", pattern=(2, 2)),
                              "after", masks=True),
    "one_shot_blocks": Case(sparsify.magnitude_pruning,
                            dict(sparsity=0.5, step=4, pattern=(4, 2)),
                            "after", masks=True, sparsity=0.5),
    "random_2_4": Case(sparsify.random_sparsity,
                       dict(sparsity=0.5, seed=1, pattern="2:4"), "after",
                       masks=True, sparsity=0.5),
    "random_pruning_blocks": Case(sparsify.random_pruning,
                                  dict(sparsity=0.5, step=4, seed=2,
                                       pattern=(4, 2)), "after", masks=True,
                                  sparsity=0.5),
    "magnitude_ste": Case(sparsify.magnitude_ste,
                          dict(sparsity=0.7, begin_step=2, update_every=3),
                          "after", masks=True, sparsity=0.7),
    "magnitude_ste_2_4": Case(sparsify.magnitude_ste,
                              dict(sparsity=0.5, pattern="2:4"), "after",
                              masks=True, sparsity=0.5),
    "random_ste": Case(sparsify.random_ste,
                       dict(sparsity=0.6, seed=3, update_every=2), "after",
                       masks=True, sparsity=0.6),
    "rigl": Case(sparsify.rigl, dict(optimizer=optax.sgd(LR), sparsity=0.8,
                 end_step=8, update_every=2), "alone", masks=True,
                 sparsity=0.8, zeroes=True),
    "rigl_erk": Case(sparsify.rigl, dict(optimizer=optax.sgd(LR),
                     sparsity=0.75, end_step=8, update_every=3,
                     allocation="erk", zeta=0.5), "alone", masks=True,
                     zeroes=True),
    "rigl_blocks": Case(sparsify.rigl, dict(optimizer=optax.sgd(LR),
                        sparsity=0.75, end_step=8, update_every=2,
                        pattern=(2, 2)), "alone", masks=True, sparsity=0.75,
                        zeroes=True),
    "set": Case(sparsify.sparse_evolutionary_training,
                dict(optimizer=optax.sgd(LR), sparsity=0.75, end_step=8,
                     update_every=2, seed=1), "alone", masks=True,
                sparsity=0.75, zeroes=True),
    "snip": Case(sparsify.snip, dict(optimizer=optax.sgd(LR), sparsity=0.7),
                 "alone", masks=True, sparsity=0.7, zeroes=True),
    "snip_batches": Case(sparsify.snip, dict(optimizer=optax.sgd(LR),
                         sparsity=0.6, batches=3, allocation="global"),
                         "alone", masks=True, zeroes=True),
    "snip_2_4": Case(sparsify.snip, dict(optimizer=optax.sgd(LR),
                     sparsity=0.5, pattern="2:4"), "alone", masks=True,
                     sparsity=0.5, zeroes=True),
    "gradual_saliency": Case(sparsify.gradual_saliency_pruning,
                             dict(optimizer=optax.sgd(LR), sparsity=0.8,
                                  begin_step=2, end_step=8, update_every=3),
                             "alone", masks=True, sparsity=0.8, zeroes=True),
    # Fine-tuning a shared layer: fc1's weights in 4 groups move together.
    "tie_updates": Case(sparsify.tie_updates, dict(ties={
        "fc1/kernel": sparsify.quantize.shared_tie(sparsify.share_weights(
            jnp.asarray(np.random.default_rng(0).normal(size=(16, 24)),
                        jnp.float32), bits=2))}), "after", static=("ties",),
        reads_params=False),
}
NAMES = pytest.mark.parametrize("name", sorted(CASES))


def _one_per_factory():
  first = {}
  for name in sorted(CASES):
    first.setdefault(CASES[name].factory, name)
  return sorted(first.values())


# How a transform is driven (MultiSteps, TrainState, nnx.Optimizer) does not
# depend on which variant of its factory it is: one case per factory.
FACTORY_NAMES = pytest.mark.parametrize("name", _one_per_factory())
MASK_NAMES = pytest.mark.parametrize(
    "name", sorted(n for n, c in CASES.items() if c.masks))


def _params(seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return {"fc1": {"kernel": jnp.asarray(rng.normal(size=(16, 24)), dtype),
                  "bias": jnp.zeros(24, dtype)},
          "fc2": {"kernel": jnp.asarray(rng.normal(size=(24, 10)), dtype),
                  "bias": jnp.zeros(10, dtype)},
          "bn": {"scale": jnp.ones(24, dtype)}}  # a BatchNorm-like scale


def _grads(params, step):
  # Drawn outside the jitted step, which then compiles the transform only.
  rng = np.random.default_rng(step)
  return jax.tree.map(
      lambda x: (0.1 * rng.standard_normal(x.shape)).astype(x.dtype), params)


def _chain(case, tx, base=None):
  """``tx`` in its place next to the optimizer ``base``."""
  base = optax.sgd(LR) if base is None else base
  if case.place == "before":
    return optax.chain(tx, base)
  if case.place == "after":
    return optax.chain(base, tx)
  return tx


def _without(case):
  """The same chain with the transform left out."""
  return optax.identity() if case.place == "alone" else optax.sgd(LR)


def _build(case, **changes):
  return case.factory(**{**case.kwargs, **changes})


def _run(tx, params, steps=STEPS, grads=None, jit_init=False):
  """Jitted steps; checks that the state keeps its shapes and dtypes.

  ``init`` runs eagerly unless ``jit_init``: its operations are compiled
  once per process instead of once per chain (random bits take a second
  each on CPU).
  """
  state = (jax.jit(tx.init) if jit_init else tx.init)(params)
  shapes = jax.eval_shape(lambda: state)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  for i in range(steps):
    g = _grads(params, i) if grads is None else grads[i]
    new, state, updates = step(params, state, g)
    assert jax.eval_shape(lambda s=state: s) == shapes, "state changed"
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
      assert u.dtype == p.dtype, "an update changed dtype"
    params = new
  return params, state


def _counts(state):
  """Every ``count`` field of the NamedTuple states in ``state``."""
  found = []

  def visit(node):
    if hasattr(node, "_fields"):
      if "count" in node._fields:
        found.append(node.count)
      for child in node:
        visit(child)
    elif isinstance(node, (tuple, list)):
      for child in node:
        visit(child)
    elif isinstance(node, dict):
      for child in node.values():
        visit(child)

  visit(state)
  return found


def _numeric(case):
  """The numeric hyper-parameters of ``case``, with the values it uses."""
  bound = inspect.signature(case.factory).bind(**case.kwargs)
  bound.apply_defaults()
  return {k: v for k, v in bound.arguments.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)
          and k not in case.static}


def _check_masked(params, state, sparsity):
  masks = sparsify.find_masks(state)
  for layer in ("fc1", "fc2"):
    kernel = np.asarray(params[layer]["kernel"])
    mask = np.asarray(masks[layer]["kernel"])
    assert np.all(kernel[~mask] == 0.0)  # pruned weights are exactly zero
    if sparsity is not None:
      assert np.sum(~mask) == round(sparsity * kernel.size), layer
  for layer in ("fc1", "fc2"):  # biases are not selected by default
    assert isinstance(masks[layer]["bias"], optax.MaskedNode)


def _same(case, a, b, exact=None):
  """Equal bit for bit (``exact``: by default for the masking transforms,
  whose kept weights get the optimizer's update unchanged) or to rounding."""
  if case.masks if exact is None else exact:
    jax.tree.map(np.testing.assert_array_equal, a, b)
  else:
    jax.tree.map(lambda x, y: np.testing.assert_allclose(
        x, y, rtol=1e-6, atol=1e-7), a, b)


@functools.cache
def _plain(name):
  """The case's transform in its chain, run on the default parameters."""
  case = CASES[name]
  return _run(_chain(case, _build(case)), _params(), jit_init=True)


@functools.cache
def _plain_without(place):
  """The chain without the transform, for a transform placed at ``place``."""
  return _run(_without(Case(None, {}, place)), _params())[0]


def _masks_or_none(state):
  masks = sparsify.find_masks(state)
  return () if masks is None else masks


def _returns_transform(fn):
  annotation = inspect.signature(fn).return_annotation
  return inspect.isclass(annotation) and issubclass(
      annotation, optax.GradientTransformation)


def test_every_exported_factory_has_a_case():
  factories = {name for name in sparsify.__all__
               if inspect.isfunction(getattr(sparsify, name))
               and _returns_transform(getattr(sparsify, name))}
  assert {"gradual_magnitude_pruning", "mask_updates", "ternary_constrained",
          "sss_optimizer", "l1"} <= factories  # the detection works
  covered = {c.factory.__name__ for c in CASES.values()}
  assert factories - covered == set(), "exported factories without a case"
  assert covered - factories == set(), "cases of factories not exported"


@NAMES
def test_static_arguments_are_documented_static(name):
  case = CASES[name]
  doc = inspect.getdoc(case.factory)
  args = doc[doc.index("Args:"):doc.index("Returns:")]
  for arg in case.static:
    entry = re.search(rf"^  {arg}: (.*?)(?=^  \w+:|\Z)", args,
                      re.M | re.S)
    assert entry and "static" in entry.group(1), (name, arg)


@NAMES
def test_jits_chains_keeps_state_and_changes_the_result(name):
  case = CASES[name]
  params, state = _plain(name)
  for count in _counts(state):
    assert count.dtype == jnp.int32
  without = _plain_without(case.place)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), params,
                         without)
  assert any(jax.tree.leaves(changed))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
  zeros = sum(int(np.sum(np.asarray(x) == 0)) for x in jax.tree.leaves(params))
  zeros_without = sum(int(np.sum(np.asarray(x) == 0))
                      for x in jax.tree.leaves(without))
  biases_init_zero = 24 + 10
  if case.zeroes:
    assert zeros > zeros_without  # exact zeros, not just small values
    if case.factory in (sparsify.sparse_structure_selection,
                        sparsify.sss_optimizer):
      # SGD trains the biases; the scales (BatchNorm here) reach zero.
      assert np.any(np.asarray(params["bn"]["scale"]) == 0)
    else:
      assert zeros > biases_init_zero
  if name == "network_slimming":  # only the scales feel the L1 term
    assert changed["bn"]["scale"] and not changed["fc1"]["kernel"]
  if case.masks:
    _check_masked(params, state, case.sparsity)


@MASK_NAMES
@pytest.mark.parametrize("opt", ["momentum", "adamw"])
def test_chains_after_any_optimizer_and_reaches_target(name, opt):
  case = CASES[name]
  base = {"momentum": optax.sgd(LR, momentum=0.9),
          "adamw": optax.adamw(0.01, weight_decay=0.1)}[opt]
  params, state = _run(_chain(case, _build(case), base), _params())
  _check_masked(params, state, case.sparsity)


@NAMES
def test_works_under_optax_masked(name):
  case = CASES[name]
  # Everything but fc2 (BatchNorm included, which network slimming selects).
  not_fc2 = lambda p: {k: jax.tree.map(lambda _: k != "fc2", v)  # pylint: disable=g-long-lambda
                       for k, v in p.items()}
  tx = _chain(case, optax.masked(_build(case), not_fc2))
  params, _ = _run(tx, _params())
  full = _plain_without(case.place)
  # fc2 does not see the transform: it moves exactly as without it.
  jax.tree.map(np.testing.assert_array_equal, params["fc2"], full["fc2"])
  if case.masks:
    assert np.all(np.asarray(params["fc2"]["kernel"]) != 0)
    if case.sparsity is not None:
      zeros = np.sum(np.asarray(params["fc1"]["kernel"]) == 0)
      assert zeros == round(case.sparsity * 16 * 24)


def _inject_state(state):
  found = [s for s in jax.tree.leaves(
      state, is_leaf=lambda x: hasattr(x, "hyperparams"))
           if hasattr(s, "hyperparams")]
  assert len(found) == 1
  return found[0]


@NAMES
def test_works_under_inject_hyperparams_with_every_number_traced(name):
  case = CASES[name]
  numeric = _numeric(case)
  injected = optax.inject_hyperparams(
      case.factory, static_args=case.static)(**case.kwargs)
  params, state = _run(_chain(case, injected), _params())
  # Every numeric hyper-parameter went into the state, so it was traced.
  assert set(_inject_state(state).hyperparams) == set(numeric)
  reference, ref_state = _plain(name)
  _same(case, params, reference)
  _same(case, _masks_or_none(state), _masks_or_none(ref_state))
  if case.masks:
    _check_masked(params, state, case.sparsity)


def _as_schedule(value):
  dtype = jnp.int32 if isinstance(value, int) else jnp.float32
  return lambda count: jnp.asarray(value, dtype) + 0 * count


@NAMES
def test_every_numeric_hyperparameter_accepts_a_schedule(name):
  case = CASES[name]
  numeric = {k: v for k, v in _numeric(case).items() if k != "seed"}
  scheduled = _build(case, **{k: _as_schedule(v) for k, v in numeric.items()})
  params, state = _run(_chain(case, scheduled), _params())
  reference, ref_state = _plain(name)
  _same(case, params, reference)
  _same(case, _masks_or_none(state), _masks_or_none(ref_state))


@FACTORY_NAMES
def test_works_inside_multisteps(name):
  # MultiSteps(tx, k) on g_1..g_2n is tx on the means of consecutive pairs.
  case = CASES[name]
  steps = 8
  grads = [_grads(_params(), i) for i in range(2 * steps)]
  accumulated, state = _run(optax.MultiSteps(
      _chain(case, _build(case)), every_k_schedule=2), _params(),
      2 * steps, grads)
  means = [jax.tree.map(lambda a, b: (a + b) / 2, grads[2 * i],
                        grads[2 * i + 1]) for i in range(steps)]
  reference, ref_state = _run(_chain(case, _build(case)), _params(), steps,
                              means)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      x, y, rtol=1e-5, atol=1e-6), accumulated, reference)
  _same(case, _masks_or_none(state), _masks_or_none(ref_state))


@NAMES
def test_bfloat16_params_and_updates_stay_bfloat16(name):
  case = CASES[name]
  params, _ = _run(_chain(case, _build(case)), _params(dtype=jnp.bfloat16))
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == jnp.bfloat16  # `_run` checks every update too
    assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


@FACTORY_NAMES
def test_vmap_over_initial_params_and_seeds_equals_a_loop(name):
  case = CASES[name]
  seeded = "seed" in inspect.signature(case.factory).parameters
  grads = [_grads(_params(), i) for i in range(STEPS)]
  stacked_grads = jax.tree.map(lambda *g: jnp.stack(g), *grads)

  def train(params, seed):
    tx = _chain(case, _build(case, **({"seed": seed} if seeded else {})))

    def body(carry, g):
      params, state = carry
      updates, state = tx.update(g, state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(body, (params, tx.init(params)),
                                      stacked_grads)
    return params, _masks_or_none(state)

  seeds = jnp.arange(3)
  inits = [_params(seed) for seed in (3, 4, 5)]
  batched = jax.jit(jax.vmap(train))(
      jax.tree.map(lambda *p: jnp.stack(p), *inits), seeds)
  one = jax.jit(train)
  for i, params in enumerate(inits):
    one_params, one_masks = one(params, seeds[i])
    batch_params, batch_masks = jax.tree.map(lambda x, i=i: x[i], batched)
    # Batched arithmetic may round differently (fused multiply-adds); the
    # masks it decides are the same.
    _same(case, batch_params, one_params, exact=False)
    _same(case, batch_masks, one_masks, exact=True)


@NAMES
def test_needs_params(name):
  case = CASES[name]
  params = _params()
  tx = _build(case)
  if not case.reads_params:  # e.g. tie_updates, a function of the updates
    tx.update(params, jax.jit(tx.init)(params))
    return
  with pytest.raises(ValueError, match="params"):
    tx.update(params, jax.jit(tx.init)(params))


class _Net(nn.Module):
  """Dense, BatchNorm (whose scale network slimming selects), Dense."""

  @nn.compact
  def __call__(self, x):
    h = nn.BatchNorm(use_running_average=True, name="bn")(
        nn.Dense(24, name="fc1")(x))
    return nn.Dense(10, name="fc2")(nn.relu(h))


@FACTORY_NAMES
def test_flax_train_state_needs_no_extra_call(name):
  case = CASES[name]
  model = _Net()
  variables = model.init(jax.random.key(0), jnp.ones((1, 16)))
  params, stats = variables["params"], variables["batch_stats"]
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=params,
      tx=_chain(case, _build(case), optax.sgd(LR, momentum=0.9)))
  x = jax.random.normal(jax.random.key(1), (32, 16))

  @jax.jit
  def step(state):
    loss = lambda p: jnp.mean(state.apply_fn(
        {"params": p, "batch_stats": stats}, x) ** 2)
    return state.apply_gradients(grads=jax.grad(loss)(state.params))

  for _ in range(STEPS):
    state = step(state)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(state.params))
  if case.masks:
    _check_masked(state.params, state.opt_state, case.sparsity)


class _NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.fc1 = nnx.Linear(16, 24, rngs=rngs)
    self.bn = nnx.BatchNorm(24, use_running_average=True, rngs=rngs)
    self.fc2 = nnx.Linear(24, 10, rngs=rngs)

  def __call__(self, x):
    return self.fc2(nnx.relu(self.bn(self.fc1(x))))


@FACTORY_NAMES
def test_nnx_optimizer_needs_no_extra_call(name):
  case = CASES[name]
  model = _NnxNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, _chain(case, _build(case)), wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(1), (32, 16))

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads)

  for _ in range(STEPS):
    step(model, optimizer)
  params = dict(sparsify.named_leaves(nnx.state(model, nnx.Param)))
  assert all(np.all(np.isfinite(p)) for p in params.values())
  if not case.masks:
    return
  masks = dict(sparsify.named_leaves(
      sparsify.find_masks(optimizer.opt_state)))
  assert sorted(masks) == ["fc1/kernel", "fc2/kernel"]  # NNX names as Linen
  for path, mask in masks.items():
    kernel, mask = np.asarray(params[path]), np.asarray(mask)
    assert np.all(kernel[~mask] == 0.0)
    if case.sparsity is not None:
      assert np.sum(kernel == 0) == round(case.sparsity * kernel.size)
