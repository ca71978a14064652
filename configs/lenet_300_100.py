r"""Dense LeNet-300-100 (266,610 parameters) on the embedded MNIST digits.

  python -m experiments.main --config configs/lenet_300_100.py --workdir /tmp/lenet300

On full Fashion-MNIST from local IDX files:

  python -m experiments.main --config configs/lenet_300_100.py \
      --workdir /tmp/lenet300_fmnist --config.data.name=fashion_mnist
"""

from sparsify.config import default_config


def get_config():
  config = default_config()
  config.model.name = "lenet_300_100"
  return config
