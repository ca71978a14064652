"""Quantization after training: k-means, product quantization, weight sharing.

Each is a pure function over parameter pytrees; what it returns is both the
quantized parameters and the codes that `sparsify.spz` stores.
"""

from sparsify.quantize.pq import code_bits
from sparsify.quantize.pq import dense_kernel
from sparsify.quantize.pq import kmeans
from sparsify.quantize.pq import kmeans_plus_plus
from sparsify.quantize.pq import lloyd
from sparsify.quantize.pq import pack_codes
from sparsify.quantize.pq import pq_compression_rate
from sparsify.quantize.pq import pq_decode
from sparsify.quantize.pq import pq_encode
from sparsify.quantize.pq import pq_nbytes
from sparsify.quantize.pq import pq_quantize
from sparsify.quantize.pq import pq_storage_bits
from sparsify.quantize.pq import PQCode
from sparsify.quantize.pq import share_params
from sparsify.quantize.pq import share_weights
from sparsify.quantize.pq import shared_decode
from sparsify.quantize.pq import SharedCode
from sparsify.quantize.pq import unpack_codes
