"""The mechanism every method shares.

`types` (Params, Masks, schedules), `paths` (parameter paths and the `Where`
selection), `checks` (argument checks that name the argument), `schedules`
(values over training, ramps), `topk` (sort-free selection of the largest
scores), `distributions` (uniform, ERK), `groups` (groups of weights along
an axis), `counting` (transforms whose state is a count) and `masking`
(keep-masks carried in the optimizer state; `types.NO_MASK` marks a
parameter without one).
"""
