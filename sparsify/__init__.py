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
from sparsify.compressed import CompressedFileError
from sparsify.compressed import file_report
from sparsify.compressed import load as load_compressed
from sparsify.compressed import pq_layer
from sparsify.compressed import PQLayer
from sparsify.compressed import save as save_compressed
from sparsify.compressed import shared_layer
from sparsify.compressed import SharedLayer
from sparsify.compressed import ternary_layer
from sparsify.compressed import TernaryLayer
from sparsify.config import ConfigError
from sparsify.config import default_config
from sparsify.dat import dynamic_adaptive_threshold
from sparsify.gates import Gate
from sparsify.lct import layer_significance
from sparsify.lct import sigma_of
from sparsify.lct import Significance
from sparsify.lct import ternarize
from sparsify.lct import ternary_bits
from sparsify.lct import ternary_constrained
from sparsify.lct import TernaryState
from sparsify.masking import apply_masks
from sparsify.masking import find_masks
from sparsify.masking import mask_updates
from sparsify.masking import MaskState
from sparsify.neuron_search import apply_neuron_masks
from sparsify.neuron_search import binary_search_prune
from sparsify.neuron_search import neuron_masks
from sparsify.neuron_search import neuron_scores
from sparsify.neuron_search import SearchResult
from sparsify.proximal import accelerated_proximal_gradient
from sparsify.proximal import APGState
from sparsify.proximal import group_lasso_prox
from sparsify.proximal import proximal_sgd
from sparsify.proximal import soft_threshold
from sparsify.plots import pareto
from sparsify.plots import pareto_front
from sparsify.plots import plot_run
from sparsify.plots import save_weights
from sparsify.pruning import erk_densities
from sparsify.pruning import gradual_magnitude_pruning
from sparsify.pruning import magnitude_pruning
from sparsify.pruning import random_sparsity
from sparsify.pruning import select_by_score
from sparsify.pruning import top_k_mask
from sparsify.quantization import kmeans
from sparsify.quantization import pq_compression_rate
from sparsify.quantization import pq_decode
from sparsify.quantization import pq_encode
from sparsify.quantization import pq_nbytes
from sparsify.quantization import pq_quantize
from sparsify.quantization import pq_storage_bits
from sparsify.quantization import share_params
from sparsify.quantization import share_weights
from sparsify.quantization import SharedCode
from sparsify.quantization import shared_decode
from sparsify.quantization import PQCode
from sparsify.regularizers import binary_attractor
from sparsify.regularizers import group_lasso
from sparsify.regularizers import kcentre_attractor
from sparsify.regularizers import l1
from sparsify.report import compression_report
from sparsify.report import CompressionReport
from sparsify.report import layer_output_shapes
from sparsify.sss import network_slimming
from sparsify.sss import slimming_threshold
from sparsify.sss import sparse_structure_selection
from sparsify.sss import sss_optimizer
from sparsify.surgery import keep_nonzero
from sparsify.surgery import slim
from sparsify.surgery import spec_for
from sparsify.surgery import Unit
from sparsify.train import train_and_evaluate
from sparsify.train import TrainState

__version__ = "0.1.0"

__all__ = (
    "APGState",
    "CompressedFileError",
    "CompressionReport",
    "ConfigError",
    "Gate",
    "MaskState",
    "Masks",
    "PQCode",
    "PQLayer",
    "Params",
    "SearchResult",
    "SharedCode",
    "SharedLayer",
    "Significance",
    "TernaryLayer",
    "TernaryState",
    "TrainState",
    "Unit",
    "accelerated_proximal_gradient",
    "apply_masks",
    "apply_neuron_masks",
    "binary_attractor",
    "binary_search_prune",
    "compression_report",
    "default_config",
    "dynamic_adaptive_threshold",
    "erk_densities",
    "file_report",
    "find_masks",
    "gradual_magnitude_pruning",
    "group_lasso",
    "group_lasso_prox",
    "kcentre_attractor",
    "keep_nonzero",
    "kmeans",
    "l1",
    "layer_output_shapes",
    "layer_significance",
    "load_compressed",
    "magnitude_pruning",
    "mask_updates",
    "network_slimming",
    "neuron_masks",
    "neuron_scores",
    "pareto",
    "pareto_front",
    "path_name",
    "plot_run",
    "pq_compression_rate",
    "pq_decode",
    "pq_encode",
    "pq_layer",
    "pq_nbytes",
    "pq_quantize",
    "pq_storage_bits",
    "proximal_sgd",
    "random_sparsity",
    "save_compressed",
    "save_weights",
    "select",
    "select_by_score",
    "share_params",
    "share_weights",
    "shared_decode",
    "shared_layer",
    "sigma_of",
    "slim",
    "slimming_threshold",
    "soft_threshold",
    "sparse_structure_selection",
    "spec_for",
    "sss_optimizer",
    "ternarize",
    "ternary_bits",
    "ternary_constrained",
    "ternary_layer",
    "top_k_mask",
    "train_and_evaluate",
)
