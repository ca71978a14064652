r"""Dense CIFAR ResNet (basic blocks, depth 6n+2) on Fashion-MNIST (IDX files).

  python -m experiments.main --config configs/resnet.py --workdir /tmp/resnet \
      --config.model.kwargs.depth=20

Bottleneck blocks need depth 9n+2 (``--config.model.kwargs.block=bottleneck
--config.model.kwargs.depth=29``). CIFAR-10 through tensorflow-datasets:
``--config.data.name=cifar10``.

``configs/resnet.py:sss`` gates the channels inside residual branches, trains
them with APG and slims them away (`sparsify.experiment.config.METHOD_PRESETS`).
"""

from sparsify.experiment.config import default_config
from sparsify.experiment.config import with_method


def get_config(preset=None):
  config = default_config()
  config.model.name = "resnet"
  config.model.kwargs.depth = 20
  config.model.kwargs.block = "basic"
  config.model.kwargs.width = 16
  config.model.kwargs.block_gates = False  # a scale per residual branch
  config.model.kwargs.channel_gates = False  # a scale per inner channel
  config.data.name = "fashion_mnist"
  config.optimizer.name = "nesterov"
  config.optimizer.learning_rate = 0.1
  config.optimizer.weight_decay = 1e-4
  config.train.epochs = 20
  return with_method(config, preset)
