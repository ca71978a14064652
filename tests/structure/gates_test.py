"""Gates: their arithmetic, and where the models put them."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsify import models
from sparsify.core import paths
from sparsify.structure.gates import Gate


def _apply(gate, x, value):
  variables = gate.init(jax.random.key(0), x)
  variables = jax.tree.map(lambda g: jnp.asarray(value, g.dtype).reshape(
      g.shape) if np.ndim(value) else jnp.full(g.shape, value), variables)
  return gate.apply(variables, x), variables


def test_gate_kinds_against_numpy():
  x = np.arange(2 * 3 * 6, dtype=np.float32).reshape(2, 3, 6)
  y, v = _apply(Gate("channel"), x, np.arange(6, dtype=np.float32))
  np.testing.assert_allclose(y, x * np.arange(6))
  assert v["params"]["gate"].shape == (6,)
  y, v = _apply(Gate("group", groups=3), x, np.array([2.0, 0.0, -1.0]))
  np.testing.assert_allclose(y, x * np.repeat([2.0, 0.0, -1.0], 2))
  y, v = _apply(Gate("block"), x, 0.5)
  np.testing.assert_allclose(y, 0.5 * x)
  assert v["params"]["gate"].shape == ()


def test_gate_starts_at_one_and_rejects_bad_groups():
  x = jnp.ones((2, 6))
  variables = Gate().init(jax.random.key(0), x)
  np.testing.assert_array_equal(variables["params"]["gate"], np.ones(6))
  with pytest.raises(ValueError, match="groups: got 4; allowed: a divisor"):
    Gate("group", groups=4).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="kind: got 'row'"):
    Gate("row").init(jax.random.key(0), x)


def _gate_names(model, shape):
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.ones(shape))
  return {name: leaf.shape for name, leaf in
          paths.named_leaves(variables["params"]) if name.endswith("/gate")}


@pytest.mark.parametrize("model,expected", [
    (models.get_model("lenet_300_100", gates=True),
     {"fc1_gate/gate": (300,), "fc2_gate/gate": (100,)}),
    (models.get_model("vgg", stages=((4,), (8, 8)), gates=True),
     {"block1_0/gate/gate": (4,), "block2_0/gate/gate": (8,),
      "block2_1/gate/gate": (8,)}),
    (models.get_model("resnet", depth=8, width=4, block_gates=True,
                      channel_gates=True),
     {f"block{s}_0/{g}": shape for s, w in ((1, 4), (2, 8), (3, 16))
      for g, shape in (("block_gate/gate", ()), ("gate1/gate", (w,)))}),
])
def test_models_place_gates(model, expected):
  assert _gate_names(model, (1, 28, 28, 1)) == expected


@pytest.mark.parametrize("name,kwargs,gate_kwargs", [
    ("lenet_300_100", {}, {"gates": True}),
    ("vgg", {"stages": ((4,), (8,))}, {"gates": True}),
    ("resnet", {"depth": 8, "width": 4},
     {"block_gates": True, "channel_gates": True}),
])
def test_unit_gates_leave_the_model_unchanged(name, kwargs, gate_kwargs):
  plain = models.get_model(name, **kwargs)
  gated = models.get_model(name, **kwargs, **gate_kwargs)
  x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
  v_gated = gated.init(jax.random.key(0), x)
  # The plain model's variables are the gated ones without the gates.
  def strip(tree):
    if not isinstance(tree, dict):
      return tree
    return {k: strip(v) for k, v in tree.items()
            if not re.fullmatch(r"(\w+_)?gate\d*", k)}
  v_plain = strip(dict(v_gated))
  np.testing.assert_allclose(gated.apply(v_gated, x), plain.apply(v_plain, x),
                             rtol=1e-6, atol=1e-6)
