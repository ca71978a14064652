"""SET and RigL against hand counts, closed forms and numpy references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsify.core import distributions
from sparsify.core import masking
from sparsify.transforms import dynamic

SHAPES = {"fc1": (12, 10), "fc2": (10, 6)}
# Kept weights at sparsity 0.7, by hand: 120 - 84 and 60 - 42.
KEPT_AT_07 = {"fc1": 36, "fc2": 18}
FACTORIES = [dynamic.rigl, dynamic.sparse_evolutionary_training]


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {name: {"kernel": jnp.asarray(rng.normal(size=shape), jnp.float32),
                 "bias": jnp.zeros(shape[1], jnp.float32)}
          for name, shape in SHAPES.items()}


def _targets():
  rng = np.random.default_rng(7)
  return {name: rng.normal(size=shape).astype(np.float32)
          for name, shape in SHAPES.items()}


def _loss(params, targets):
  """0.5 |W - T|^2 over the kernels: the gradient is W - T, dense."""
  return sum(0.5 * jnp.sum((params[n]["kernel"] - targets[n]) ** 2)
             for n in SHAPES)


def _masks(state):
  return {n: np.asarray(m["kernel"])
          for n, m in masking.find_masks(state).items()}


def _train(tx, steps, params=None, grads_fn=None):
  """Runs ``steps`` jitted steps; the masks and parameters after each."""
  params = _params() if params is None else params
  targets = _targets()
  state = tx.init(params)
  shapes = jax.eval_shape(lambda: state)

  @jax.jit
  def step(params, state):
    grads = (jax.grad(_loss)(params, targets) if grads_fn is None
             else grads_fn(params, state))
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  history = [(params, state)]
  for _ in range(steps):
    params, state = step(params, state)
    assert jax.eval_shape(lambda s=state: s) == shapes  # checkpointable
    history.append((params, state))
  return history


@pytest.mark.parametrize("factory", FACTORIES)
def test_every_layer_keeps_its_count_at_every_step_while_masks_change(
    factory):
  tx = factory(optax.sgd(0.1, momentum=0.9), sparsity=0.7, end_step=8,
               update_every=2, zeta=0.5)
  history = _train(tx, 12)
  changed_at = []
  for t, ((_, before), (params, after)) in enumerate(
      itertools.pairwise(history)):
    masks = _masks(after)
    for name, kept in KEPT_AT_07.items():
      assert int(masks[name].sum()) == kept, (t, name)
      kernel = np.asarray(params[name]["kernel"])
      assert np.all(kernel[~masks[name]] == 0.0)
    if any(np.any(masks[n] != _masks(before)[n]) for n in SHAPES):
      changed_at.append(t)
  # Updates at 2, 4, 6 (0 trains first; zeta is 0 at end_step = 8); none
  # after end_step.
  assert changed_at == [2, 4, 6]


def _reference_drop_and_grow(w, m, g, fraction):
  """RigL's update of one layer from the paper, in numpy (float64)."""
  n = int(m.sum())
  k = int(np.round(fraction * n))
  magnitude = np.where(m, np.abs(w), -1.0).ravel()
  order = np.argsort(-magnitude, kind="stable")  # ties to the first
  survivors = np.zeros(w.size, bool)
  survivors[order[:n - k]] = True
  growth = np.where(survivors, -1.0, np.abs(g).ravel())
  grown = np.zeros(w.size, bool)
  grown[np.argsort(-growth, kind="stable")[:k]] = True
  return survivors.reshape(w.shape), grown.reshape(w.shape)


@pytest.mark.parametrize("opt", ["momentum", "adam"])
def test_rigl_drops_smallest_and_grows_largest_gradients_from_zero(opt):
  optimizer = {"momentum": optax.sgd(0.1, momentum=0.9),
               "adam": optax.adam(0.05)}[opt]
  zeta, end, every = 0.4, 20, 5
  tx = dynamic.rigl(optimizer, sparsity=0.7, end_step=end,
                    update_every=every, zeta=zeta)
  history = _train(tx, every + 1)
  (before, state_before), (after, state_after) = history[every:]
  fraction = zeta / 2 * (1 + np.cos(np.pi * every / end))
  targets = _targets()
  for name in SHAPES:
    w = np.asarray(before[name]["kernel"], np.float64)
    m = _masks(state_before)[name]
    g = w - targets[name]  # the loss's gradient, pruned weights included
    survivors, grown = _reference_drop_and_grow(w, m, g, fraction)
    new = _masks(state_after)[name]
    np.testing.assert_array_equal(new, survivors | grown)
    entered = new & ~m
    assert (m & ~new).sum() == entered.sum() > 0
    # Dropped: the smallest kept magnitudes; grown: the largest |gradient|
    # outside the survivors (a dropped weight may be grown back).
    assert np.abs(w[m & ~survivors]).max() <= np.abs(w[survivors]).min()
    assert np.abs(g[grown]).min() >= np.abs(g[~survivors & ~grown]).max()
    # Grown weights start at exactly zero, with zero optimizer slots.
    assert np.all(np.asarray(after[name]["kernel"])[entered] == 0.0)
    inner = state_after.inner
    slots = ([inner[0].trace] if opt == "momentum"
             else [inner[0].mu, inner[0].nu])
    for slot in slots:
      assert np.all(np.asarray(slot[name]["kernel"])[entered] == 0.0)
      assert np.any(np.asarray(slot[name]["kernel"])[m & new] != 0.0)


def test_drop_fraction_is_the_cosine_decay():
  zeta, end = 0.3, 1000
  for t in (0, 1, 250, 500, 777, 999, 1000, 1500):
    want = zeta / 2 * (1 + np.cos(np.pi * t / end)) if t < end else 0.0
    got = float(jax.jit(dynamic.drop_fraction)(t, zeta, end))
    assert got == pytest.approx(want, abs=1e-6), t


def test_each_update_replaces_round_zeta_t_of_the_kept_weights():
  zeta, end, every = 0.5, 16, 2

  def grads_fn(params, state):
    # Zero on kept weights, at least 1 on pruned ones: a dropped weight is
    # never grown back, so every replaced weight is a new one.
    masks = masking.find_masks(state)
    return jax.tree.map(
        lambda p, m: p * 0 if masking.types.is_no_mask(m) else jnp.where(
            m, 0.0, 1.0 + jnp.abs(jnp.sin(jnp.arange(p.size)))
            .reshape(p.shape)), params, masks,
        is_leaf=masking.types.is_no_mask)

  tx = dynamic.rigl(optax.sgd(0.1), sparsity=0.7, end_step=end,
                    update_every=every, zeta=zeta)
  history = _train(tx, end + 2, grads_fn=grads_fn)
  for t, ((_, before), (_, after)) in enumerate(itertools.pairwise(history)):
    for name, n in KEPT_AT_07.items():
      entered = int((_masks(after)[name] & ~_masks(before)[name]).sum())
      want = 0
      if t % every == 0 and 0 < t < end:
        want = int(np.round(zeta / 2 * (1 + np.cos(np.pi * t / end)) * n))
      assert entered == want, (t, name)


@pytest.mark.parametrize("factory", FACTORIES)
def test_erk_allocation_keeps_the_erk_counts(factory):
  sparsity = 0.8
  densities = distributions.erk_densities(list(SHAPES.values()), sparsity)
  kept = {name: int(np.prod(shape)) - int(np.round((1 - d) * np.prod(shape)))
          for (name, shape), d in zip(SHAPES.items(), densities)}
  assert kept["fc1"] / 120 < kept["fc2"] / 60  # the larger layer is sparser
  tx = factory(optax.sgd(0.1), sparsity=sparsity, end_step=6, update_every=2,
               allocation="erk")
  for _, state in _train(tx, 7):
    for name, n in kept.items():
      assert int(_masks(state)[name].sum()) == n


def test_set_growth_is_reproducible_from_the_seed():
  def run(seed):
    tx = dynamic.sparse_evolutionary_training(
        optax.sgd(0.1), sparsity=0.7, end_step=8, update_every=2, seed=seed)
    return [_masks(state) for _, state in _train(tx, 7)]

  first, again, other = run(3), run(3), run(4)
  for a, b in zip(first, again):
    for name in SHAPES:
      np.testing.assert_array_equal(a[name], b[name])
  assert any(np.any(a[n] != b[n]) for a, b in zip(first, other)
             for n in SHAPES)


def test_arguments_are_checked_and_patterns_named():
  with pytest.raises(ValueError, match="sparsity"):
    dynamic.rigl(optax.sgd(0.1), sparsity=1.0, end_step=10)
  with pytest.raises(ValueError, match="zeta"):
    dynamic.rigl(optax.sgd(0.1), sparsity=0.5, end_step=10, zeta=1.5)
  with pytest.raises(ValueError, match="pattern: got '2:4'; allowed: "
                     "'unstructured' or a block shape"):
    dynamic.sparse_evolutionary_training(
        optax.sgd(0.1), sparsity=0.5, end_step=10, pattern="2:4")
  with pytest.raises(ValueError, match="fc1/kernel.*whole number of tiles"):
    dynamic.rigl(optax.sgd(0.1), sparsity=0.5, end_step=10,
                 pattern=(5, 5)).init(_params())


def _tiles(mask, rows, cols):
  """Per tile of a 2-D mask: (all kept, any kept)."""
  r, c = mask.shape
  t = mask.reshape(r // rows, rows, c // cols, cols)
  return t.all(axis=(1, 3)), t.any(axis=(1, 3))


@pytest.mark.parametrize("factory", FACTORIES)
def test_block_pattern_drops_and_grows_whole_tiles(factory):
  block = (2, 2)  # fc1 (12, 10): 30 tiles, 9 kept; fc2 (10, 6): 15, 4 kept
  kept_tiles = {"fc1": 30 - round(0.7 * 30), "fc2": 15 - round(0.7 * 15)}
  tx = factory(optax.sgd(0.1), sparsity=0.7, end_step=8, update_every=2,
               zeta=0.5, pattern=block)
  history = _train(tx, 8)
  targets = _targets()
  changed = False
  for t, ((before, state_before), (_, state_after)) in enumerate(
      itertools.pairwise(history)):
    for name in SHAPES:
      old, new = _masks(state_before)[name], _masks(state_after)[name]
      every, some = _tiles(new, *block)
      np.testing.assert_array_equal(every, some)  # whole tiles only
      assert every.sum() == kept_tiles[name]
      changed |= bool(np.any(old != new))
      if factory is dynamic.rigl:
        # The unstructured reference on tiles: a tile's magnitude is the
        # norm of its weights, its growth score the norm of its gradient.
        w = np.asarray(before[name]["kernel"], np.float64)
        g = w - targets[name]
        fraction = (0.25 * (1 + np.cos(np.pi * t / 8))
                    if t % 2 == 0 and 0 < t < 8 else 0.0)
        survivors, grown = _reference_drop_and_grow(
            np.sqrt(_tile_sums(np.where(old, w, 0) ** 2, *block)),
            _tiles(old, *block)[0],
            np.sqrt(_tile_sums(g ** 2, *block)), fraction)
        np.testing.assert_array_equal(every, survivors | grown)
  assert changed


def _tile_sums(x, rows, cols):
  r, c = x.shape
  return x.reshape(r // rows, rows, c // cols, cols).sum(axis=(1, 3))


# How flax's TrainState and nnx.Optimizer drive these transforms (no extra
# call, state shapes fixed, masks applied) is tests/transforms/contract_test.py's.
