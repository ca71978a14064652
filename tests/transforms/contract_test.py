"""The contract every compression transform of sparsify satisfies.

Each entry of `TRANSFORMS` is run through the same checks: it compiles under
jit, chains after any optimizer, works under `optax.masked` and
`optax.inject_hyperparams`, keeps its state's shapes and dtypes across steps,
keeps pruned weights at exactly zero, and reaches its target sparsity. It is
also driven through flax's `TrainState.apply_gradients` and
`nnx.Optimizer.update` with no extra call. The proximal transforms (APG,
ISTA, group lasso, Network Slimming), which hold no masks, go through the
same jit / chain / `optax.masked` / `inject_hyperparams` checks in
`PROXIMAL`.
"""

import inspect
from typing import Any, NamedTuple

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
  factory: Any
  kwargs: dict[str, Any]
  sparsity: float | None  # reached by every selected kernel; None: no target
  injectable: tuple[str, ...]  # numeric hyper-parameters inject_hyperparams may trace


STEPS = 12
TRANSFORMS = {
    "gmp": Case(sparsify.gradual_magnitude_pruning,
                dict(sparsity=0.8, begin_step=2, end_step=8, update_every=3),
                0.8, ("sparsity",)),
    "gmp_global": Case(sparsify.gradual_magnitude_pruning,
                       dict(sparsity=0.7, begin_step=0, end_step=6,
                            allocation="global"), None, ("sparsity",)),
    "one_shot": Case(sparsify.magnitude_pruning, dict(sparsity=0.6, step=4),
                     0.6, ("sparsity",)),
    "random": Case(sparsify.random_sparsity, dict(sparsity=0.75, seed=1), 0.75,
                   ("sparsity",)),
    "random_erk": Case(sparsify.random_sparsity,
                       dict(sparsity=0.75, allocation="erk"), None, ()),
    "dat_clamp": Case(sparsify.dynamic_adaptive_threshold,
                      dict(c=2.0, begin_step=0, end_step=8, update_every=2,
                           target_sparsity=0.9), 0.9,
                      ("c", "target_sparsity")),
    "dat_solve": Case(sparsify.dynamic_adaptive_threshold,
                      dict(c=0.5, begin_step=0, end_step=8, update_every=2,
                           target_sparsity=0.85, target_mode="solve"), 0.85,
                      ("c", "target_sparsity")),
    "dat_recovery": Case(sparsify.dynamic_adaptive_threshold,
                         dict(c=1.0, begin_step=0, end_step=8, update_every=2,
                              recovery=True), None, ("c",)),
}
CASES = pytest.mark.parametrize("name", sorted(TRANSFORMS))


def _params():
  rng = np.random.default_rng(0)
  return {"fc1": {"kernel": jnp.asarray(rng.normal(size=(16, 24)), jnp.float32),
                  "bias": jnp.zeros(24, jnp.float32)},
          "fc2": {"kernel": jnp.asarray(rng.normal(size=(24, 10)), jnp.float32),
                  "bias": jnp.zeros(10, jnp.float32)},
          "bn": {"scale": jnp.ones(24, jnp.float32)}}  # a BatchNorm-like scale


def _grads(params, step):
  # Drawn outside the jitted step, which then compiles the transform only.
  rng = np.random.default_rng(step)
  return jax.tree.map(
      lambda x: (0.1 * rng.standard_normal(x.shape)).astype(np.float32),
      params)


def _run(tx, params, steps=STEPS):
  state = jax.jit(tx.init)(params)
  shapes = jax.eval_shape(lambda: state)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for i in range(steps):
    params, state = step(params, state, _grads(params, i))
    assert jax.eval_shape(lambda s=state: s) == shapes, "state changed shape"
  return params, state


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


@CASES
@pytest.mark.parametrize("opt", ["momentum", "adamw"])
def test_chains_after_any_optimizer_and_reaches_target(name, opt):
  case = TRANSFORMS[name]
  base = {"sgd": optax.sgd(0.05), "momentum": optax.sgd(0.05, momentum=0.9),
          "adam": optax.adam(0.01),
          "adamw": optax.adamw(0.01, weight_decay=0.1)}[opt]
  tx = optax.chain(base, case.factory(**case.kwargs))
  params, state = _run(tx, _params())
  _check_masked(params, state, case.sparsity)


@CASES
def test_works_under_optax_masked(name):
  case = TRANSFORMS[name]
  only_fc1 = lambda p: {k: jax.tree.map(lambda _: k == "fc1", v)  # pylint: disable=g-long-lambda
                        for k, v in p.items()}
  tx = optax.chain(optax.sgd(0.05),
                   optax.masked(case.factory(**case.kwargs), only_fc1))
  params, _ = _run(tx, _params())
  assert np.all(np.asarray(params["fc2"]["kernel"]) != 0)
  if case.sparsity is not None:
    zeros = np.sum(np.asarray(params["fc1"]["kernel"]) == 0)
    assert zeros == round(case.sparsity * 16 * 24)


@CASES
def test_works_under_inject_hyperparams(name):
  case = TRANSFORMS[name]
  static = tuple(k for k in inspect.signature(case.factory).parameters
                 if k not in case.injectable)
  injected = optax.inject_hyperparams(case.factory, static_args=static)(
      **case.kwargs)
  tx = optax.chain(optax.sgd(0.05), injected)
  params, state = _run(tx, _params())
  _check_masked(params, state, case.sparsity)
  reference, _ = _run(optax.chain(optax.sgd(0.05),
                                  case.factory(**case.kwargs)), _params())
  jax.tree.map(np.testing.assert_array_equal, params, reference)


class _Net(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(10, name="fc2")(nn.relu(nn.Dense(24, name="fc1")(x)))


@CASES
def test_flax_train_state_needs_no_extra_call(name):
  case = TRANSFORMS[name]
  model = _Net()
  params = model.init(jax.random.key(0), jnp.ones((1, 16)))["params"]
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=params,
      tx=optax.chain(optax.sgd(0.05, momentum=0.9),
                     case.factory(**case.kwargs)))
  x = jax.random.normal(jax.random.key(1), (32, 16))

  @jax.jit
  def step(state):
    loss = lambda p: jnp.mean(state.apply_fn({"params": p}, x) ** 2)
    return state.apply_gradients(grads=jax.grad(loss)(state.params))

  for _ in range(STEPS):
    state = step(state)
  _check_masked(state.params, state.opt_state, case.sparsity)


class _NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.fc1 = nnx.Linear(16, 24, rngs=rngs)
    self.fc2 = nnx.Linear(24, 10, rngs=rngs)

  def __call__(self, x):
    return self.fc2(nnx.relu(self.fc1(x)))


@CASES
def test_nnx_optimizer_needs_no_extra_call(name):
  case = TRANSFORMS[name]
  model = _NnxNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(
      model, optax.chain(optax.sgd(0.05), case.factory(**case.kwargs)),
      wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(1), (32, 16))

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads)

  for _ in range(STEPS):
    step(model, optimizer)
  params = dict(sparsify.named_leaves(nnx.state(model, nnx.Param)))
  masks = dict(sparsify.named_leaves(
      sparsify.find_masks(optimizer.opt_state)))
  assert sorted(masks) == ["fc1/kernel", "fc2/kernel"]  # NNX names as Linen
  for name, mask in masks.items():
    kernel, mask = np.asarray(params[name]), np.asarray(mask)
    assert np.all(kernel[~mask] == 0.0)
    if case.sparsity is not None:
      assert np.sum(kernel == 0) == round(case.sparsity * kernel.size)


def test_needs_params_everywhere():
  params = _params()
  for name, case in TRANSFORMS.items():
    tx = case.factory(**case.kwargs)
    with pytest.raises(ValueError, match="params"):
      tx.update(params, tx.init(params))
    del name



class ProxCase(NamedTuple):
  build: Any  # () -> transform; chained as `optax.chain(before, tx, after)`
  before: Any
  after: Any
  injectable: dict[str, Any]  # factory and its kwargs, for inject_hyperparams
  zeroes: bool  # drives some weights or whole units to exactly zero


PROXIMAL = {
    "apg": ProxCase(lambda: sparsify.accelerated_proximal_gradient(
        0.1, strength=5.0), optax.identity(), optax.identity(),
                    dict(factory=sparsify.accelerated_proximal_gradient,
                         kwargs=dict(learning_rate=0.1, strength=5.0)), True),
    "ista": ProxCase(lambda: sparsify.proximal_sgd(0.1, strength=5.0),
                     optax.identity(), optax.identity(),
                     dict(factory=sparsify.proximal_sgd,
                          kwargs=dict(learning_rate=0.1, strength=5.0)), True),
    "group_lasso": ProxCase(lambda: sparsify.group_lasso_prox(0.1, strength=5.0),
                            optax.sgd(0.05), optax.identity(),
                            dict(factory=sparsify.group_lasso_prox,
                                 kwargs=dict(learning_rate=0.1, strength=5.0)),
                            True),
    "network_slimming": ProxCase(lambda: sparsify.network_slimming(1e-3),
                                 optax.identity(), optax.sgd(0.05),
                                 dict(factory=sparsify.network_slimming,
                                      kwargs=dict(strength=1e-3)), False),
}
# Penalties added before the optimizer, and LCT's ternary constraint.
PROXIMAL.update({
    "binary_attractor": ProxCase(
        lambda: sparsify.binary_attractor(1e-2, alpha=0.5), optax.identity(),
        optax.sgd(0.05), dict(factory=sparsify.binary_attractor,
                              kwargs=dict(strength=1e-2, alpha=0.5)), False),
    "kcentre_attractor": ProxCase(
        lambda: sparsify.kcentre_attractor(1e-2, centres=3, refresh_every=2),
        optax.identity(), optax.sgd(0.05),
        dict(factory=sparsify.kcentre_attractor,
             kwargs=dict(strength=1e-2)), False),
    "strength": ProxCase(lambda: sparsify.l1(1e-2), optax.identity(),
                   optax.sgd(0.05), dict(factory=sparsify.l1,
                                         kwargs=dict(strength=1e-2)), False),
    "group_lasso_penalty": ProxCase(
        lambda: sparsify.group_lasso(1e-2), optax.identity(), optax.sgd(0.05),
        dict(factory=sparsify.group_lasso, kwargs=dict(strength=1e-2)),
        False),
    "ternary_constrained": ProxCase(
        lambda: sparsify.ternary_constrained(sigma="learned",
                                             sigma_learning_rate=0.01),
        optax.sgd(0.05), optax.identity(),
        dict(factory=sparsify.ternary_constrained,
             kwargs=dict(sigma_learning_rate=0.01, threshold=0.3)), False),
})
PROX_CASES = pytest.mark.parametrize("name", sorted(PROXIMAL))


@PROX_CASES
def test_proximal_transforms_jit_chain_and_keep_state_shapes(name):
  case = PROXIMAL[name]
  tx = optax.chain(case.before, case.build(), case.after)
  params, _ = _run(tx, _params())
  without, _ = _run(optax.chain(case.before, case.after), _params())
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), params,
                         without)
  assert any(jax.tree.leaves(changed))
  zeros = sum(int(np.sum(np.asarray(x) == 0)) for x in jax.tree.leaves(params))
  biases_init_zero = 24 + 10
  if case.zeroes:
    assert zeros > biases_init_zero  # exact zeros, not just small values
  if name == "network_slimming":  # only the scales feel the L1 term
    assert changed["bn"]["scale"] and not changed["fc1"]["kernel"]
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


@PROX_CASES
def test_proximal_transforms_under_optax_masked(name):
  case = PROXIMAL[name]
  only_fc1 = lambda p: {k: jax.tree.map(lambda _: k == "fc1", v)  # pylint: disable=g-long-lambda
                        for k, v in p.items()}
  tx = optax.chain(case.before, optax.masked(case.build(), only_fc1),
                   case.after)
  params, _ = _run(tx, _params())
  full, _ = _run(optax.chain(case.before, case.after), _params())
  # fc2 does not see the transform: it moves exactly as without it.
  jax.tree.map(np.testing.assert_array_equal, params["fc2"], full["fc2"])


@PROX_CASES
def test_proximal_transforms_under_inject_hyperparams(name):
  case = PROXIMAL[name]
  factory, kwargs = case.injectable["factory"], case.injectable["kwargs"]
  static = tuple(k for k in inspect.signature(factory).parameters
                 if k not in kwargs)
  injected = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
  a, _ = _run(optax.chain(case.before, injected, case.after), _params())
  b, _ = _run(optax.chain(case.before, factory(**kwargs), case.after),
              _params())
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6,
                                                       atol=1e-7), a, b)
