r"""Dense VGG-style CNN with BatchNorm on Fashion-MNIST (local IDX files).

Stages of 3x3 convs (64-64, 128-128, 256-256-256 channels, scaled by
``model.kwargs.width``), each followed by 2x2 max pooling, then global average
pooling and one Dense layer.

  python -m experiments.main --config configs/vgg.py --workdir /tmp/vgg \
      --config.model.kwargs.width=0.5

CIFAR-10 through tensorflow-datasets (needs the prepared dataset):

  python -m experiments.main --config configs/vgg.py --workdir /tmp/vgg_c10 \
      --config.data.name=cifar10

With a method after ``:`` (`sparsify.experiment.config.METHOD_PRESETS`): ``sss`` trains
channel gates with APG and removes the channels whose gate is below 0.4 of
the largest of their layer, ``slimming`` is Network Slimming
(L1 on BatchNorm scales, then the lowest half of the channels removed),
``search`` is binary-search filter pruning, each followed by fine-tuning:

  python -m experiments.main --config configs/vgg.py:sss --workdir /tmp/vgg_sss \
      --config.optimizer.kwargs.strength=0.01 --config.model.kwargs.width=0.25
"""

from sparsify.experiment.config import default_config
from sparsify.experiment.config import with_method


def get_config(preset=None):
  config = default_config()
  config.model.name = "vgg"
  config.model.kwargs.stages = ((64, 64), (128, 128), (256, 256, 256))
  config.model.kwargs.width = 1.0
  config.model.kwargs.gates = False  # per-channel scaling factors (SSS)
  config.data.name = "fashion_mnist"
  config.optimizer.name = "nesterov"
  config.optimizer.learning_rate = 0.05
  config.optimizer.weight_decay = 1e-4
  config.train.epochs = 20
  config = with_method(config, preset)
  if preset == "sss":
    # A channel gate feeds a conv and its BatchNorm, which cancels a common
    # scale: L1 shrinks a layer's gates together, so channels are selected
    # against the largest gate of their layer (benchmarks/sss.py).
    config.post.slim.relative = True
    config.post.slim.threshold = 0.4
    config.post.slim.multiple = 8
  return config
