"""Sparsity patterns (N:M, blocks) against numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsify
from sparsify.core import patterns
from sparsify.core import topk
from sparsify.transforms import random as random_lib


def _nm_reference(scores, keep, m):
  """N:M by numpy: per group of ``m`` inputs, a stable argsort, first kept."""
  scores = np.asarray(scores, np.float64)
  axis = max(scores.ndim - 2, 0)
  inputs_last = np.moveaxis(scores, axis, -1)
  groups = inputs_last.reshape(-1, m)  # consecutive inputs of one output
  mask = np.zeros(groups.shape, bool)
  for row, order in enumerate(np.argsort(-groups, axis=1, kind="stable")):
    mask[row, order[:keep]] = True  # equal scores: the lower index first
  return np.moveaxis(mask.reshape(inputs_last.shape), -1, axis)


def _tile_reference(scores, b1, b2):
  """Tile norms by numpy; an edge tile as a full one of equal mean square."""
  scores = np.asarray(scores, np.float64)
  rows = int(np.prod(scores.shape[:-1])) if scores.ndim > 1 else scores.size
  view = scores.reshape(rows, -1)
  t1, t2 = -(-view.shape[0] // b1), -(-view.shape[1] // b2)
  norms = np.zeros((t1, t2))
  for i in range(t1):
    for j in range(t2):
      tile = view[i * b1:(i + 1) * b1, j * b2:(j + 1) * b2]
      norms[i, j] = np.sqrt(np.mean(tile ** 2) * b1 * b2)
  return norms


def _expand(tile_mask, shape, b1, b2):
  rows = int(np.prod(shape[:-1])) if len(shape) > 1 else int(np.prod(shape))
  full = np.repeat(np.repeat(tile_mask, b1, axis=0), b2, axis=1)
  return full[:rows, :int(np.prod(shape)) // rows].reshape(shape)


def _keep_largest_tiles(norms, sparsity):
  """The tiles at or above the k-th largest norm (ties kept, as topk)."""
  keep = norms.size - round(sparsity * norms.size)
  if keep == 0:
    return np.zeros(norms.shape, bool)
  return norms >= np.sort(norms.ravel())[::-1][keep - 1]


# Parsing.

@pytest.mark.parametrize("pattern,expected", [
    ("unstructured", "unstructured"),
    ("2:4", patterns.NByM(2, 4)),
    ("4:4", patterns.NByM(4, 4)),
    ("1:8", patterns.NByM(1, 8)),
    ((4, 1), patterns.Blocks(4, 1)),
    ([2, 3], patterns.Blocks(2, 3)),
    ((np.int64(2), 2), patterns.Blocks(2, 2)),
])
def test_parse_accepts(pattern, expected):
  assert patterns.parse(pattern) == expected
  assert patterns.parse(patterns.parse(pattern)) == expected


@pytest.mark.parametrize("pattern", [
    "3:2", "0:4", "2:0", "2/4", " 2:4", "-1:4", "2:4:8", "dense", "",
    (0, 2), (2,), (2, 2, 2), (1.5, 2), (True, 2), 4, None])
def test_parse_refuses_in_one_line(pattern):
  with pytest.raises(ValueError) as info:
    patterns.parse(pattern)
  message = str(info.value)
  assert "\n" not in message
  assert message == (
      f"pattern: got {pattern!r}; allowed: 'unstructured', 'N:M' with "
      "0 < N <= M, or a block shape (b1, b2)")


def test_n_by_m_implies_its_sparsity_and_a_per_layer_allocation():
  assert patterns.check_pattern("2:4", sparsity=0.5) == patterns.NByM(2, 4)
  assert patterns.check_pattern("1:3", sparsity=1 - 1 / 3)
  for schedule in (lambda t: 0.5 * t, jnp.asarray(0.3), None):
    patterns.check_pattern("2:4", sparsity=schedule)  # not checkable: pass
  with pytest.raises(ValueError, match=r"^sparsity: got 0.6; allowed: 0.5 "
                     r"with pattern '2:4' \(1 - N/M\)$"):
    patterns.check_pattern("2:4", sparsity=0.6)
  with pytest.raises(ValueError, match="^allocation: got 'global'; allowed: "
                     "'layerwise' with pattern '2:4'"):
    patterns.check_pattern("2:4", allocation="global")
  with pytest.raises(ValueError, match="^allocation: got 'erk'; allowed: "
                     "'uniform'"):
    patterns.check_pattern("1:4", allocation="erk", per_layer="uniform")
  # Blocks take any sparsity and a global allocation.
  patterns.check_pattern((2, 2), sparsity=0.7, allocation="global")


def test_a_layer_whose_inputs_do_not_split_into_groups_is_named():
  params = {"conv": {"kernel": jnp.ones((3, 3, 8, 5))},
            "out": {"kernel": jnp.ones((3, 3, 6, 5))}}
  with pytest.raises(ValueError) as info:
    patterns.check_layers(params, "2:4")
  assert str(info.value) == (
      "pattern '2:4': out/kernel has 6 inputs (axis 2 of shape (3, 3, 6, 5)), "
      "not a multiple of 4; leave it out with `where` or choose another "
      "pattern")
  patterns.check_layers(params, "1:2")
  patterns.check_layers(params, (4, 4))  # blocks may be ragged


# N:M.

@pytest.mark.parametrize("shape", [(16, 6), (3, 3, 8, 5), (16,)])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (1, 2), (5, 8)])
def test_n_by_m_matches_numpy(shape, n, m):
  rng = np.random.default_rng(n * 10 + m)
  scores = np.abs(rng.normal(size=shape)).astype(np.float32)
  mask = patterns.layer_mask(jnp.asarray(scores), 1 - n / m, f"{n}:{m}")
  np.testing.assert_array_equal(mask, _nm_reference(scores, n, m))


@pytest.mark.parametrize("shape", [(16, 6), (3, 3, 8, 5)])
def test_n_by_m_ties_go_to_the_lower_input_index(shape):
  rng = np.random.default_rng(1)
  scores = rng.integers(0, 3, size=shape).astype(np.float32)  # many ties
  scores[..., :4, 0] = 1.0  # a whole group tied
  for keep in range(5):
    mask = patterns.n_by_m_mask(jnp.asarray(scores), keep, 4)
    np.testing.assert_array_equal(mask, _nm_reference(scores, keep, 4))
  mask = np.asarray(patterns.n_by_m_mask(jnp.asarray(scores), 2, 4))
  np.testing.assert_array_equal(mask[..., :4, 0],
                                np.broadcast_to([True, True, False, False],
                                                mask[..., :4, 0].shape))


@pytest.mark.parametrize("shape", [(16, 6), (3, 3, 8, 5)])
def test_two_of_four_keeps_two_of_every_four_consecutive_inputs(shape):
  rng = np.random.default_rng(2)
  w = rng.normal(size=shape).astype(np.float32)
  mask = np.asarray(patterns.select({"k": jnp.abs(jnp.asarray(w))}, 0.5,
                                    "2:4")["k"])
  pruned = np.where(mask, w, 0.0)
  axis = max(len(shape) - 2, 0)
  inputs_last = np.moveaxis(pruned, axis, -1)
  per_group = (inputs_last.reshape(*inputs_last.shape[:-1], -1, 4) != 0).sum(
      axis=-1)
  assert np.all(per_group == 2)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.125, 0.2, 0.3, 0.375, 0.5,
                                      0.7, 0.99])
def test_gradual_n_by_m_keeps_the_rounded_count_never_below_n(sparsity):
  nm = patterns.parse("2:4")
  expected = max(2, 4 - round(np.float32(sparsity) * 4))  # half to even
  assert int(patterns.group_keep_count(nm, sparsity)) == expected
  traced = jax.jit(lambda s: patterns.group_keep_count(nm, s))(sparsity)
  assert int(traced) == expected
  rng = np.random.default_rng(3)
  scores = np.abs(rng.normal(size=(8, 3))).astype(np.float32)
  mask = patterns.layer_mask(jnp.asarray(scores), sparsity, nm)
  np.testing.assert_array_equal(mask, _nm_reference(scores, expected, 4))


# Blocks.

@pytest.mark.parametrize("shape,block", [
    ((16, 12), (4, 3)),       # tiles divide the kernel
    ((10, 7), (4, 3)),        # ragged edges on both sides
    ((3, 3, 4, 6), (4, 2)),   # a Conv kernel, viewed as (36, 6)
    ((3, 3, 3, 5), (2, 2)),   # a ragged Conv kernel (27, 5)
    ((10,), (4, 1)),          # a vector is one column
])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8])
def test_blocks_match_numpy(shape, block, sparsity):
  rng = np.random.default_rng(4)
  scores = np.abs(rng.normal(size=shape)).astype(np.float32)
  norms = _tile_reference(scores, *block)
  np.testing.assert_allclose(
      patterns.tile_scores(jnp.asarray(scores), patterns.parse(block)), norms,
      rtol=1e-6)
  expected = _expand(_keep_largest_tiles(norms, sparsity), shape, *block)
  mask = patterns.layer_mask(jnp.asarray(scores), sparsity, block)
  np.testing.assert_array_equal(mask, expected)


def test_blocks_of_all_layers_compete_under_global_allocation():
  rng = np.random.default_rng(5)
  a = np.abs(rng.normal(size=(8, 6))).astype(np.float32)
  b = 0.5 * np.abs(rng.normal(size=(3, 3, 2, 4))).astype(np.float32)
  norms = [_tile_reference(x, 2, 2) for x in (a, b)]
  pool = np.concatenate([n.ravel() for n in norms])
  keep = pool.size - round(0.6 * pool.size)
  kth = np.sort(pool)[::-1][keep - 1]
  masks = patterns.select({"a": jnp.asarray(a), "b": jnp.asarray(b)}, 0.6,
                          (2, 2), "global")
  np.testing.assert_array_equal(masks["a"],
                                _expand(norms[0] >= kth, a.shape, 2, 2))
  np.testing.assert_array_equal(masks["b"],
                                _expand(norms[1] >= kth, b.shape, 2, 2))
  # The smaller weights of b lose more tiles than a.
  assert np.mean(masks["b"]) < np.mean(masks["a"])


def test_a_ragged_edge_tile_competes_by_its_mean_square():
  # A (6, 4) kernel in 4x4 tiles: a full tile of ones (norm 4) and an edge
  # tile of 8 entries of 1.2, whose plain norm (3.39) is below 4 but which
  # scores 1.2 * 4 = 4.8 as a full tile of the same mean square: it is kept.
  w = np.ones((6, 4), np.float32)
  w[4:] = 1.2
  np.testing.assert_allclose(
      patterns.tile_scores(jnp.asarray(w), patterns.parse((4, 4))),
      [[4.0], [4.8]], rtol=1e-6)
  mask = np.asarray(patterns.layer_mask(jnp.asarray(w), 0.5, (4, 4)))
  np.testing.assert_array_equal(mask[:4], False)
  np.testing.assert_array_equal(mask[4:], True)
  # Sparsity counts tiles: one of two is pruned, 16 of 24 weights.
  assert np.sum(~mask) == 16


# What every pattern shares.

def test_unstructured_is_select_by_score_exactly():
  rng = np.random.default_rng(6)
  scores = {"a": jnp.asarray(np.abs(rng.normal(size=(20, 30))), jnp.float32),
            "b": jnp.asarray(np.abs(rng.normal(size=(3, 3, 4, 5))),
                             jnp.float32)}
  for allocation in ("layerwise", "global"):
    jax.tree.map(np.testing.assert_array_equal,
                 patterns.select(scores, 0.7, "unstructured", allocation),
                 topk.select_by_score(scores, 0.7, allocation))


def test_select_refuses_n_by_m_globally_and_bad_allocations():
  scores = {"a": jnp.ones((8, 2))}
  with pytest.raises(ValueError, match="^allocation: got 'global'"):
    patterns.select(scores, 0.5, "2:4", "global")
  with pytest.raises(ValueError, match="^allocation: got 'row'"):
    patterns.select(scores, 0.5, (2, 2), "row")


@pytest.mark.parametrize("pattern", ["2:4", (4, 2)])
def test_select_jits_and_takes_bfloat16(pattern):
  rng = np.random.default_rng(7)
  w = rng.normal(size=(3, 3, 8, 6)).astype(np.float32)
  w16 = jnp.asarray(w, jnp.bfloat16)
  select = jax.jit(lambda s, x: patterns.select({"k": jnp.abs(x)}, s,
                                                pattern)["k"])
  mask = np.asarray(select(0.5, w16))
  exact = np.abs(np.asarray(w16, np.float32))  # the bfloat16 values
  if pattern == "2:4":
    expected = _nm_reference(exact, 2, 4)
  else:
    expected = _expand(_keep_largest_tiles(_tile_reference(exact, 4, 2), 0.5),
                       w.shape, 4, 2)
  np.testing.assert_array_equal(mask, expected)


# The transforms that take a pattern, under optax.

FACTORIES = {
    "gmp": lambda pattern, s: sparsify.gradual_magnitude_pruning(
        s, begin_step=0, end_step=4, update_every=2, pattern=pattern),
    "one_shot": lambda pattern, s: sparsify.magnitude_pruning(
        s, step=2, pattern=pattern),
    "random": lambda pattern, s: sparsify.random_sparsity(
        s, seed=1, pattern=pattern),
    "random_pruning": lambda pattern, s: sparsify.random_pruning(
        s, step=2, seed=1, pattern=pattern),
}


def _model_params(dtype=jnp.float32):
  rng = np.random.default_rng(8)
  return {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 8)), dtype),
                   "bias": jnp.zeros(8, dtype)},
          "fc": {"kernel": jnp.asarray(rng.normal(size=(32, 6)), dtype),
                 "bias": jnp.zeros(6, dtype)}}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_transforms_end_with_a_valid_two_of_four_kernel(name, dtype):
  params = _model_params(dtype)
  tx = optax.chain(optax.sgd(0.1), FACTORIES[name]("2:4", 0.5))
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  rng = np.random.default_rng(9)
  for _ in range(6):
    grads = jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    params, state = step(params, state, grads)
  masks = sparsify.find_masks(state)
  for layer in ("conv", "fc"):
    kernel = np.asarray(params[layer]["kernel"], np.float32)
    mask = np.asarray(masks[layer]["kernel"])
    assert params[layer]["kernel"].dtype == dtype
    assert np.all(kernel[~mask] == 0.0)  # pruned weights are exactly zero
    inputs_last = np.moveaxis(mask, -2, -1)
    groups = inputs_last.reshape(*inputs_last.shape[:-1], -1, 4).sum(-1)
    assert np.all(groups == 2), layer
  assert np.all(np.asarray(params["fc"]["bias"]) != 0)  # not selected


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_transforms_prune_whole_blocks(name):
  params = _model_params()
  tx = FACTORIES[name]((4, 2), 0.5)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(5):
    updates, state = update(jax.tree.map(jnp.zeros_like, params), state,
                            params)
    params = optax.apply_updates(params, updates)
  masks = sparsify.find_masks(state)
  for layer, tiles in (("conv", (9, 4)), ("fc", (8, 3))):
    mask = np.asarray(masks[layer]["kernel"])
    view = mask.reshape(tiles[0] * 4, tiles[1] * 2)
    per_tile = view.reshape(tiles[0], 4, tiles[1], 2).sum(axis=(1, 3))
    assert set(np.unique(per_tile)) <= {0, 8}  # whole tiles
    assert np.sum(per_tile == 0) == round(0.5 * per_tile.size)
    kernel = np.asarray(params[layer]["kernel"])
    assert np.all(kernel[~mask] == 0.0)


def test_magnitude_blocks_keep_the_tiles_of_largest_norm():
  params = _model_params()
  tx = sparsify.magnitude_pruning(0.5, pattern=(4, 2), allocation="global")
  updates, state = tx.update(jax.tree.map(jnp.zeros_like, params),
                             tx.init(params), params)
  masks = sparsify.find_masks(state)
  norms = [_tile_reference(np.abs(np.asarray(params[k]["kernel"])), 4, 2)
           for k in ("conv", "fc")]
  pool = np.concatenate([n.ravel() for n in norms])
  kth = np.sort(pool)[::-1][pool.size - round(0.5 * pool.size) - 1]
  for layer, n in zip(("conv", "fc"), norms):
    shape = params[layer]["kernel"].shape
    np.testing.assert_array_equal(masks[layer]["kernel"],
                                  _expand(n >= kth, shape, 4, 2))
  new = optax.apply_updates(params, updates)
  assert np.all(np.asarray(new["fc"]["kernel"])[~np.asarray(
      masks["fc"]["kernel"])] == 0)


def test_random_n_by_m_is_uniform_over_the_group():
  # Over many seeds each position of a group is kept half the time.
  like = {"k": jnp.ones((4, 1))}
  draw = jax.jit(jax.vmap(lambda key: random_lib.random_masks(
      key, like, 0.5, pattern="2:4")["k"]))
  masks = np.asarray(draw(jax.random.split(jax.random.key(0), 2000)))
  assert np.all(masks.sum(axis=1) == 2)
  np.testing.assert_allclose(masks.mean(axis=0).ravel(), 0.5, atol=0.05)


@pytest.mark.parametrize("factory", [
    lambda **kw: sparsify.gradual_magnitude_pruning(
        begin_step=0, end_step=2, **kw),
    sparsify.magnitude_pruning, sparsify.random_sparsity,
    sparsify.random_pruning])
def test_factories_check_the_pattern_in_one_line(factory):
  with pytest.raises(ValueError, match="^pattern: got '3:2'; allowed: "):
    factory(sparsity=0.5, pattern="3:2")
  with pytest.raises(ValueError, match=r"^sparsity: got 0.75; allowed: 0.5 "
                     r"with pattern '2:4' \(1 - N/M\)$"):
    factory(sparsity=0.75, pattern="2:4")
  tx = factory(sparsity=0.5, pattern="2:4")
  with pytest.raises(ValueError, match="^pattern '2:4': fc/kernel has 6 "):
    tx.init({"fc": {"kernel": jnp.ones((6, 4))}})
