"""Quantization after training: k-means, product quantization, weight sharing.

Each is a pure function over parameter pytrees; what it returns is both the
quantized parameters and the codes that `sparsify.spz` stores. `kmeans`
holds the clustering, `pq` product quantization, `sharing` weight sharing,
`tied` the fine-tuning that keeps them (each weight moves by the mean update
of the weights that share its value); codes are bit-packed and counted by
`sparsify.spz.bits`, re-exported here.
"""

from sparsify.core.paths import dense_kernel
from sparsify.quantize.kmeans import kmeans
from sparsify.quantize.kmeans import kmeans_plus_plus
from sparsify.quantize.kmeans import lloyd
from sparsify.quantize.pq import pq_compression_rate
from sparsify.quantize.pq import pq_decode
from sparsify.quantize.pq import pq_encode
from sparsify.quantize.pq import pq_nbytes
from sparsify.quantize.pq import pq_quantize
from sparsify.quantize.pq import pq_storage_bits
from sparsify.quantize.pq import PQCode
from sparsify.quantize.sharing import share_params
from sparsify.quantize.sharing import share_weights
from sparsify.quantize.sharing import shared_decode
from sparsify.quantize.sharing import SharedCode
from sparsify.quantize.tied import pq_tie
from sparsify.quantize.tied import refit_pq
from sparsify.quantize.tied import refit_shared
from sparsify.quantize.tied import shared_tie
from sparsify.quantize.tied import sign_tie
from sparsify.quantize.tied import Tie
from sparsify.quantize.tied import tie_updates
from sparsify.spz.bits import code_bits
from sparsify.spz.bits import pack_codes
from sparsify.spz.bits import unpack_codes
