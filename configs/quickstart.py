r"""The quickstart job: LeNet-300-100 pruned to 95 % sparsity while it trains.

Gradual magnitude pruning (cubic schedule, masks recomputed every 50 steps)
on the embedded MNIST digits (8,000 train / 2,000 eval), then the compression
report; then the surviving weights share 32 values (5 bits) and the model is
written to ``model.spz``, reloaded and evaluated. About a minute on two CPU
cores:

  python -m experiments.main --config configs/quickstart.py --workdir /tmp/sparsify_quickstart
"""

from sparsify.experiment.config import default_config
from sparsify.experiment.config import method


def get_config():
  config = default_config()
  config.model.name = "lenet_300_100"
  config.data.name = "embedded_mnist"
  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.05
  config.train.epochs = 30
  config.train.log_every = 250
  config.train.eval_every_epochs = 5
  config.compression = [
      method("gmp", begin=0.1, end=0.7, sparsity=0.95, update_every=50)]
  config.post.stages = "share"
  return config
