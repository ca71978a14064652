"""Scaling-factor gates: a learnable scale per neuron, channel, group or block.

A gate multiplies the output of a structure by a learnable :math:`\\lambda`.
Trained with a sparsity-inducing proximal step (`sparsify.sss`), gates that
reach exactly zero mark structures that can be removed from the network.
Gates are ordinary Flax parameters named ``gate``, so optimizers and
selections find them by path (``.../gate``).
"""

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

KINDS = ("channel", "group", "block")


class Gate(nn.Module):
  r"""Multiplies its input by a learnable scale :math:`\lambda`.

  * ``'channel'``: one scale per feature of the last axis (a Dense layer's
    neurons, a convolution's channels): :math:`y_{\dots c} = \lambda_c
    x_{\dots c}`.
  * ``'group'``: one scale per group of ``groups`` equal, contiguous slices
    of the last axis (e.g. ResNeXt's cardinality groups).
  * ``'block'``: one scalar for the whole input (e.g. a residual branch,
    scaled before the shortcut is added).

  Attributes:
    kind: ``'channel'``, ``'group'`` or ``'block'``.
    groups: number of groups, for ``'group'``.
    init_value: initial scale (1.0 leaves the network unchanged at start).

  Example:
    A gate on the four hidden neurons of a small MLP (parameter shapes):

    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     x = sparsify.Gate(name="fc1_gate")(
    ...         nn.relu(nn.Dense(4, name="fc1")(x)))
    ...     return nn.Dense(2, name="head")(x)
    >>> variables = jax.eval_shape(Net().init, jax.random.key(0),
    ...                            jnp.ones((1, 3)))
    >>> jax.tree.map(jnp.shape, variables['params'])
    {'fc1': {'bias': (4,), 'kernel': (3, 4)}, 'fc1_gate': {'gate': (4,)},
     'head': {'bias': (2,), 'kernel': (4, 2)}}

    Gates start at ``init_value``:

    >>> sparsify.Gate().init(jax.random.key(0), jnp.ones((1, 3)))
    {'params': {'gate': Array([1., 1., 1.], dtype=float32)}}

    Two groups of two channels, the first gate at zero:

    >>> gate = sparsify.Gate(kind='group', groups=2)
    >>> gate.apply({'params': {'gate': jnp.array([0.0, 2.0])}},
    ...            jnp.ones((1, 4)))
    Array([[0., 0., 2., 2.]], dtype=float32)

  References:
    Huang & Wang, "Data-driven sparse structure selection for deep neural
    networks", ECCV 2018.
  """

  kind: Literal["channel", "group", "block"] = "channel"
  groups: int | None = None
  init_value: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns ``x`` scaled by the gate(s)."""
    if self.kind not in KINDS:
      raise ValueError(f"kind: got {self.kind!r}; allowed: "
                       f"{', '.join(KINDS)}")
    init = nn.initializers.constant(self.init_value)
    if self.kind == "block":
      return x * self.param("gate", init, (), jnp.float32)
    if self.kind == "channel":
      return x * self.param("gate", init, (x.shape[-1],), jnp.float32)
    channels = x.shape[-1]
    if not self.groups or channels % self.groups:
      raise ValueError(f"groups: got {self.groups}; allowed: a divisor of "
                       f"the {channels} channels")
    gate = self.param("gate", init, (self.groups,), jnp.float32)
    shaped = x.reshape(*x.shape[:-1], self.groups, channels // self.groups)
    return (shaped * gate[:, None]).reshape(x.shape)
