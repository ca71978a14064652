"""Neurons, channels and blocks: gates, surgery and neuron search.

`units` (the `Unit` of coupled parameter slices), `gates` (scaling factors
SSS trains), `surgery` (physical removal, gate folding), `neuron_search`
(binary-search neuron pruning) and `significance` (LCT's layer order).
"""
