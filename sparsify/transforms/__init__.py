"""Per-step compression methods, each an `optax.GradientTransformation`.

`magnitude` (GMP, one-shot), `random` (static random sparsity), `ste`
(magnitude and random masks with straight-through training of the pruned
weights), `dynamic` (SET and RigL: drop and regrow at constant sparsity),
`saliency` (SNIP and gradual pruning by :math:`|g \odot w|`), `dat` (dynamic and adaptive threshold), `proximal`
(soft-threshold, ISTA, APG, group-lasso prox), `penalties` (binary and
k-centre attractors, L1, group lasso), `sss` (sparse structure selection,
Network Slimming) and `ternary` (LCT's ternary-constrained training).
Magnitude and random masks take a sparsity ``pattern``
(`sparsify.core.patterns`: unstructured, N:M along the input axis, or
blocks), which is static. The methods that read the raw gradients (RigL,
SNIP, gradual saliency; SET for symmetry) take the optimizer as their first
argument and replace it in the chain, so a training step still makes one
``tx.update`` call.

Every factory selects its parameters with ``where`` (a `paths.Where`), names
an L1 or penalty strength ``strength``, and takes every numeric
hyper-parameter as a number, a traced array or a schedule of the step count,
so ``optax.inject_hyperparams(factory)`` traces them all. Arguments that
cannot be traced are said to be static in the factory's docstring (an
``axis``, a number of ``centres``, a callable that is not a schedule such as
a ``where`` predicate): name them in ``static_args``.
"""
