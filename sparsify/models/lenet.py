"""LeNet-5 in the form of Caffe's MNIST example, and its filters and neurons."""

from typing import Any

import flax.linen as nn
import jax

from sparsify.models.layers import max_pool_2x2
from sparsify.structure import units

# The layers whose outputs are units: (name, output axis of its kernel), and
# the input axis of the kernel that reads them.
_CHAIN = (("conv1", 3), ("conv2", 3), ("fc1", 1), ("head", None))
_INPUT_AXIS = {"conv2": 2, "fc1": 0, "head": 0}


class LeNet5(nn.Module):
  """LeNet-5 as defined in Caffe's ``lenet_train_test.prototxt``.

  ``conv1`` (5x5, 20 filters, VALID) -> max pool 2x2 / 2 -> ``conv2`` (5x5,
  50 filters, VALID) -> max pool 2x2 / 2 -> flatten -> ``fc1`` (500) -> relu
  -> ``head`` (num_classes). As in Caffe, there is no non-linearity after the
  convolutions. On 28x28x1 inputs it has 431,080 parameters:
  (5*5*1*20+20) + (5*5*20*50+50) + (4*4*50*500+500) + (500*10+10).

  Attributes:
    num_classes: Number of output logits.
    features: widths of ``conv1``, ``conv2`` and ``fc1`` (a slimmed LeNet-5
      has fewer).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sparsify import models
    >>> model = models.LeNet5()
    >>> x = jnp.ones((8, 28, 28, 1))
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
    >>> models.count_params(variables['params'])
    431080
    >>> jax.eval_shape(model.apply, variables, x).shape
    (8, 10)

  Reference: LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied
  to document recognition", Proc. IEEE 1998.
  """

  num_classes: int = 10
  features: tuple[int, int, int] = (20, 50, 500)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns logits of shape ``(N, num_classes)`` for NHWC images."""
    del train  # No batch statistics or dropout.
    c1, c2, hidden = self.features
    x = nn.Conv(c1, (5, 5), padding="VALID", name="conv1")(x)
    x = max_pool_2x2(x)
    x = nn.Conv(c2, (5, 5), padding="VALID", name="conv2")(x)
    x = max_pool_2x2(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(hidden, name="fc1")(x))
    return nn.Dense(self.num_classes, name="head")(x)


def structure(**kwargs: Any) -> list[units.SpecUnit]:
  """The filters of both convolutions and the ``fc1`` neurons of `LeNet5`.

  LeNet-5 has no gates: the units are for filter and neuron pruning
  (`sparsify.binary_search_prune`, then `sparsify.slim`). ``conv2``'s
  filters reach ``fc1`` through a flatten, so ``fc1/kernel``'s input axis is
  read as ``(positions, filters)``.

  Args:
    **kwargs: arguments of `LeNet5` (``features``, ``num_classes``); the
      units do not depend on them.

  Returns:
    The units ``conv1``, ``conv2`` and ``fc1``, ungated.

  Example:
    >>> from sparsify.models import lenet
    >>> [(u.name, u.consumers) for u in lenet.structure()]
    [('conv1', (('conv2/kernel', 2),)), ('conv2', (('fc1/kernel', 0),)),
     ('fc1', (('head/kernel', 0),))]
  """
  del kwargs  # every LeNet5 has the same layers
  return [units.SpecUnit(name=name, gate=None,
                     producers=((f"{name}/kernel", out), (f"{name}/bias", 0)),
                     consumers=((f"{nxt}/kernel", _INPUT_AXIS[nxt]),))
          for (name, out), (nxt, _) in zip(_CHAIN, _CHAIN[1:])]


def slimmed_kwargs(kwargs: dict[str, Any],
                   counts: dict[str, int]) -> dict[str, Any]:
  """The arguments of the `LeNet5` with the kept filters and neurons.

  Args:
    kwargs: the arguments the model was built with.
    counts: units kept per unit name of `structure`; a layer not named
      keeps its width.

  Returns:
    ``kwargs`` with ``features`` the kept widths of ``conv1``, ``conv2`` and
    ``fc1``.

  Example:
    >>> from sparsify.models import lenet
    >>> lenet.slimmed_kwargs({}, {'conv1': 12, 'fc1': 100})
    {'features': (12, 50, 100)}
  """
  features = LeNet5(**kwargs).features
  out = dict(kwargs)
  out["features"] = tuple(counts.get(name, w) for (name, _), w in
                          zip(_CHAIN, features))
  return out
