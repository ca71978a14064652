"""The proximal transforms: APG, ISTA, group lasso, against numpy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsify.transforms import proximal


def _soft(z, a):  # numpy reference of the soft-threshold
  return np.sign(z) * np.maximum(np.abs(z) - a, 0.0)


def _apg_reference(lam, grads, lrs, gammas, mu, nonnegative):
  """The three equations of SSS, in float64, one step per gradient."""
  lam = np.asarray(lam, np.float64)
  v = np.zeros_like(lam)
  out = []
  for g, lr, gamma in zip(grads, lrs, gammas):
    z = lam - lr * g
    s = _soft(z, lr * gamma)
    v = s - lam + mu * v
    lam = s + mu * v
    if nonnegative:
      lam = np.maximum(lam, 0.0)
    out.append((lam, v))
  return out


def _run(tx, params, grads):
  """Applies ``tx`` under jit for each gradient; returns every params."""
  state = jax.jit(tx.init)(params)
  update = jax.jit(tx.update)
  history = []
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    history.append((params, state))
  return history


@pytest.mark.parametrize("nonnegative", [False, True])
def test_apg_matches_numpy_reference(nonnegative):
  rng = np.random.default_rng(0)
  steps = 8
  lam0 = rng.normal(scale=0.3, size=(2, 6)).astype(np.float32)
  grads = rng.normal(size=(steps, 2, 6)).astype(np.float32)
  def lr(t):
    return 0.3 / (1.0 + t)

  def gamma(t):
    return 0.2 + 0.05 * t

  tx = proximal.accelerated_proximal_gradient(
      lr, strength=gamma, momentum=0.9, nonnegative=nonnegative)
  history = _run(tx, {"gate": jnp.asarray(lam0)},
                 [{"gate": jnp.asarray(g)} for g in grads])
  expected = _apg_reference(lam0, grads, [lr(t) for t in range(steps)],
                            [gamma(t) for t in range(steps)], 0.9,
                            nonnegative)
  zeros = 0
  for (params, state), (lam, v) in zip(history, expected):
    np.testing.assert_allclose(params["gate"], lam, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(state.velocity["gate"], v, rtol=1e-6,
                               atol=1e-6)
    zeros += int(np.sum(np.asarray(params["gate"]) == 0.0))
    assert state.count.dtype == jnp.int32
  assert zeros > 0  # the thresholds were hit, so the kink was exercised
  if nonnegative:
    assert all(np.all(np.asarray(p["gate"]) >= 0) for p, _ in history)


@pytest.mark.parametrize("lam0", [1.0, 0.9, 0.3, 2.05, -0.7])
def test_apg_without_momentum_reaches_zero_in_closed_form_steps(lam0):
  lr, gamma = 0.5, 0.25  # the threshold 0.125 is exact in binary
  steps = math.ceil(abs(lam0) / (lr * gamma))
  tx = proximal.accelerated_proximal_gradient(lr, strength=gamma, momentum=0.0)
  history = _run(tx, jnp.array([lam0], jnp.float32),
                 [jnp.zeros(1, jnp.float32)] * (steps + 3))
  values = [float(p[0]) for p, _ in history]
  for t, value in enumerate(values[:steps - 1], start=1):
    np.testing.assert_allclose(value, lam0 - np.sign(lam0) * t * lr * gamma,
                               rtol=1e-6)
  assert values[steps - 2] != 0.0  # still alive one step before
  assert values[steps - 1] == 0.0  # exactly zero, at exactly that step
  assert all(v == 0.0 for v in values[steps:])


@pytest.mark.parametrize("nonnegative", [False, True])
def test_apg_with_momentum_reaches_exact_zero_and_stays(nonnegative):
  lam0 = jnp.array([1.0, 0.37, -0.8, 2.3, 0.01, -3.1], jnp.float32)
  tx = proximal.accelerated_proximal_gradient(
      0.1, strength=0.5, momentum=0.9, nonnegative=nonnegative)
  history = _run(tx, lam0, [jnp.zeros_like(lam0)] * 150)
  values = np.stack([np.asarray(p) for p, _ in history])
  moving = np.flatnonzero(np.any(values != 0.0, axis=1))
  # Exactly zero from some step on, and for (at least) the last 100 steps.
  assert moving.size and moving[-1] < 50, moving[-1:]
  assert 0 < np.sum(values[:20] == 0.0) < values[:20].size
  if not nonnegative:  # in the dead zone the velocity dies out too
    assert np.all(np.asarray(history[-1][1].velocity) == 0.0)


def test_soft_threshold_properties():
  rng = np.random.default_rng(1)
  x = rng.normal(size=1000).astype(np.float32)
  y = rng.normal(size=1000).astype(np.float32)
  a = 0.5
  s = np.asarray(proximal.soft_threshold(jnp.asarray(x), a))
  np.testing.assert_array_equal(
      np.asarray(proximal.soft_threshold(jnp.asarray(-x), a)), -s)  # odd
  np.testing.assert_allclose(np.abs(s), np.maximum(np.abs(x) - a, 0),
                             atol=1e-7)  # shrinks by a
  assert np.all(s[np.abs(x) <= a] == 0.0)
  edges = np.asarray(proximal.soft_threshold(jnp.array([-a, a, 0.0]), a))
  assert np.all(edges == 0.0)
  np.testing.assert_array_equal(
      np.asarray(proximal.soft_threshold(jnp.asarray(x), 0.0)), x)
  sy = np.asarray(proximal.soft_threshold(jnp.asarray(y), a))
  assert np.all(np.abs(s - sy) <= np.abs(x - y) + 1e-6)  # non-expansive
  tree = proximal.soft_threshold({"a": jnp.array([2.0]), "b": [jnp.ones(2)]},
                                 1.5)
  np.testing.assert_allclose(tree["a"], [0.5])
  np.testing.assert_array_equal(tree["b"][0], [0.0, 0.0])


def test_proximal_sgd_matches_numpy():
  rng = np.random.default_rng(2)
  lam = rng.normal(scale=0.5, size=10).astype(np.float32)
  grads = rng.normal(size=(6, 10)).astype(np.float32)
  def lr(t):
    return 0.2 * 0.9**t

  history = _run(proximal.proximal_sgd(lr, strength=0.4), jnp.asarray(lam),
                 [jnp.asarray(g) for g in grads])
  expected = lam.astype(np.float64)
  for t, (params, _) in enumerate(history):
    expected = _soft(expected - lr(t) * grads[t], lr(t) * 0.4)
    np.testing.assert_allclose(params, expected, rtol=1e-6, atol=1e-6)
  assert np.any(np.asarray(history[-1][0]) == 0.0)


@pytest.mark.parametrize("scale_by_group_size", [True, False])
def test_group_lasso_zeroes_small_units_and_shrinks_large_ones(
    scale_by_group_size):
  rng = np.random.default_rng(3)
  dense = rng.normal(size=(4, 3)).astype(np.float32)
  dense[:, 0] *= 0.001  # a unit with a small norm
  conv = rng.normal(size=(2, 2, 3, 5)).astype(np.float32)
  conv[..., 2] *= 0.001
  params = {"Dense_0": {"kernel": jnp.asarray(dense),
                        "bias": jnp.ones(3, jnp.float32)},
            "Conv_0": {"kernel": jnp.asarray(conv)}}
  updates = jax.tree.map(lambda p: 0.001 * jnp.ones_like(p), params)
  lr, strength = 0.1, 0.5
  tx = proximal.group_lasso_prox(lr, strength=strength,
                                 scale_by_group_size=scale_by_group_size)
  new_updates, _ = jax.jit(tx.update)(updates, jax.jit(tx.init)(params),
                                      params)
  new = optax.apply_updates(params, new_updates)
  for name, w, small in (("Dense_0", dense, 0), ("Conv_0", conv, 2)):
    moved = w.astype(np.float64) + 0.001
    got = np.asarray(new[name]["kernel"])
    group_size = moved.size // moved.shape[-1]
    threshold = lr * strength * (np.sqrt(group_size) if scale_by_group_size
                                 else 1.0)
    for j in range(moved.shape[-1]):
      norm = np.linalg.norm(moved[..., j])
      if j == small:
        assert norm <= threshold and np.all(got[..., j] == 0.0)
      else:
        assert norm > threshold
        np.testing.assert_allclose(got[..., j],
                                   moved[..., j] * (1 - threshold / norm),
                                   rtol=1e-5)
  # Biases are not selected: they get the incoming update unchanged.
  np.testing.assert_array_equal(new["Dense_0"]["bias"], np.full(3, 1.001,
                                                                np.float32))


def test_apg_under_inject_hyperparams():
  lam = jnp.array([0.5, -0.02, 0.3])
  grads = [jnp.array([0.1, 0.2, -0.3])] * 3
  plain = _run(proximal.accelerated_proximal_gradient(0.1, strength=0.2),
               lam, grads)
  injected = _run(optax.inject_hyperparams(
      proximal.accelerated_proximal_gradient)(0.1, strength=0.2), lam, grads)
  for (p, _), (q, _) in zip(plain, injected):
    np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)
