"""GMP and one-shot magnitude pruning against their closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsify
from sparsify.transforms import magnitude


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "Dense_0": {"kernel": jnp.asarray(rng.normal(size=(20, 30)),
                                        jnp.float32),
                  "bias": jnp.asarray(rng.normal(size=30), jnp.float32)},
      "Dense_1": {"kernel": jnp.asarray(rng.normal(size=(30, 5)),
                                        jnp.float32),
                  "bias": jnp.zeros(5, jnp.float32)},
  }


def test_gmp_follows_cubic_schedule():
  params = _params()
  final, begin, end, every = 0.8, 2, 11, 2  # 11: the end is off the grid
  tx = optax.chain(optax.sgd(0.01), magnitude.gradual_magnitude_pruning(
      final, begin_step=begin, end_step=end, update_every=every))
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  current = 0.0
  for t in range(16):
    params, state = step(params, state)
    if begin <= t <= end and ((t - begin) % every == 0 or t == end):
      current = final * (1 - (1 - (t - begin) / (end - begin)) ** 3)
    for layer, size in (("Dense_0", 600), ("Dense_1", 150)):
      zeros = int(np.sum(np.asarray(params[layer]["kernel"]) == 0))
      assert zeros == round(current * size), (t, layer)


def test_gmp_reads_a_sparsity_schedule_at_each_update():
  # The final sparsity itself follows a schedule: s_f(t) = 0.05 t, and with
  # power 1 over steps 0..10, s_t = s_f(t) * t / 10.
  params = _params()
  tx = optax.chain(optax.sgd(0.0), magnitude.gradual_magnitude_pruning(
      lambda t: 0.05 * t, begin_step=0, end_step=10, update_every=1,
      power=1.0))
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(11):
    updates, state = step(jax.tree.map(jnp.zeros_like, params), state, params)
    params = optax.apply_updates(params, updates)
    zeros = int(np.sum(np.asarray(params["Dense_0"]["kernel"]) == 0))
    assert zeros == round(np.float32(0.05 * t * t / 10) * 600), t


def test_one_shot_magnitude_prunes_smallest():
  params = _params()
  tx = magnitude.magnitude_pruning(0.5, step=0)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params),
                         params)
  new = optax.apply_updates(params, updates)
  kernel = np.asarray(params["Dense_0"]["kernel"])
  expected = np.abs(kernel) >= np.sort(np.abs(kernel).ravel())[300]
  np.testing.assert_array_equal(np.asarray(new["Dense_0"]["kernel"]) != 0,
                                expected)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="sparsity: got 1.0"):
    magnitude.gradual_magnitude_pruning(1.0, begin_step=0, end_step=1)
  with pytest.raises(ValueError, match="end_step"):
    magnitude.gradual_magnitude_pruning(0.5, begin_step=3, end_step=1)
  with pytest.raises(ValueError, match="allocation: got 'row'"):
    magnitude.magnitude_pruning(0.5, allocation="row")


@pytest.mark.parametrize("factory,kwargs", [
    (sparsify.gradual_magnitude_pruning,
     dict(sparsity=0.9, begin_step=0, end_step=10, update_every=1)),
    (sparsify.magnitude_pruning, dict(sparsity=0.5, step=3)),
    (sparsify.dynamic_adaptive_threshold,
     dict(c=1.0, begin_step=0, end_step=10, update_every=2)),
])
def test_every_argument_can_be_injected(factory, kwargs):
  # No static_args: step windows and counts are traced too, and the result
  # equals the plain transform's, step by step.
  params = {"w": {"kernel": jnp.arange(64.0).reshape(8, 8) - 20.0}}
  injected, plain = optax.inject_hyperparams(factory)(**kwargs), factory(
      **kwargs)
  a, b = params, params
  sa, sb = injected.init(a), plain.init(b)
  for _ in range(12):
    ua, sa = jax.jit(injected.update)(a, sa, a)
    ub, sb = jax.jit(plain.update)(b, sb, b)
    a, b = optax.apply_updates(a, ua), optax.apply_updates(b, ub)
    np.testing.assert_array_equal(a["w"]["kernel"], b["w"]["kernel"])
  assert np.sum(np.asarray(a["w"]["kernel"]) == 0) > 0


def test_gmp_two_of_four_goes_four_three_two_on_the_cubic_schedule():
  # Dense_0 (20, 30) is 5 groups of 4 inputs per output; every group keeps
  # max(2, 4 - round(4 s_t)) weights, s_t the cubic schedule to 0.5.
  params = {"Dense_0": _params()["Dense_0"]}
  begin, end = 0, 8
  tx = optax.chain(optax.sgd(0.01), magnitude.gradual_magnitude_pruning(
      0.5, begin_step=begin, end_step=end, update_every=1, pattern="2:4"))
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state,
                               params)
    return optax.apply_updates(params, updates), state

  seen = []
  for t in range(10):
    params, state = step(params, state)
    s = np.float32(0.5 * (1 - (1 - min(t, end) / end) ** 3))
    keep = max(2, 4 - round(s * 4))
    kernel = np.asarray(params["Dense_0"]["kernel"])
    per_group = (kernel.T.reshape(30, 5, 4) != 0).sum(axis=-1)
    assert np.all(per_group == keep), t
    seen.append(keep)
  assert seen[0] == 4 and 3 in seen and seen[-1] == 2


def test_gmp_blocks_follow_the_schedule_in_tiles():
  params = _params()  # Dense_0 (20, 30): 5 x 10 tiles of (4, 3)
  tx = magnitude.gradual_magnitude_pruning(
      0.8, begin_step=0, end_step=4, update_every=2, pattern=(4, 3),
      where="Dense_0/kernel")
  state = tx.init(params)
  update = jax.jit(tx.update)
  for t in range(5):
    updates, state = update(jax.tree.map(jnp.zeros_like, params), state,
                            params)
    params = optax.apply_updates(params, updates)
  kernel = np.asarray(params["Dense_0"]["kernel"])
  tiles = (kernel.reshape(5, 4, 10, 3) != 0).sum(axis=(1, 3))
  assert set(np.unique(tiles)) == {0, 12}
  assert np.sum(tiles == 0) == round(0.8 * 50)
  assert np.all(np.asarray(params["Dense_1"]["kernel"]) != 0)


def test_pattern_is_static_under_inject_hyperparams():
  params = {"w": {"kernel": jnp.arange(64.0).reshape(8, 8) - 20.5}}
  kwargs = dict(sparsity=0.5, begin_step=0, end_step=4, update_every=2,
                pattern="2:4")
  injected = optax.inject_hyperparams(magnitude.gradual_magnitude_pruning)(
      **kwargs)
  plain = magnitude.gradual_magnitude_pruning(**kwargs)
  a, sa, b, sb = params, injected.init(params), params, plain.init(params)
  for _ in range(6):
    ua, sa = jax.jit(injected.update)(a, sa, a)
    ub, sb = jax.jit(plain.update)(b, sb, b)
    a, b = optax.apply_updates(a, ua), optax.apply_updates(b, ub)
  np.testing.assert_array_equal(a["w"]["kernel"], b["w"]["kernel"])
  assert np.all((np.asarray(a["w"]["kernel"]).reshape(2, 4, 8) != 0).sum(1)
                == 2)


def test_pattern_arguments_are_named():
  with pytest.raises(ValueError, match="^pattern: got '4:2'; allowed: "):
    magnitude.magnitude_pruning(0.5, pattern="4:2")
  with pytest.raises(ValueError, match="^sparsity: got 0.9; allowed: 0.5 "
                     "with pattern '2:4'"):
    magnitude.gradual_magnitude_pruning(0.9, begin_step=0, end_step=1,
                                        pattern="2:4")
  with pytest.raises(ValueError, match="^allocation: got 'global'; allowed: "
                     "'layerwise' with pattern '1:4'"):
    magnitude.magnitude_pruning(0.75, pattern="1:4", allocation="global")
  tx = magnitude.magnitude_pruning(0.5, pattern="2:4")
  with pytest.raises(ValueError, match="^pattern '2:4': Dense_1/kernel has "
                     "30 inputs"):
    tx.init(_params())
