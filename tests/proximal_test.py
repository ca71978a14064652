"""Tests of the proximal transforms: SSS's APG, ISTA, group lasso, slimming."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsify.transforms import proximal
from sparsify.transforms import sss


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


def test_network_slimming_adds_l1_sign_to_bn_scales_only():
  params = {"BatchNorm_0": {"scale": jnp.array([0.5, -0.2, 0.0, 1.0]),
                            "bias": jnp.array([0.3, -0.1, 0.2, 0.0])},
            "Conv_0": {"kernel": jnp.full((3, 3, 2, 4), -0.4)}}
  grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
  tx = sss.network_slimming(lambda t: 0.01 * (t + 1))
  state = jax.jit(tx.init)(params)
  for step in range(2):
    out, state = jax.jit(tx.update)(grads, state, params)
    l1 = 0.01 * (step + 1)
    np.testing.assert_allclose(out["BatchNorm_0"]["scale"],
                               [0.1 + l1, 0.1 - l1, 0.1, 0.1 + l1], rtol=1e-6)
    np.testing.assert_array_equal(out["BatchNorm_0"]["bias"],
                                  grads["BatchNorm_0"]["bias"])
    np.testing.assert_array_equal(out["Conv_0"]["kernel"],
                                  grads["Conv_0"]["kernel"])


def test_slimming_threshold_is_a_global_order_statistic():
  params = {"bn1": {"scale": jnp.array([0.9, -0.05, 0.3]),
                    "bias": jnp.zeros(3)},
            "bn2": {"scale": jnp.array([0.2, -0.7, 0.01, 0.6, 0.4])},
            "conv": {"kernel": jnp.full((2, 2), 1e-4)}}
  pooled = np.sort(np.abs(np.array([0.9, -0.05, 0.3, 0.2, -0.7, 0.01, 0.6,
                                     0.4], np.float32)))
  threshold = sss.slimming_threshold(params, 0.5)
  np.testing.assert_allclose(threshold, pooled[4])
  assert np.sum(pooled < threshold) == 4
  assert sss.slimming_threshold(params, 0.0) == pytest.approx(0.01)
  with pytest.raises(ValueError, match="fraction"):
    sss.slimming_threshold(params, 1.0)


def _sss_params():
  def full(shape):
    return jnp.full(shape, 0.01, jnp.float32)

  return {"Conv_0": {"kernel": full((3, 3, 2, 4))},
          "BatchNorm_0": {"scale": full(4), "bias": full(4)},
          "block": {"gate": full(1)}}


def test_sss_routes_scales_to_apg_and_weights_to_nesterov_sgd():
  params = _sss_params()
  assert sss.sss_labels(params, sss.SSS_SCALES) == {
      "Conv_0": {"kernel": "weights"},
      "BatchNorm_0": {"scale": "scales", "bias": "weights"},
      "block": {"gate": "scales"}}
  lr, wd, mu = 0.1, 1e-4, 0.9
  zero = jax.tree.map(jnp.zeros_like, params)
  new = _run(sss.sparse_structure_selection(
      lr, strength=0.5, momentum=mu, weight_decay=wd,
      where=sss.SSS_SCALES), params, [zero])[0][0]
  # Scales: |0.01| < lr * gamma, so the proximal step lands on exactly zero.
  assert np.all(np.asarray(new["BatchNorm_0"]["scale"]) == 0.0)
  assert np.all(np.asarray(new["block"]["gate"]) == 0.0)
  # Weights: only weight decay moves them; first Nesterov step is (1 + mu) g.
  decayed = 0.01 * (1 - lr * (1 + mu) * wd)
  for w in (new["Conv_0"]["kernel"], new["BatchNorm_0"]["bias"]):
    np.testing.assert_allclose(w, decayed, rtol=1e-6)
  # Gamma reaches the scales only; a gradient reaches the weights unchanged.
  grads = jax.tree.map(lambda p: -0.3 * jnp.ones_like(p), params)
  a = _run(sss.sparse_structure_selection(lr, strength=0.0), params, [grads])[0][0]
  b = _run(sss.sparse_structure_selection(lr, strength=1.0), params, [grads])[0][0]
  np.testing.assert_array_equal(a["Conv_0"]["kernel"], b["Conv_0"]["kernel"])
  np.testing.assert_allclose(a["block"]["gate"], 0.01 + lr * 0.3 * (1 + mu),
                             rtol=1e-6)  # first APG step: lr * g * (1 + mu)
  assert np.all(np.asarray(b["block"]["gate"]) == 0.0)


def test_sss_scales_are_the_gates_when_there_are_gates():
  params = _sss_params()
  assert sss.sss_labels(params) == {  # BatchNorm scales are weights here
      "Conv_0": {"kernel": "weights"},
      "BatchNorm_0": {"scale": "weights", "bias": "weights"},
      "block": {"gate": "scales"}}
  del params["block"]  # no gates: BatchNorm scales are the factors
  assert sss.sss_labels(params)["BatchNorm_0"] == {"scale": "scales",
                                                   "bias": "weights"}


def test_sss_optimizer_takes_a_custom_pattern():
  params = _sss_params()
  tx = sss.sss_optimizer(
      optax.sgd(0.0), proximal.proximal_sgd(0.1, strength=1.0),
      where=r"(^|/)gate$")
  new = _run(tx, params, [jax.tree.map(jnp.zeros_like, params)])[0][0]
  assert np.all(np.asarray(new["block"]["gate"]) == 0.0)
  np.testing.assert_array_equal(new["BatchNorm_0"]["scale"],
                                params["BatchNorm_0"]["scale"])


FACTORIES = {
    "apg": lambda: proximal.accelerated_proximal_gradient(
        optax.cosine_decay_schedule(0.1, 10), strength=0.01, nonnegative=True),
    "ista": lambda: proximal.proximal_sgd(0.1, strength=0.01),
    "group_lasso": lambda: optax.chain(
        optax.sgd(0.1, momentum=0.9), proximal.group_lasso_prox(
            0.1, strength=0.01)),
    "slimming": lambda: optax.chain(sss.network_slimming(1e-3),
                                    optax.sgd(0.1)),
    "sss": lambda: sss.sparse_structure_selection(0.1, strength=0.01),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_transforms_jit_and_keep_state_shapes(name):
  tx = FACTORIES[name]()
  params = _sss_params()
  grads = [jax.tree.map(lambda p, s=s: s * jnp.ones_like(p), params)
           for s in (0.1, -0.2, 0.3)]
  history = _run(tx, params, grads)
  shapes = jax.eval_shape(lambda: jax.jit(tx.init)(params))
  for _, state in history:
    assert jax.eval_shape(lambda s=state: s) == shapes
  with pytest.raises(ValueError, match="params"):
    tx.update(grads[0], tx.init(params))


def test_apg_under_inject_hyperparams():
  lam = jnp.array([0.5, -0.02, 0.3])
  grads = [jnp.array([0.1, 0.2, -0.3])] * 3
  plain = _run(proximal.accelerated_proximal_gradient(0.1, strength=0.2),
               lam, grads)
  injected = _run(optax.inject_hyperparams(
      proximal.accelerated_proximal_gradient)(0.1, strength=0.2), lam, grads)
  for (p, _), (q, _) in zip(plain, injected):
    np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)
