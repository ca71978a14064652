"""Tests of the penalty transforms against numpy and jax.grad references."""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsify import quantize
from sparsify.core import checks
from sparsify.transforms import penalties


def _params(seed=0):
  rng = np.random.default_rng(seed)
  f32 = lambda *s: jnp.asarray(rng.normal(scale=0.5, size=s), jnp.float32)
  return {"fc1": {"kernel": f32(6, 5), "bias": f32(5)},
          "conv": {"kernel": f32(3, 3, 2, 4)},
          "fc2": {"kernel": f32(5, 3)}}


def _grads(seed=1):
  return jax.tree.map(lambda x: x * 0 + 0.1, _params(seed))


# numpy gradients of the penalties, written from the closed forms.
def _np_binary(w, alpha):
  a = np.mean(np.abs(w)) if alpha is None else alpha
  return 4.0 * w * (w ** 2 - a ** 2)


def _np_l1(w):
  return np.sign(w)


def _np_group(w, axis=-1, scale=False):
  ax = axis % w.ndim
  moved = np.moveaxis(w, ax, -1).reshape(-1, w.shape[ax])
  out = np.zeros_like(moved)
  for j in range(moved.shape[1]):
    norm = np.sqrt(np.sum(moved[:, j].astype(np.float64) ** 2))
    if norm > 0:
      out[:, j] = moved[:, j] / norm * (np.sqrt(moved.shape[0]) if scale else 1)
  shape = np.moveaxis(w, ax, -1).shape
  return np.moveaxis(out.reshape(shape), -1, ax)


def _np_kcentre(w, c):
  nearest = np.asarray(c)[np.argmin(np.abs(w[..., None] - c), axis=-1)]
  return 2.0 * (w - nearest)


# penalties R(w), differentiated by jax.grad.
def _r_binary(w, alpha):
  a = jax.lax.stop_gradient(jnp.mean(jnp.abs(w))) if alpha is None else alpha
  return jnp.sum((w ** 2 - a ** 2) ** 2)


def _r_group(w, axis=-1):
  others = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
  return jnp.sum(jnp.sqrt(jnp.sum(w ** 2, axis=others)))


def _r_kcentre(w, c):
  return jnp.sum(jnp.min((w[..., None] - c) ** 2, axis=-1))


def _update(tx, grads, params):
  state = jax.jit(tx.init)(params)
  return jax.jit(tx.update)(grads, state, params)


def _centres_of(state):
  return state.inner_state.centres


CASES = {
    "binary_fixed": (lambda s: penalties.binary_attractor(s, alpha=0.3),
                     lambda w, c: _np_binary(w, 0.3),
                     lambda w, c: jax.grad(_r_binary)(w, 0.3)),
    "binary_mean": (lambda s: penalties.binary_attractor(s),
                    lambda w, c: _np_binary(w, None),
                    lambda w, c: jax.grad(_r_binary)(w, None)),
    "l1": (lambda s: penalties.l1(s), lambda w, c: _np_l1(w),
           lambda w, c: jax.grad(lambda v: jnp.sum(jnp.abs(v)))(w)),
    "group_lasso": (lambda s: penalties.group_lasso(s),
                    lambda w, c: _np_group(w),
                    lambda w, c: jax.grad(_r_group)(w)),
    "kcentre": (lambda s: penalties.kcentre_attractor(s, centres=3),
                _np_kcentre, lambda w, c: jax.grad(_r_kcentre)(w, c)),
}
NAMES = pytest.mark.parametrize("name", sorted(CASES))


@NAMES
def test_gradient_matches_numpy_and_jax_grad_on_dense_kernels_only(name):
  build, np_grad, jax_grad = CASES[name]
  params, grads = _params(), _grads()
  tx = build(0.7)
  updates, state = _update(tx, grads, params)
  assert state.inner_state.count == 1
  assert state.inner_state.count.dtype == jnp.int32
  for layer in ("fc1", "fc2"):
    w = np.asarray(params[layer]["kernel"])
    c = (np.asarray(_centres_of(state)[layer]["kernel"])
         if name == "kcentre" else None)
    want = 0.1 + 0.7 * np_grad(w, c)
    np.testing.assert_allclose(updates[layer]["kernel"], want, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(
        updates[layer]["kernel"],
        0.1 + 0.7 * np.asarray(jax_grad(jnp.asarray(w), c)), rtol=1e-5,
        atol=1e-6)
  # Conv kernels (4-D) and biases are not fully-connected kernels.
  np.testing.assert_array_equal(updates["conv"]["kernel"],
                                grads["conv"]["kernel"])
  np.testing.assert_array_equal(updates["fc1"]["bias"], grads["fc1"]["bias"])


@NAMES
def test_where_selects_other_leaves(name):
  tx_conv = {"binary_fixed": lambda: penalties.binary_attractor(1.0, alpha=0.3,
                                                          where="conv"),
             "binary_mean": lambda: penalties.binary_attractor(1.0, where="conv"),
             "l1": lambda: penalties.l1(1.0, where="conv"),
             "group_lasso": lambda: penalties.group_lasso(1.0, where="conv"),
             "kcentre": lambda: penalties.kcentre_attractor(
                 1.0, centres=3, where=lambda path, _: path == "conv/kernel"),
             }[name]()
  params, grads = _params(), _grads()
  updates, _ = _update(tx_conv, grads, params)
  assert not np.array_equal(updates["conv"]["kernel"], grads["conv"]["kernel"])
  for layer in ("fc1", "fc2"):
    np.testing.assert_array_equal(updates[layer]["kernel"],
                                  grads[layer]["kernel"])


def test_group_lasso_conv_axis_zero_group_and_size_scaling():
  rng = np.random.default_rng(3)
  w = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
  w[..., 1] = 0.0  # a dead filter: zero subgradient, no NaN
  params = {"conv": {"kernel": jnp.asarray(w)}}
  grads = jax.tree.map(jnp.zeros_like, params)
  tx = penalties.group_lasso(0.5, where="conv", scale_by_group_size=True)
  updates, _ = _update(tx, grads, params)
  got = np.asarray(updates["conv"]["kernel"])
  np.testing.assert_allclose(got, 0.5 * _np_group(w, -1, True), rtol=1e-6)
  assert np.all(got[..., 1] == 0.0)
  w2 = rng.normal(size=(6, 5)).astype(np.float32)  # groups along rows
  tx = penalties.group_lasso(1.0, axis=0)
  updates, _ = _update(tx, {"d": {"kernel": jnp.zeros((6, 5))}},
                       {"d": {"kernel": jnp.asarray(w2)}})
  np.testing.assert_allclose(updates["d"]["kernel"],
                             w2 / np.linalg.norm(w2, axis=1, keepdims=True),
                             rtol=1e-6)


def test_l1_subgradient_is_zero_at_zero():
  w = jnp.asarray([[0.0, -2.0], [3.0, 0.0]])
  updates, _ = _update(penalties.l1(0.5), {"k": {"kernel": jnp.ones((2, 2))}},
                       {"k": {"kernel": w}})
  np.testing.assert_array_equal(updates["k"]["kernel"], [[1.0, 0.5],
                                                          [1.5, 1.0]])


@NAMES
def test_strength_schedule_is_read_at_the_count(name):
  build, np_grad, _ = CASES[name]
  schedule = lambda t: 0.5 * (t + 1)
  tx = build(schedule)
  params, grads = _params(), _grads()
  state = jax.jit(tx.init)(params)
  update = jax.jit(tx.update)
  for t in range(3):
    updates, state = update(grads, state, params)
    w = np.asarray(params["fc2"]["kernel"])
    c = (np.asarray(_centres_of(state)["fc2"]["kernel"])
         if name == "kcentre" else None)
    np.testing.assert_allclose(updates["fc2"]["kernel"],
                               0.1 + 0.5 * (t + 1) * np_grad(w, c), rtol=1e-5,
                               atol=1e-6)


@NAMES
def test_chains_with_sgd_under_jit_and_needs_params(name):
  build, np_grad, _ = CASES[name]
  tx = optax.chain(build(0.2), optax.sgd(0.1))
  params, grads = _params(), _grads()
  updates, state = _update(tx, grads, params)
  w = np.asarray(params["fc1"]["kernel"])
  c = (np.asarray(_centres_of(state[0])["fc1"]["kernel"])
       if name == "kcentre" else None)
  np.testing.assert_allclose(updates["fc1"]["kernel"],
                             -0.1 * (0.1 + 0.2 * np_grad(w, c)), rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(updates["fc1"]["bias"], -0.01 * np.ones(5),
                             rtol=1e-6)
  tx = build(0.2)
  with pytest.raises(ValueError, match=re.escape(checks.NO_PARAMS_MSG)):
    tx.update(grads, tx.init(params))


@NAMES
def test_inject_hyperparams_on_strength(name):
  build = CASES[name][0]
  factory = {"binary_fixed": penalties.binary_attractor,
             "binary_mean": penalties.binary_attractor, "l1": penalties.l1,
             "group_lasso": penalties.group_lasso,
             "kcentre": penalties.kcentre_attractor}[name]
  kwargs = {"binary_fixed": {"alpha": 0.3}, "kcentre": {"centres": 3}}.get(
      name, {})
  static = tuple(k for k in inspect.signature(factory).parameters
                 if k not in ("strength", "alpha"))
  injected = optax.inject_hyperparams(factory, static_args=static)(
      strength=0.4, **kwargs)
  params, grads = _params(), _grads()
  a, _ = _update(injected, grads, params)
  b, _ = _update(build(0.4), grads, params)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), a, b)


def _np_lloyd_1d(w, c, iterations):
  """Plain 1-D Lloyd in float64 (an empty cluster keeps its centre)."""
  w, c = np.asarray(w, np.float64).ravel(), np.array(c, np.float64)
  for _ in range(iterations):
    a = np.argmin((w[:, None] - c[None]) ** 2, axis=1)
    c = np.array([w[a == j].mean() if np.any(a == j) else c[j]
                  for j in range(len(c))])
  return c


def test_kcentre_centres_refresh_exactly_every_t_steps():
  params = {"fc1": {"kernel": _params()["fc1"]["kernel"]},
            "fc2": {"kernel": _params()["fc2"]["kernel"]}}
  tx = penalties.kcentre_attractor(0.5, centres=3, refresh_every=3, iterations=4,
                             seed=7)
  chain = optax.chain(tx, optax.sgd(0.2))
  state = jax.jit(chain.init)(params)
  # Initial centres: k-means++ seeds with the documented keys, then Lloyd.
  keys = jax.random.split(jax.random.key(7), 2)
  previous = {}
  for layer, key in zip(("fc1", "fc2"), keys):
    w = params[layer]["kernel"].reshape(-1, 1)
    seeds = np.asarray(quantize.kmeans_plus_plus(w, 3, key=key))[:, 0]
    previous[layer] = _np_lloyd_1d(w, seeds, 4)
    np.testing.assert_allclose(_centres_of(state[0])[layer]["kernel"],
                               previous[layer], rtol=1e-5, atol=1e-6)
  grads = jax.tree.map(lambda x: 0.3 * jnp.cos(7 * x), params)
  step = jax.jit(chain.update)
  refreshed_at = []
  for t in range(8):
    updates, state = step(grads, state, params)
    for layer in ("fc1", "fc2"):
      got = np.asarray(_centres_of(state[0])[layer]["kernel"])
      w = np.asarray(params[layer]["kernel"])
      if t % 3 == 0:
        want = _np_lloyd_1d(w, previous[layer], 4)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        if layer == "fc1" and not np.array_equal(got, previous[layer]):
          refreshed_at.append(t)
      else:
        np.testing.assert_array_equal(got, previous[layer].astype(np.float32))
      np.testing.assert_allclose(
          updates[layer]["kernel"],
          -0.2 * (np.asarray(grads[layer]["kernel"]) + 0.5 * _np_kcentre(
              w, got)), rtol=1e-5, atol=1e-6)
      previous[layer] = got.astype(np.float64)
    params = optax.apply_updates(params, updates)
  assert {3, 6} <= set(refreshed_at)  # the weights moved, so did the centres


def test_kcentre_rejects_bad_arguments():
  with pytest.raises(ValueError, match="refresh_every: got 0"):
    penalties.kcentre_attractor(0.1, refresh_every=0)
  with pytest.raises(ValueError, match="centres: got 0"):
    penalties.kcentre_attractor(0.1, centres=0)
  with pytest.raises(ValueError, match=r"centres: got 40.*allowed: 1 to 30"):
    penalties.kcentre_attractor(0.1, centres=40).init({"d": {"kernel":
                                                       jnp.ones((6, 5))}})
  with pytest.raises(ValueError, match="strength: got -1"):
    penalties.l1(-1.0)
  with pytest.raises(ValueError, match="alpha: got -0.5"):
    penalties.binary_attractor(0.1, alpha=-0.5)
  with pytest.raises(ValueError, match="axis: got 2"):
    _update(penalties.group_lasso(0.1, axis=2), {"d": {"kernel": jnp.ones((2, 3))}},
            {"d": {"kernel": jnp.ones((2, 3))}})


def test_binary_attractor_drives_a_quadratic_problem_to_plus_minus_alpha():
  rng = np.random.default_rng(5)
  target = rng.uniform(-0.5, 0.5, size=(8, 6)).astype(np.float32)
  w0 = rng.uniform(-0.3, 0.3, size=(8, 6)).astype(np.float32)
  alpha, lam = 0.5, 20.0
  loss = lambda p: 0.5 * jnp.sum((p["d"]["kernel"] - target) ** 2)
  tx = optax.chain(penalties.binary_attractor(lam, alpha=alpha), optax.sgd(0.005))

  @jax.jit
  def train(params):
    def body(carry, _):
      params, state = carry
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      return (optax.apply_updates(params, updates), state), None
    return jax.lax.scan(body, (params, tx.init(params)), None, length=3000)[0]

  w = np.asarray(train({"d": {"kernel": jnp.asarray(w0)}})[0]["d"]["kernel"],
                 np.float64)
  # A stationary point of 0.5 ||w - t||^2 + lam sum (w^2 - alpha^2)^2 ...
  residual = (w - target) + lam * 4 * w * (w ** 2 - alpha ** 2)
  assert np.max(np.abs(residual)) < 1e-4
  # ... where |w| - alpha = (t - w) / (4 lam |w| (|w| + alpha)), small.
  assert np.max(np.abs(np.abs(w) - alpha)) < 0.03
  assert np.mean(np.abs(np.abs(w0) - alpha)) > 0.2
