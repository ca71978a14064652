r"""Dense LeNet-5, Caffe form (431,080 parameters), on the embedded MNIST digits.

  python -m experiments.main --config configs/lenet5.py --workdir /tmp/lenet5

On full Fashion-MNIST from local IDX files:

  python -m experiments.main --config configs/lenet5.py \
      --workdir /tmp/lenet5_fmnist --config.data.name=fashion_mnist
"""

from sparsify.config import default_config


def get_config():
  config = default_config()
  config.model.name = "lenet5"
  config.optimizer.learning_rate = 0.02
  return config
