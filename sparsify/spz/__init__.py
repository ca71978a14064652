"""The compressed file format (``.spz``): bits, leaf encodings, file, report.

One file holds every array of a model's variables, each in the smallest
lossless layout (dense, bitmask, CSR) or a lossy one chosen by a stage
(product quantization, weight sharing, ternary), behind a header with a
checksum. `bits` packs codes and masks and counts their bytes, `encodings`
turns one array into its buffers and back, `container` writes a model's
leaves to one file atomically (`save`) and reads them back (`load`),
`inspect` says where a file's bytes go (`file_report`).
"""

from sparsify.spz.container import CompressedFileError
from sparsify.spz.container import load
from sparsify.spz.container import MAGIC
from sparsify.spz.container import save
from sparsify.spz.container import VERSION
from sparsify.spz.encodings import check_leaf
from sparsify.spz.encodings import choose_encoding
from sparsify.spz.encodings import decode_leaf
from sparsify.spz.encodings import encode_leaf
from sparsify.spz.encodings import EncodedLeaf
from sparsify.spz.encodings import ENCODINGS
from sparsify.spz.encodings import lossless_sizes
from sparsify.spz.encodings import LosslessSize
from sparsify.spz.encodings import pq_layer
from sparsify.spz.encodings import PQLayer
from sparsify.spz.encodings import shared_layer
from sparsify.spz.encodings import SharedLayer
from sparsify.spz.encodings import smallest_lossless
from sparsify.spz.encodings import smallest_ternary
from sparsify.spz.encodings import ternary_layer
from sparsify.spz.encodings import TernaryLayer
from sparsify.spz.inspect import file_report
from sparsify.spz.inspect import FileReport
from sparsify.spz.inspect import float32_bytes
from sparsify.spz.inspect import LeafBytes
