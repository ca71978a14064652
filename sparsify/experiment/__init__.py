"""The application around the library: configs, training, stages, files.

Data flows one way: `config` (the schema and its validation) -> `registry`
(methods and optimizers by name) -> `trainer` (the jitted step, the fit
loop, evaluation) -> `stages` (post-training stages on the trainer) -> `run`
(one entry: train, stages, the compressed file), with `checkpoint`, `plots`
and `metrics` beside.
"""
