"""LeNet-5 in the form of Caffe's MNIST example."""

import flax.linen as nn
import jax

from sparsify.models.layers import max_pool_2x2


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
