"""Random variables of the right shapes for any Flax module, drawn by numpy.

Flax's own ``init`` draws each kernel with `jax.random`, and on CPU XLA takes
about a second to compile the random generator for each new kernel shape, so
a small ResNet's ``init`` costs seconds. Tests that need random values of the
right shapes, not flax's initializers, take these: kernels normal with
variance 1 / fan-in (activations keep their scale through deep models),
biases and BatchNorm means small, scales and variances near 1.
"""

import jax
import numpy as np

from sparsify.core import paths


def init(module, *args, seed=0, **kwargs):
  """Like ``module.init(key, *args, **kwargs)``, with numpy's values."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args, **kwargs)
  rng = np.random.default_rng(seed)

  def draw(name, leaf):
    shape, last = leaf.shape, name.rsplit("/", 1)[-1]
    if last in ("scale", "var"):
      values = rng.uniform(0.5, 1.5, shape)
    elif last in ("bias", "mean") or len(shape) < 2:
      values = 0.1 * rng.standard_normal(shape)
    else:
      fan_in = int(np.prod(shape[:-1]))
      values = rng.standard_normal(shape) / np.sqrt(fan_in)
    return np.asarray(values, leaf.dtype)

  return {collection: paths.map_with_name(draw, tree)
          for collection, tree in shapes.items()}
