"""Neurons, channels, heads and blocks of any Flax model, and their removal.

`trace` (`structure_of`: the removable units, read from the model's jaxpr),
`units` (the `Unit` of coupled parameter slices), `surgery` (masking,
physical removal, the slim model as a function, its export), `rebuild` (the
traced computation evaluated at new shapes), `scales` (gates and BatchNorm
scales per unit), `insert` (gates added to a model without editing it),
`gates` (the `Gate` module of the built-in models), `neuron_search`
(binary-search neuron pruning) and `significance` (LCT's layer order).
"""

from sparsify.structure.insert import fold_gates
from sparsify.structure.insert import insert_gates

__all__ = ["fold_gates", "insert_gates"]
