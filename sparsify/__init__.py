"""sparsify: compress neural networks while they train.

Pruning and compression methods are optax gradient transformations that
compose with any optimizer chain and any Flax model; procedures that are not
per-step (selection, surgery, quantization) are pure functions over parameter
pytrees. Subpackages: `sparsify.data` (datasets and batches) and
`sparsify.models` (the models looked up by name from configs).
"""

from sparsify.base import Masks
from sparsify.base import Params
from sparsify.base import path_name
from sparsify.base import select
from sparsify.config import ConfigError
from sparsify.config import default_config
from sparsify.dat import dynamic_adaptive_threshold
from sparsify.gates import Gate
from sparsify.masking import apply_masks
from sparsify.masking import find_masks
from sparsify.masking import mask_updates
from sparsify.masking import MaskState
from sparsify.proximal import accelerated_proximal_gradient
from sparsify.proximal import APGState
from sparsify.proximal import group_lasso_prox
from sparsify.proximal import proximal_sgd
from sparsify.proximal import soft_threshold
from sparsify.pruning import erk_densities
from sparsify.pruning import gradual_magnitude_pruning
from sparsify.pruning import magnitude_pruning
from sparsify.pruning import random_sparsity
from sparsify.pruning import select_by_score
from sparsify.pruning import top_k_mask
from sparsify.report import compression_report
from sparsify.report import CompressionReport
from sparsify.report import layer_output_shapes
from sparsify.sss import network_slimming
from sparsify.sss import slimming_threshold
from sparsify.sss import sparse_structure_selection
from sparsify.sss import sss_optimizer
from sparsify.train import train_and_evaluate
from sparsify.train import TrainState

__version__ = "0.1.0"

__all__ = (
    "APGState",
    "CompressionReport",
    "ConfigError",
    "Gate",
    "Masks",
    "MaskState",
    "Params",
    "TrainState",
    "accelerated_proximal_gradient",
    "apply_masks",
    "compression_report",
    "default_config",
    "dynamic_adaptive_threshold",
    "erk_densities",
    "find_masks",
    "gradual_magnitude_pruning",
    "group_lasso_prox",
    "layer_output_shapes",
    "magnitude_pruning",
    "mask_updates",
    "network_slimming",
    "path_name",
    "proximal_sgd",
    "random_sparsity",
    "select",
    "select_by_score",
    "slimming_threshold",
    "soft_threshold",
    "sparse_structure_selection",
    "sss_optimizer",
    "top_k_mask",
    "train_and_evaluate",
)
