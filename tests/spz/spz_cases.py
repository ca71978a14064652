"""Arrays, reference decoders and file edits shared by the spz tests."""

import hashlib
import json
import struct

import numpy as np

SIGMA = np.float32(0.375)
PREAMBLE = 28  # magic 8 + version 4 + header length 8 + data length 8.
DIGEST = 32


def same_bits(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return (a.dtype == b.dtype and a.shape == b.shape
          and a.tobytes() == b.tobytes())


def sparse(rng, shape, density, dtype=np.float32):
  x = rng.normal(size=shape).astype(dtype)
  return np.where(rng.random(shape) < density, x, np.zeros((), dtype))


def ternary(rng, shape, density, sigma=SIGMA, dtype=np.float32):
  signs = rng.choice(np.array([-1, 1], dtype), size=shape)
  keep = rng.random(shape) < density
  return np.where(keep, signs * dtype(sigma), dtype(0)).astype(dtype)


def pq_reference(codebooks, codes, shape, mask=None):
  """Decodes the PQ convention with explicit loops."""
  s, _, d = codebooks.shape
  m = shape[-1]
  w = np.zeros((m, s * d), np.float32)
  for i in range(m):
    for j in range(s):
      w[i, j * d:(j + 1) * d] = codebooks[j, codes[i, j]]
  kernel = w.T.reshape(shape)
  return kernel if mask is None else np.where(mask, kernel, 0.0)


# name: (array, encoding, bytes), sizes (dense, bitmask, csr) worked out:
AUTO = {
    # 12 nonzero of 12: 48, 2 + 48 = 50, 5 + 12 + 48 = 65.
    "all_nonzero": (np.arange(1, 13, dtype=np.float32).reshape(4, 3),
                    "dense", 48),
    # 16 nonzero of 64: 256, 8 + 64 = 72, 9 + 16 + 64 = 89.
    "quarter": (np.kron(np.eye(4, dtype=np.float32),
                        np.ones((2, 2), np.float32)),
                "bitmask", 72),
    # 3 nonzero of 600: 2400, 75 + 12 = 87, 3 * 1 + 3 * 2 + 12 = 21.
    "row_sparse": (np.zeros((2, 300), np.float32), "csr", 21),
    # 0 of 16: 64, 2 + 0 = 2, 2 * 1 + 0 = 2: the tie goes to bitmask.
    "zeros": (np.zeros(16, np.float32), "bitmask", 2),
    # A scalar: 4, 1 + 4 = 5, 2 + 1 + 4 = 7.
    "scalar": (np.array(-0.0, np.float32), "dense", 4),
}
AUTO["row_sparse"][0][[0, 0, 1], [0, 299, 150]] = [1., -1., 2.]


def rewrite(path, edit_header=None, edit_data=None):
  """Edits header or data and writes a valid checksum again."""
  blob = path.read_bytes()
  h, d = struct.unpack_from("<QQ", blob, 12)
  header = json.loads(blob[PREAMBLE:PREAMBLE + h])
  data = bytearray(blob[PREAMBLE + h:PREAMBLE + h + d])
  if edit_header:
    edit_header(header)
  if edit_data:
    edit_data(header, data)
  head = json.dumps(header).encode()
  body = blob[:12] + struct.pack("<QQ", len(head), len(data)) + head + data
  path.write_bytes(body + hashlib.sha256(body).digest())
