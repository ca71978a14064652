"""insert_gates and fold_gates on models sparsify did not define."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zoo

import sparsify
from sparsify.structure import insert
from sparsify.transforms import sss


def _close(actual, desired):
  """Equal up to float32 rounding: the gated function runs compiled."""
  np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-6)


_model = zoo.functional
_random_keep = zoo.random_keep


# One model of each kind of structure: neurons, channels through a flatten,
# residual streams with BatchNorm, heads, groups with squeeze-excitation, NNX.
NAMES = ["mlp", "lenet", "resnet18", "bert", "regnet", "nnx_resnet"]


@pytest.mark.parametrize("name", NAMES)
def test_ones_compute_the_model_and_zeros_the_masked_model(name):
  case, apply_fn, variables, x = _model(name)
  gated_apply, gates = insert.insert_gates(apply_fn, variables, x)
  assert gated_apply.units
  _close(gated_apply({**variables, **gates}, x),
                                apply_fn(variables, x))
  chosen = [gated_apply.structure[n] for n in gated_apply.units]
  keep = _random_keep(chosen)
  zeroed = {"gates": {n: jnp.asarray(k, jnp.float32)
                      for n, k in keep.items()}}
  masked = sparsify.mask(variables, gated_apply.structure, keep)
  np.testing.assert_allclose(gated_apply({**variables, **zeroed}, x),
                             apply_fn(masked, x), atol=1e-5, rtol=1e-5)


def test_an_mlp_with_random_gates_equals_numpy():
  case, apply_fn, variables, x = _model("mlp")
  gated_apply, gates = insert.insert_gates(apply_fn, variables, x)
  rng = np.random.default_rng(3)
  g = {n: rng.normal(size=v.shape).astype(np.float32)
       for n, v in gates["gates"].items()}
  p = jax.tree.map(np.asarray, variables["params"])
  h = np.asarray(x).reshape(len(x), -1)
  for i, unit in enumerate(["Dense_0", "Dense_1"]):  # hidden layers, relu
    layer = p[f"Dense_{i}"]
    h = np.maximum(h @ layer["kernel"] + layer["bias"], 0) * g[unit]
  want = h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
  got = gated_apply({**variables, "gates": g}, x)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_a_conv_models_random_gates_equal_scaled_consumer_kernels():
  # g * h read by a linear layer is the layer with its rows scaled by g.
  case, apply_fn, variables, x = _model("lenet")
  gated_apply, gates = insert.insert_gates(apply_fn, variables, x)
  rng = np.random.default_rng(4)
  g = {n: rng.uniform(-1, 2, v.shape).astype(np.float32)
       for n, v in gates["gates"].items()}
  p = jax.tree.map(np.array, variables["params"])
  p["Conv_0"]["kernel"] *= g["conv1"][None, None, :, None]
  p["Dense_0"]["kernel"] *= g["fc1"][:, None]
  p["logits"]["kernel"] *= g["Dense_0"][:, None]
  # fc1 reads the flattened 2x2x16 map: channel innermost.
  p["fc1"]["kernel"] *= np.tile(g["Conv_0"], 4)[:, None]
  want = apply_fn({**variables, "params": p}, x)
  got = gated_apply({**variables, "gates": g}, x)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "lenet", "vit", "nnx_cnn"])
def test_the_gradient_reaches_the_gates_and_matches_differences(name):
  case, apply_fn, variables, x = _model(name)
  gated_apply, gates = insert.insert_gates(apply_fn, variables, x)
  rng = np.random.default_rng(5)
  g = {n: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), jnp.float32)
       for n, v in gates["gates"].items()}

  def loss(g):
    return jnp.sum(jnp.sin(gated_apply({**variables, "gates": g}, x)))

  grads = jax.jit(jax.grad(loss))(g)
  for n in gated_apply.units:
    assert np.any(np.asarray(grads[n]) != 0), n
  unit = gated_apply.units[0]
  eps = 1e-3

  def at(delta):
    moved = dict(g)
    moved[unit] = g[unit].at[0].add(delta)
    return float(loss(moved))

  numeric = (at(eps) - at(-eps)) / (2 * eps)
  np.testing.assert_allclose(grads[unit][0], numeric, rtol=2e-2, atol=1e-4)


def test_jit_and_training_mode_with_batch_statistics():
  case = zoo.CASES["resnet18"]
  model = case.build()
  variables = zoo.variables(case)
  x = jnp.asarray(case.example())
  gated_apply, gates = insert.insert_gates(model.apply, variables, x,
                                           train=False)
  train = jax.jit(functools.partial(gated_apply, train=True,
                                    mutable=["batch_stats"]))
  out, updates = train({**variables, **gates}, x)
  want, want_updates = model.apply(variables, x, train=True,
                                   mutable=["batch_stats"])
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(want_updates)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  # A new batch size retraces.
  x4 = jnp.concatenate([x, x])
  np.testing.assert_allclose(
      jax.jit(functools.partial(gated_apply, train=False))(
          {**variables, **gates}, x4),
      model.apply(variables, x4, train=False), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["lenet", "resnet18", "regnet"])
def test_folded_gates_slim_to_the_gated_model(name):
  case, apply_fn, variables, x = _model(name)
  gated_apply, gates = insert.insert_gates(apply_fn, variables, x)
  chosen = [gated_apply.structure[n] for n in gated_apply.units]
  keep = _random_keep(chosen, seed=6)
  rng = np.random.default_rng(7)
  g = {n: jnp.asarray(rng.uniform(0.2, 2, k.shape) * k, jnp.float32)
       for n, k in keep.items()}
  folded = insert.fold_gates(variables, {"gates": g}, gated_apply.structure)
  slim_apply, small = sparsify.slim_model(apply_fn, folded, keep, x)
  assert sum(np.size(v) for v in jax.tree.leaves(small)) < sum(
      np.size(v) for v in jax.tree.leaves(variables))
  np.testing.assert_allclose(slim_apply(small, x),
                             gated_apply({**variables, "gates": g}, x),
                             atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["lenet", "resnet18", "vit", "nnx_cnn"])
def test_the_gated_model_itself_slims(name):
  case, apply_fn, variables, x = _model(name)
  gated_apply, gates = insert.insert_gates(apply_fn, variables, x)
  chosen = [gated_apply.structure[n] for n in gated_apply.units]
  keep = _random_keep(chosen, seed=8)
  rng = np.random.default_rng(9)
  g = {n: jnp.asarray(rng.uniform(0.2, 2, k.shape) * k, jnp.float32)
       for n, k in keep.items()}
  every = {**variables, "gates": g}
  gated = sparsify.structure_of(gated_apply, every, x)
  for n in gated_apply.units:  # the gate is one more producer of its unit
    assert f"gates/{n}" in {s.path for s in gated[n].producers()}
  slim_apply, small = sparsify.slim_model(gated_apply, every, keep, x)
  np.testing.assert_allclose(slim_apply(small, x), gated_apply(every, x),
                             atol=1e-5, rtol=1e-5)


def test_attention_scores_cannot_fold_but_heads_can():
  case, apply_fn, variables, x = _model("vit")
  gated_apply, gates = insert.insert_gates(apply_fn, variables, x,
                                           where=r"query:(head|neuron)")
  heads = {n: v for n, v in gates["gates"].items() if n.endswith(":head")}
  assert heads and len(heads) < len(gates["gates"])
  insert.fold_gates(variables, {"gates": heads}, gated_apply.structure)
  with pytest.raises(ValueError, match="cannot be folded"):
    insert.fold_gates(variables, gates, gated_apply.structure)


def test_where_selects_units_by_name_and_errors_name_what_is_allowed():
  case, apply_fn, variables, x = _model("lenet")
  gated_apply, gates = insert.insert_gates(apply_fn, variables, x,
                                           where=r"^fc1$")
  assert list(gates["gates"]) == ["fc1"] and gates["gates"]["fc1"].shape == (
      32,)
  with pytest.raises(ValueError, match="matches no exact unit"):
    insert.insert_gates(apply_fn, variables, x, where="nothing")
  with pytest.raises(ValueError, match="no 'gates' entry"):
    gated_apply(variables, x)
  with pytest.raises(ValueError, match="allowed: \\(32,\\)"):
    gated_apply({**variables, "gates": {"fc1": jnp.ones(3)}}, x)


def test_sss_defaults_to_inserted_gates_and_never_layernorm_scales():
  for name in ("vit", "bert"):
    case, apply_fn, variables, x = _model(name)
    params = variables["params"]
    norms = [n for n, _ in sparsify.named_leaves(params)
             if n.endswith("/scale")]
    assert norms  # the LayerNorms
    labels = dict(sparsify.named_leaves(sss.sss_labels(params)))
    assert all(labels[n] == "weights" for n in norms)
    assert not sss.batchnorm_scales(variables)
    gated_apply, gates = insert.insert_gates(apply_fn, variables, x)
    labels = dict(sparsify.named_leaves(
        sss.sss_labels({"params": params, **gates})))
    assert {n for n, v in labels.items() if v == "scales"} == {
        f"gates/{u}" for u in gated_apply.units}


def test_batchnorm_scales_are_found_by_their_statistics():
  case, apply_fn, variables, x = _model("resnet50")
  found = sss.batchnorm_scales(variables)
  want = {n[len("batch_stats/"):].rsplit("/", 1)[0] + "/scale"
          for n, _ in sparsify.named_leaves(variables)
          if n.startswith("batch_stats/") and n.endswith("/mean")}
  assert found == want and any("norm_proj" in n for n in found)
  case, apply_fn, state, x = _model("nnx_mlp")
  assert sss.batchnorm_scales(state) == {"bn/scale"}
