"""sparsify: compress neural networks while they train.

Pruning and compression methods are optax gradient transformations that
compose with any optimizer chain and any Flax model; procedures that are not
per-step (selection, surgery, quantization) are pure functions over parameter
pytrees. Subpackages: `sparsify.data` (datasets and batches) and
`sparsify.models` (the models looked up by name from configs).
"""

from sparsify.core.distributions import erk_densities
from sparsify.core.masking import apply_masks
from sparsify.core.masking import find_masks
from sparsify.core.masking import mask_updates
from sparsify.core.masking import MaskState
from sparsify.core.paths import named_leaves
from sparsify.core.paths import path_name
from sparsify.core.paths import select
from sparsify.core.topk import select_by_score
from sparsify.core.topk import top_k_mask
from sparsify.core.types import Masks
from sparsify.core.types import Params
from sparsify.experiment.config import ConfigError
from sparsify.experiment.config import default_config
from sparsify.experiment.plots import pareto
from sparsify.experiment.plots import pareto_front
from sparsify.experiment.plots import plot_run
from sparsify.experiment.plots import save_weights
from sparsify.experiment.run import run
from sparsify.experiment.run import train_and_evaluate
from sparsify.experiment.trainer import TrainState
from sparsify.flops import effective_flops
from sparsify.flops import LeafFlops
from sparsify.flops import nnx_apply
from sparsify.flops import param_flops
from sparsify.quantize import kmeans
from sparsify.quantize import pq_compression_rate
from sparsify.quantize import pq_decode
from sparsify.quantize import pq_encode
from sparsify.quantize import pq_nbytes
from sparsify.quantize import pq_quantize
from sparsify.quantize import pq_storage_bits
from sparsify.quantize import PQCode
from sparsify.quantize import share_params
from sparsify.quantize import share_weights
from sparsify.quantize import tie_updates
from sparsify.quantize import shared_decode
from sparsify.quantize import SharedCode
from sparsify.report import compression_report
from sparsify.report import CompressionReport
from sparsify.spz import CompressedFileError
from sparsify.spz import file_report
from sparsify.spz import load as load_compressed
from sparsify.spz import pq_layer
from sparsify.spz import PQLayer
from sparsify.spz import save as save_compressed
from sparsify.spz import shared_layer
from sparsify.spz import SharedLayer
from sparsify.spz import ternary_layer
from sparsify.spz import TernaryLayer
from sparsify.structure.gates import Gate
from sparsify.structure.insert import fold_gates
from sparsify.structure.insert import insert_gates
from sparsify.structure.neuron_search import apply_neuron_masks
from sparsify.structure.neuron_search import binary_search_prune
from sparsify.structure.neuron_search import neuron_masks
from sparsify.structure.neuron_search import neuron_scores
from sparsify.structure.neuron_search import SearchResult
from sparsify.structure.significance import layer_significance
from sparsify.structure.significance import Significance
from sparsify.structure.scales import keep_nonzero
from sparsify.structure.scales import unit_scales
from sparsify.structure.surgery import export_slim
from sparsify.structure.surgery import mask
from sparsify.structure.surgery import slim
from sparsify.structure.surgery import slim_model
from sparsify.structure.surgery import slim_nnx
from sparsify.structure.surgery import slimmed_apply
from sparsify.structure.trace import Structure
from sparsify.structure.trace import structure_of
from sparsify.structure.trace import StructureError
from sparsify.structure.units import Unit
from sparsify.transforms.dat import dynamic_adaptive_threshold
from sparsify.transforms.dynamic import rigl
from sparsify.transforms.dynamic import sparse_evolutionary_training
from sparsify.transforms.magnitude import gradual_magnitude_pruning
from sparsify.transforms.magnitude import magnitude_pruning
from sparsify.transforms.penalties import binary_attractor
from sparsify.transforms.penalties import group_lasso
from sparsify.transforms.penalties import kcentre_attractor
from sparsify.transforms.penalties import l1
from sparsify.transforms.proximal import accelerated_proximal_gradient
from sparsify.transforms.proximal import APGState
from sparsify.transforms.proximal import group_lasso_prox
from sparsify.transforms.proximal import proximal_sgd
from sparsify.transforms.proximal import soft_threshold
from sparsify.transforms.random import random_pruning
from sparsify.transforms.random import random_sparsity
from sparsify.transforms.saliency import gradual_saliency_pruning
from sparsify.transforms.saliency import snip
from sparsify.transforms.sss import batchnorm_scales
from sparsify.transforms.sss import network_slimming
from sparsify.transforms.sss import slimming_threshold
from sparsify.transforms.sss import sparse_structure_selection
from sparsify.transforms.sss import sss_optimizer
from sparsify.transforms.ste import magnitude_ste
from sparsify.transforms.ste import random_ste
from sparsify.transforms.ternary import sigma_of
from sparsify.transforms.ternary import ternarize
from sparsify.transforms.ternary import ternary_bits
from sparsify.transforms.ternary import ternary_constrained
from sparsify.transforms.ternary import TernaryState

__version__ = "0.1.0"

__all__ = (
    "APGState",
    "CompressedFileError",
    "CompressionReport",
    "ConfigError",
    "Gate",
    "LeafFlops",
    "MaskState",
    "Masks",
    "PQCode",
    "PQLayer",
    "Params",
    "SearchResult",
    "SharedCode",
    "SharedLayer",
    "Significance",
    "Structure",
    "StructureError",
    "TernaryLayer",
    "TernaryState",
    "TrainState",
    "Unit",
    "accelerated_proximal_gradient",
    "apply_masks",
    "apply_neuron_masks",
    "batchnorm_scales",
    "binary_attractor",
    "binary_search_prune",
    "compression_report",
    "default_config",
    "dynamic_adaptive_threshold",
    "effective_flops",
    "erk_densities",
    "export_slim",
    "file_report",
    "find_masks",
    "fold_gates",
    "gradual_magnitude_pruning",
    "gradual_saliency_pruning",
    "group_lasso",
    "group_lasso_prox",
    "insert_gates",
    "kcentre_attractor",
    "keep_nonzero",
    "kmeans",
    "l1",
    "layer_significance",
    "load_compressed",
    "magnitude_pruning",
    "magnitude_ste",
    "mask",
    "mask_updates",
    "named_leaves",
    "network_slimming",
    "neuron_masks",
    "neuron_scores",
    "nnx_apply",
    "param_flops",
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
    "random_pruning",
    "random_sparsity",
    "random_ste",
    "rigl",
    "run",
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
    "slim_model",
    "slim_nnx",
    "slimmed_apply",
    "slimming_threshold",
    "snip",
    "soft_threshold",
    "sparse_evolutionary_training",
    "sparse_structure_selection",
    "sss_optimizer",
    "structure_of",
    "ternarize",
    "ternary_bits",
    "ternary_constrained",
    "tie_updates",
    "ternary_layer",
    "top_k_mask",
    "train_and_evaluate",
    "unit_scales",
)
