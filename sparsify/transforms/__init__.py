"""Per-step compression methods, each an `optax.GradientTransformation`.

`magnitude` (GMP, one-shot), `random` (static random sparsity), `dat`
(dynamic and adaptive threshold), `proximal` (soft-threshold, ISTA, APG,
group-lasso prox), `penalties` (binary and k-centre attractors, L1, group
lasso), `sss` (sparse structure selection, Network Slimming) and `ternary`
(LCT's ternary-constrained training).
"""
