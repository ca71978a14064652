"""Fully connected classifiers: `MLP` and LeNet-300-100, and their neurons."""

from collections.abc import Sequence

import flax.linen as nn
import jax

from sparsify.structure.gates import Gate


class MLP(nn.Module):
  """A multilayer perceptron on flattened images.

  The input is flattened, then each hidden layer is ``Dense -> relu`` and the
  classifier is a final ``Dense(num_classes)``. Parameters are named
  ``fc1``, ``fc2``, ... for the hidden layers and ``head`` for the classifier.

  Attributes:
    hidden: Width of each hidden layer, in order.
    num_classes: Number of output logits.
    gates: put a per-neuron `Gate` (``fc{i}_gate/gate``) after each hidden
      layer's relu, for sparse structure selection.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sparsify import models
    >>> model = models.MLP(hidden=(32, 16), num_classes=3)
    >>> x = jnp.ones((5, 8, 8, 1))
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
    >>> jax.tree.map(jnp.shape, variables['params']['fc2'])
    {'bias': (16,), 'kernel': (32, 16)}
    >>> jax.eval_shape(model.apply, variables, x).shape
    (5, 3)
  """

  hidden: Sequence[int] = (300, 100)
  num_classes: int = 10
  gates: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns logits of shape ``(N, num_classes)`` for images ``(N, ...)``."""
    del train  # No batch statistics or dropout.
    x = x.reshape((x.shape[0], -1))
    for i, features in enumerate(self.hidden):
      x = nn.relu(nn.Dense(features, name=f"fc{i + 1}")(x))
      if self.gates:
        x = Gate(name=f"fc{i + 1}_gate")(x)
    return nn.Dense(self.num_classes, name="head")(x)


def lenet_300_100(num_classes: int = 10, gates: bool = False,
                  hidden: Sequence[int] = (300, 100)) -> MLP:
  """Returns LeNet-300-100: an `MLP` with hidden layers of 300 and 100 units.

  On 28x28x1 inputs it has 784*300+300 + 300*100+100 + 100*10+10 = 266,610
  parameters.

  Args:
    num_classes: Number of output logits.
    gates: add per-neuron gates (see `MLP`).
    hidden: the two hidden widths (300 and 100 in the paper).

  Returns:
    The `MLP` module.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sparsify import models
    >>> model = models.lenet_300_100()
    >>> model.hidden
    (300, 100)
    >>> variables = jax.eval_shape(model.init, jax.random.key(0),
    ...                            jnp.ones((1, 28, 28, 1)))
    >>> models.count_params(variables['params'])
    266610

  Reference: LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied
  to document recognition", Proc. IEEE 1998.
  """
  if len(hidden) != 2:
    raise ValueError(f"hidden: got {tuple(hidden)}; allowed: two widths")
  return MLP(hidden=tuple(hidden), num_classes=num_classes, gates=gates)
