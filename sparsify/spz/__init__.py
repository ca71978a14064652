"""The compressed file format (``.spz``): encodings, container, inspection.

One file holds every array of a model's variables, each in the smallest
lossless layout (dense, bitmask, CSR) or a lossy one chosen by a stage
(product quantization, weight sharing, ternary), behind a header with a
checksum. `save` writes it atomically, `load` reads it back with bounded
memory, `file_report` says where its bytes go.
"""

from sparsify.spz.container import choose_encoding
from sparsify.spz.container import CompressedFileError
from sparsify.spz.container import decode_leaf
from sparsify.spz.container import encode_leaf
from sparsify.spz.container import EncodedLeaf
from sparsify.spz.container import ENCODINGS
from sparsify.spz.container import file_report
from sparsify.spz.container import FileReport
from sparsify.spz.container import float32_bytes
from sparsify.spz.container import LeafBytes
from sparsify.spz.container import load
from sparsify.spz.container import MAGIC
from sparsify.spz.container import pq_layer
from sparsify.spz.container import PQLayer
from sparsify.spz.container import save
from sparsify.spz.container import shared_layer
from sparsify.spz.container import SharedLayer
from sparsify.spz.container import smallest_ternary
from sparsify.spz.container import ternary_layer
from sparsify.spz.container import TernaryLayer
from sparsify.spz.container import VERSION
