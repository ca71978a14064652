r"""LCT's layer significance: global magnitude pruning, then layers ordered.

Layer-wise compressive training compresses a trained network one layer at a
time, from the least to the most significant layer; this module prunes the
kernels to one global sparsity and orders the layers (see
`layer_significance`). The per-layer ternary constraint is
`sparsify.ternary_constrained`.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sparsify.core import paths
from sparsify.core import topk
from sparsify.core import types
from sparsify.transforms import ternary

SIGNIFICANCE = ("quantization", "size", "sparsity")


class Significance(NamedTuple):
  """Result of `layer_significance`.

  Attributes:
    order: the selected parameter paths, least significant first.
    scores: the measure each layer was sorted by, by path: its sparsity
      after the global prune (``by='sparsity'``), its number of weights
      (``'size'``) or the accuracy drop when it alone is ternarized
      (``'quantization'``).
    masks: a pytree shaped like the parameters; the global magnitude masks on
      the selected kernels, all-`True` arrays on the other leaves.
  """
  order: tuple[str, ...]
  scores: dict[str, float]
  masks: types.Masks


def layer_significance(
    params: types.Params,
    *,
    sparsity: float,
    by: str = "sparsity",
    evaluate: Callable[[types.Params], float] | None = None,
    where: paths.Where = None,
) -> Significance:
  r"""Global magnitude pruning, then the layers sorted by significance.

  The selected kernels are pruned together: the fraction ``sparsity`` of
  smallest magnitudes over all of them is removed (one threshold
  :math:`\tau`), so each layer :math:`l` ends with its own sparsity

  .. math::
    s_l = 1 - \frac{|\{i : |W_{l,i}| \ge \tau\}|}{|W_l|}.

  Layers are then ordered from the least to the most significant:

  * ``'sparsity'`` (LCT): by :math:`s_l`, highest first; a layer the global
    threshold emptied most carries the least information.
  * ``'size'``: by number of weights :math:`|W_l|`, largest first; the
    biggest layers are the most redundant and gain the most storage when
    constrained.
  * ``'quantization'``: by the accuracy drop
    :math:`a_0 - a_l` when layer :math:`l` alone is ternarized
    (``ternary.ternarize(W_l, M_l, ternary.sigma_of(W_l, M_l))``) in the pruned network of
    accuracy :math:`a_0`, smallest first. ``evaluate`` is called once on the
    pruned network and once per layer.

  Ties keep the parameters' tree order.

  Args:
    params: the trained parameters.
    sparsity: the global fraction of selected weights to prune, in [0, 1).
    by: ``'sparsity'``, ``'size'`` or ``'quantization'``.
    evaluate: ``params -> accuracy`` (higher is better); needed by
      ``'quantization'``.
    where: which parameters are layers: ``None`` for Dense and Conv kernels,
      a regex searched in the path, or a predicate ``(path, leaf) -> bool``.

  Returns:
    A `Significance` ``(order, scores, masks)``; the pruned network is
    ``apply_masks(params, masks)``.

  Example:
    Pruning a quarter of 16 weights removes 2 of ``fc1``'s 12 and 2 of
    ``fc2``'s 4, so ``fc2`` (sparsity 0.5) is the least significant:

    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'fc1': {'kernel': jnp.arange(10.0, 130.0, 10.0)
    ...                             .reshape(3, 4)},
    ...           'fc2': {'kernel': jnp.array([[1.0], [2.0], [50.0], [60.0]])}}
    >>> sig = sparsify.layer_significance(params, sparsity=0.25)
    >>> sig.order
    ('fc2/kernel', 'fc1/kernel')
    >>> {n: round(s, 3) for n, s in sig.scores.items()}
    {'fc1/kernel': 0.167, 'fc2/kernel': 0.5}
    >>> sig.masks['fc2']['kernel'].ravel()
    Array([False, False,  True,  True], dtype=bool)

  References:
    Grimaldi, Tenace & Calimera, "Layer-wise compressive training for
    convolutional neural networks", Future Internet 11(1):7, 2019.
  """
  if by not in SIGNIFICANCE:
    raise ValueError(f"by: got {by!r}; allowed: {', '.join(SIGNIFICANCE)}")
  if (isinstance(sparsity, bool) or not isinstance(sparsity, (int, float))
      or not 0.0 <= sparsity < 1.0):
    raise ValueError(f"sparsity: got {sparsity!r}; allowed: a fraction in "
                     "[0, 1)")
  if by == "quantization" and evaluate is None:
    raise ValueError("evaluate: got None; allowed: a callable params -> "
                     "accuracy, needed by by='quantization'")
  chosen = paths.path_predicate(where)
  kernels = {name: jnp.asarray(w) for name, w in paths.named_leaves(params)
             if chosen(name, w)}
  if not kernels:
    raise ValueError(f"where: got {where!r}, which selects no parameter; "
                     "allowed: a regex or predicate matching at least one")
  kept = jax.jit(topk.select_by_score, static_argnums=2)(
      {name: jnp.abs(w) for name, w in kernels.items()}, sparsity, "global")
  masks = paths.map_with_name(
      lambda name, p: kept[name] if name in kept else jnp.ones(
          jnp.shape(p), jnp.bool_), params)
  names = list(kernels)
  if by == "sparsity":
    scores = {n: 1.0 - float(jnp.mean(kept[n])) for n in names}
    order = sorted(names, key=lambda n: -scores[n])
  elif by == "size":
    scores = {n: float(kernels[n].size) for n in names}
    order = sorted(names, key=lambda n: -scores[n])
  else:
    pruned = paths.map_with_name(
        lambda name, p: jnp.where(kept[name], p, 0) if name in kept else p,
        params)
    reference = float(evaluate(pruned))
    scores = {}
    for n in names:
      w = jnp.where(kept[n], kernels[n], 0)
      t = ternary.ternarize(w, kept[n], ternary.sigma_of(w, kept[n]))
      trial = paths.map_with_name(
          lambda name, p, n=n, t=t: t if name == n else p, pruned)
      scores[n] = reference - float(evaluate(trial))
    order = sorted(names, key=lambda n: scores[n])
  return Significance(order=tuple(order), scores=scores, masks=masks)
