r"""LeNet-5 in Caffe form (431,080 parameters), dense or with a compression method.

The part after ``:`` picks the method, any key of
`sparsify.experiment.config.METHOD_PRESETS` (dense by default). On the embedded MNIST
digits:

  python -m experiments.main --config configs/lenet5.py --workdir /tmp/lenet5
  python -m experiments.main --config configs/lenet5.py:gmp --workdir /tmp/lenet5_gmp

On full Fashion-MNIST from local IDX files, and on MNIST through
tensorflow-datasets (a prepared dataset in DATA_DIR):

  python -m experiments.main --config configs/lenet5.py:dat --workdir /tmp/lenet5_fm \
      --config.data.name=fashion_mnist
  python -m experiments.main --config configs/lenet5.py:dat --workdir /tmp/lenet5_tfds \
      --config.data.name=mnist --config.data.source=tfds --config.data.data_dir=DATA_DIR
"""

from sparsify.experiment.config import default_config
from sparsify.experiment.config import with_method


def get_config(preset=None):
  config = default_config()
  config.model.name = "lenet5"
  config.optimizer.learning_rate = 0.02
  config = with_method(config, preset)
  for entry in config.compression:
    if entry.name == "dat":
      # Every layer to the target: sharing one budget by the layers'
      # statistics (the preset's 'global') over-prunes the small conv1 here.
      entry.kwargs.target_mode = "solve"
  return config
