r"""LeNet-300-100 (266,610 parameters), dense or with a compression method.

The part after ``:`` picks the method, any key of
`sparsify.experiment.config.METHOD_PRESETS` (dense by default). On the embedded MNIST
digits:

  python -m experiments.main --config configs/lenet_300_100.py --workdir /tmp/l300
  python -m experiments.main --config configs/lenet_300_100.py:dat --workdir /tmp/l300_dat \
      --config.compression[0].kwargs.target_sparsity=0.98

On full Fashion-MNIST from local IDX files, and on MNIST through
tensorflow-datasets (a prepared dataset in DATA_DIR):

  python -m experiments.main --config configs/lenet_300_100.py:gmp --workdir /tmp/l300_fm \
      --config.data.name=fashion_mnist
  python -m experiments.main --config configs/lenet_300_100.py:random --workdir /tmp/l300_tfds \
      --config.data.name=mnist --config.data.source=tfds --config.data.data_dir=DATA_DIR
"""

from sparsify.experiment.config import default_config
from sparsify.experiment.config import with_method


def get_config(preset=None):
  config = default_config()
  config.model.name = "lenet_300_100"
  config.model.kwargs.gates = False  # per-neuron scaling factors (SSS)
  return with_method(config, preset)
