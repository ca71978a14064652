"""LCT's ternarization and σ-constrained SGD, against numpy references."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsify.core import paths
from sparsify.core import types
from sparsify.structure import significance
from sparsify.transforms import ternary


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "fc1": {"kernel": jnp.asarray(rng.normal(size=(12, 16)), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=16), jnp.float32)},
      "fc2": {"kernel": jnp.asarray(0.5 * rng.normal(size=(16, 6)),
                                    jnp.float32),
              "bias": jnp.zeros(6, jnp.float32)},
  }


def _pruned(params, keep=0.6, seed=1):
  """Params with a random fraction of each kernel set to zero."""
  rng = np.random.default_rng(seed)
  return {k: {"kernel": jnp.where(rng.random(v["kernel"].shape) < keep,
                                  v["kernel"], 0.0), "bias": v["bias"]}
          for k, v in params.items()}


def _grads(params, steps, seed=2, scale=0.3):
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda x: np.float32(scale) * rng.normal(
      size=x.shape).astype(np.float32), params) for _ in range(steps)]


def _round16(sigma):
  """Reference rounding to 16 significant bits, ties to even (numpy)."""
  mantissa, exponent = np.frexp(np.float64(np.float32(sigma)))
  return np.float32(np.ldexp(np.round(mantissa * 2.0**16), exponent - 16))


def _run(tx, params, grads):
  """Jitted steps; yields (params, opt_state) after each update."""
  state = jax.jit(tx.init)(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for g in grads:
    params, state = step(params, state, g)
    yield params, state


def _ternary_state(opt_state):
  found = [s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, ternary.TernaryState))
           if isinstance(s, ternary.TernaryState)]
  assert len(found) == 1
  return found[0]


def test_sigma_of_and_ternarize_by_hand():
  w = jnp.array([-2.0, 0.5, 3.0, -0.25])
  mask = jnp.array([True, False, True, True])
  assert float(ternary.sigma_of(w, mask)) == pytest.approx((2 + 3 + 0.25) / 3)
  assert float(ternary.sigma_of(w, jnp.zeros(4, bool))) == 0.0
  np.testing.assert_array_equal(ternary.ternarize(w, mask, 1.5),
                                [-1.5, 0.0, 1.5, -1.5])
  np.testing.assert_array_equal(ternary.ternarize(w, mask, 1.5, delta=0.3),
                                [-1.5, 0.0, 1.5, 0.0])
  with pytest.raises(ValueError, match="mask"):
    ternary.ternarize(w, jnp.ones(3, bool), 1.0)


def test_ternarize_rounds_sigma_to_16_significant_bits():
  sigmas = np.random.default_rng(3).lognormal(size=200).astype(np.float32)
  out = jax.vmap(lambda s: ternary.ternarize(jnp.ones(1), jnp.ones(1, bool), s))(
      sigmas)
  np.testing.assert_array_equal(out[:, 0], [_round16(s) for s in sigmas])


def test_ternary_bits_by_hand():
  mask = np.zeros((10, 10), bool)
  mask.ravel()[:30] = True
  assert ternary.ternary_bits(mask) == 100 + 30 + 32
  assert ternary.ternary_bits(mask, encoding="two_bit") == 200 + 32
  assert ternary.ternary_bits(mask, encoding="base3") == 8 * 20 + 32
  odd = np.ones(7, bool)  # 7 weights: 2 bytes of base-3 digits
  assert ternary.ternary_bits(odd, encoding="base3") == 16 + 32
  tree = {"a": mask, "b": {"kernel": odd}}
  assert ternary.ternary_bits(tree) == (100 + 30 + 32) + (7 + 7 + 32)
  with pytest.raises(ValueError, match="encoding"):
    ternary.ternary_bits(mask, encoding="huffman")


@pytest.mark.parametrize("opt", ["sgd", "momentum"])
@pytest.mark.parametrize("sigma,threshold", [("mean", 0.0), ("mean", 0.5),
                                             ("learned", 0.0)])
def test_constrained_layers_stay_ternary(opt, sigma, threshold):
  params = _pruned(_params())
  chain = {"sgd": optax.sgd(0.05),
           "momentum": optax.sgd(0.05, momentum=0.9)}[opt]
  tx = optax.chain(chain, ternary.ternary_constrained(
      sigma=sigma, threshold=threshold, sigma_learning_rate=0.01))
  grads = _grads(params, 6)
  plain = list(_run(chain, params, grads))
  masks = {k: np.asarray(v["kernel"]) != 0 for k, v in params.items()}
  latent_ref = {k: np.asarray(v["kernel"]) for k, v in params.items()}
  for i, (new, state) in enumerate(_run(tx, params, grads)):
    ts = _ternary_state(state)
    for k in ("fc1", "fc2"):
      kernel = np.asarray(new[k]["kernel"])
      latent = np.asarray(ts.latent[k]["kernel"])
      s = float(ts.sigma[k]["kernel"])
      m = masks[k]
      assert np.all(kernel[~m] == 0) and np.all(latent[~m] == 0)
      assert set(np.unique(np.abs(kernel))) <= {0.0, _round16(s)}
      mean = np.abs(latent[m]).astype(np.float64).mean()
      expected = np.where(m & (np.abs(latent) > threshold * mean),
                          np.sign(latent) * _round16(s), 0)
      np.testing.assert_array_equal(kernel, expected)
      np.testing.assert_array_equal(kernel, ternary.ternarize(
          latent, m, s, threshold * ternary.sigma_of(latent, m)))
      if sigma == "mean":
        np.testing.assert_allclose(s, mean, rtol=1e-6)
      if opt == "sgd":  # the latent follows the plain SGD steps
        latent_ref[k] = np.where(
            m, latent_ref[k] - np.float32(0.05) * grads[i][k]["kernel"], 0)
        np.testing.assert_allclose(latent, latent_ref[k], rtol=1e-6,
                                   atol=1e-6)
      # Unselected leaves get the plain chain's update, bit for bit.
      np.testing.assert_array_equal(new[k]["bias"], plain[i][0][k]["bias"])
    if threshold == 0.0:  # no zeros inside the mask with a zero dead zone
      assert all(np.all(np.asarray(new[k]["kernel"])[masks[k]] != 0)
                 for k in ("fc1", "fc2"))


def test_learned_sigma_follows_its_gradient():
  params = _pruned(_params())
  lr, lr_sigma = 0.05, 0.02
  tx = optax.chain(optax.sgd(lr), ternary.ternary_constrained(
      where="fc1/kernel", sigma="learned", sigma_learning_rate=lr_sigma))
  grads = _grads(params, 3, seed=5)
  p = np.asarray(params["fc1"]["kernel"], np.float64)
  m = p != 0
  sigma = np.abs(p[m]).mean()
  latent = p.copy()
  weights = p.copy()  # the point at which each gradient is taken
  for (new, state), g in zip(_run(tx, params, grads), grads):
    g = np.asarray(g["fc1"]["kernel"], np.float64)
    # dL/dsigma = sum over the non-zero ternary entries of g * sign(w).
    sigma = max(0.0, sigma - lr_sigma * lr * np.sum(g * np.sign(weights) * m))
    latent = np.where(m, latent - lr * g, 0)
    weights = np.where(m, np.sign(latent), 0) * np.float64(_round16(sigma))
    ts = _ternary_state(state)
    np.testing.assert_allclose(float(ts.sigma["fc1"]["kernel"]), sigma,
                               rtol=1e-5)
    np.testing.assert_allclose(new["fc1"]["kernel"], weights, rtol=2.0**-15)
    assert np.all(np.sign(new["fc1"]["kernel"]) == np.sign(weights))
  # fc2 is not constrained: plain SGD.
  np.testing.assert_allclose(
      new["fc2"]["kernel"],
      params["fc2"]["kernel"] - lr * sum(g["fc2"]["kernel"] for g in grads),
      rtol=1e-5, atol=1e-6)


def test_learned_sigma_is_clamped_at_zero():
  params = _pruned(_params())
  kernel = params["fc1"]["kernel"]
  grads = jax.tree.map(jnp.zeros_like, params)
  grads["fc1"]["kernel"] = jnp.sign(kernel)  # every step shrinks sigma
  tx = optax.chain(optax.sgd(0.1), ternary.ternary_constrained(
      where="fc1/kernel", sigma="learned", sigma_learning_rate=10.0))
  new, state = next(_run(tx, params, [grads]))
  assert float(_ternary_state(state).sigma["fc1"]["kernel"]) == 0.0
  assert np.all(np.asarray(new["fc1"]["kernel"]) == 0)
  # The pattern still comes from the latent weights: sigma grows back.
  k = np.asarray(kernel, np.float64)
  latent = np.where(k != 0, k - 0.1 * np.sign(k), 0)  # after the first step
  pattern = np.sign(latent)
  tx_state = state
  update = jax.jit(tx.update)
  back = jax.tree.map(jnp.zeros_like, params)
  back["fc1"]["kernel"] = -jnp.sign(kernel)  # the latent keeps its signs
  updates, tx_state = update(back, tx_state, new)
  again = optax.apply_updates(new, updates)
  sigma = float(_ternary_state(tx_state).sigma["fc1"]["kernel"])
  # sigma = 0 + 10 * sum(u * pattern), u = +0.1 sign(w) from sgd(0.1).
  expected = 10.0 * np.sum(0.1 * np.sign(k) * pattern)
  assert expected > 0
  np.testing.assert_allclose(sigma, expected, rtol=1e-5)
  latent = np.where(k != 0, latent + 0.1 * np.sign(k), 0)
  np.testing.assert_allclose(np.asarray(again["fc1"]["kernel"]),
                             np.sign(latent) * sigma, rtol=2.0**-15)


def test_first_step_lands_on_zero_where_float32_cannot_reach_the_target():
  # 1 + 2**-23 flipping to -sigma: no float32 update u gives p + u == -sigma.
  p = np.float32(1 + 2.0**-23)
  params = {"kernel": jnp.array([[p, 1.0], [1.0, 1.0]], jnp.float32)}
  push = {"kernel": jnp.array([[2.5, 0.0], [0.0, 0.0]], jnp.float32)}
  still = {"kernel": jnp.zeros((2, 2), jnp.float32)}
  tx = optax.chain(optax.sgd(1.0), ternary.ternary_constrained())
  steps = [np.asarray(new["kernel"]) for new, _ in _run(tx, params,
                                                        [push, still])]
  sigma = _round16((1.5 - 2.0**-23 + 3.0) / 4)  # mean |latent| = 1.125
  assert sigma == 1.125
  np.testing.assert_array_equal(steps[0], [[0.0, sigma], [sigma, sigma]])
  np.testing.assert_array_equal(steps[1], [[-sigma, sigma], [sigma, sigma]])


def test_given_masks_and_layer_selection():
  params = _params()  # dense: the mask comes from layer_significance
  sig = significance.layer_significance(params, sparsity=0.5)
  tx = optax.chain(optax.sgd(0.05), ternary.ternary_constrained(
      where=[sig.order[0]], masks=sig.masks))
  new, state = next(_run(tx, params, _grads(params, 1)))
  chosen = sig.order[0].split("/")[0]
  other = "fc2" if chosen == "fc1" else "fc1"
  mask = np.asarray(sig.masks[chosen]["kernel"])
  kernel = np.asarray(new[chosen]["kernel"])
  assert np.all(kernel[~mask] == 0) and np.all(kernel[mask] != 0)
  assert len(np.unique(kernel)) == 3
  assert len(np.unique(np.asarray(new[other]["kernel"]))) > 3
  ts = _ternary_state(state)
  assert types.is_no_mask(ts.latent[other]["kernel"])  # not constrained
  # A dict keyed by path works the same way.
  flat = {sig.order[0]: dict(paths.named_leaves(sig.masks))[sig.order[0]]}
  tx2 = optax.chain(optax.sgd(0.05), ternary.ternary_constrained(
      where=sig.order[0], masks=flat))
  new2, _ = next(_run(tx2, params, _grads(params, 1)))
  jax.tree.map(np.testing.assert_array_equal, new, new2)


def test_works_under_optax_masked():
  params = _pruned(_params())

  def only_fc1(p):
    return {k: jax.tree.map(lambda _, k=k: k == "fc1", v) for k, v in p.items()}

  chain = optax.sgd(0.05, momentum=0.9)
  tx = optax.chain(chain, optax.masked(ternary.ternary_constrained(), only_fc1))
  grads = _grads(params, 4)
  for (new, _), (ref, _) in zip(_run(tx, params, grads),
                                _run(chain, params, grads)):
    jax.tree.map(np.testing.assert_array_equal, new["fc2"], ref["fc2"])
    assert len(np.unique(np.asarray(new["fc1"]["kernel"]))) == 3


def test_works_under_inject_hyperparams():
  factory = ternary.ternary_constrained
  kwargs = dict(sigma="learned", sigma_learning_rate=0.01, threshold=0.4)
  static = tuple(k for k in inspect.signature(factory).parameters
                 if k not in ("sigma_learning_rate", "threshold"))
  injected = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
  params = _pruned(_params())
  grads = _grads(params, 3)
  a = list(_run(optax.chain(optax.sgd(0.05), injected), params, grads))
  b = list(_run(optax.chain(optax.sgd(0.05), factory(**kwargs)), params,
                grads))
  jax.tree.map(np.testing.assert_array_equal, a[-1][0], b[-1][0])


def test_rejects_bad_input():
  params = _params()
  tx = ternary.ternary_constrained()
  with pytest.raises(ValueError, match="params"):
    tx.update(params, tx.init(params))
  with pytest.raises(ValueError, match="sigma"):
    ternary.ternary_constrained(sigma="median")
  with pytest.raises(ValueError, match="threshold"):
    ternary.ternary_constrained(threshold=-0.1)
  with pytest.raises(ValueError, match="sigma_learning_rate"):
    ternary.ternary_constrained(sigma_learning_rate=-1.0)
  with pytest.raises(ValueError, match="fc3/kernel"):
    ternary.ternary_constrained(where=["fc3/kernel"]).init(params)
  with pytest.raises(ValueError, match="fc1/bias"):  # not a candidate
    ternary.ternary_constrained(where=["fc1/bias"]).init(params)
  with pytest.raises(ValueError, match="shape"):
    ternary.ternary_constrained(
        masks={"fc1/kernel": np.ones((3, 3), bool)}).init(params)


@pytest.mark.parametrize("sigma", ["mean", "learned"])
def test_regression_trains_while_ternary(sigma):
  rng = np.random.default_rng(6)
  target_mask = rng.random((10, 3)) < 0.5
  target = np.where(target_mask, np.sign(rng.normal(size=(10, 3))) * 0.7, 0)
  x = rng.normal(size=(128, 10)).astype(np.float32)
  y = (x @ target).astype(np.float32)
  params = {"dense": {"kernel": jnp.asarray(
      np.where(target_mask, 0.1 * rng.normal(size=(10, 3)), 0), jnp.float32),
                      "bias": jnp.zeros(3, jnp.float32)}}

  def loss(p):
    return jnp.mean((x @ p["dense"]["kernel"] + p["dense"]["bias"] - y) ** 2)

  tx = optax.chain(optax.sgd(0.05), ternary.ternary_constrained(
      sigma=sigma, sigma_learning_rate=0.02))
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value

  first = None
  for _ in range(150):
    params, state, value = step(params, state)
    first = value if first is None else first
    kernel = np.asarray(params["dense"]["kernel"])
    assert len(np.unique(kernel)) <= 3 and np.all(kernel[~target_mask] == 0)
  final = float(loss(params))
  assert final < 0.05 * float(first)
  np.testing.assert_array_equal(np.sign(kernel), np.sign(target))
