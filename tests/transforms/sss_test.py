"""SSS and Network Slimming: scales routed to APG, L1 on BatchNorm scales."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsify.transforms import proximal
from sparsify.transforms import sss


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
