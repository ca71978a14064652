"""Tests for sparsify.spz.bits: streams and counts checked bit by bit."""

import math

import numpy as np
import pytest

from sparsify import quantize
from sparsify.spz import bits


def _bitstream(codes, width):
  """The documented stream: each code in ``width`` bits, high bit first."""
  return "".join(format(int(c), f"0{width}b") if width else ""
                 for c in np.ravel(codes))


def _bytes_of(stream):
  """Packs a string of '0'/'1' into bytes, the last one padded with 0s."""
  stream += "0" * (-len(stream) % 8)
  return bytes(int(stream[i:i + 8], 2) for i in range(0, len(stream), 8))


def test_pack_codes_by_hand_and_round_trip():
  packed = quantize.pack_codes(np.array([1, 2, 3]), 2)  # 01 10 11 00
  np.testing.assert_array_equal(packed, np.array([108], np.uint8))
  codes = np.random.default_rng(10).integers(0, 37, size=(23, 3))
  packed = quantize.pack_codes(codes, 6)
  assert packed.nbytes == math.ceil(23 * 3 * 6 / 8)
  np.testing.assert_array_equal(quantize.unpack_codes(packed, 6, codes.size),
                                codes.ravel())
  with pytest.raises(ValueError, match=r"allowed: \[0, 3\]"):
    quantize.pack_codes(np.array([4]), 2)


def test_quantize_names_are_the_one_implementation():
  assert quantize.pack_codes is bits.pack_codes
  assert quantize.unpack_codes is bits.unpack_codes
  assert quantize.code_bits is bits.code_bits


@pytest.mark.parametrize("width,count", [(0, 5), (1, 13), (3, 7), (5, 9),
                                         (8, 4), (16, 3), (32, 3)])
def test_codes_enter_the_stream_most_significant_bit_first(width, count):
  codes = np.random.default_rng(width).integers(0, 2**width, size=count,
                                                dtype=np.int64)
  packed = bits.pack_codes(codes, width)
  assert packed.dtype == np.uint8
  assert packed.tobytes() == _bytes_of(_bitstream(codes, width))
  assert packed.nbytes == bits.packed_bytes(count, width)
  back = bits.unpack_codes(packed.tobytes(), width, count, np.int64)
  assert back.dtype == np.int64
  np.testing.assert_array_equal(back, codes)


def test_unpack_codes_reads_only_count_codes_and_keeps_32_bit_codes():
  packed = bits.pack_codes([2**32 - 1, 5], 32)
  np.testing.assert_array_equal(
      bits.unpack_codes(packed, 32, 2, np.int64), [2**32 - 1, 5])
  np.testing.assert_array_equal(bits.unpack_codes(packed, 32, 1, np.int64),
                                [2**32 - 1])
  out = bits.unpack_codes(b"", 0, 4)
  assert out.dtype == np.int32 and out.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("k,want", [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3),
                                    (256, 8), (257, 9), (2**16, 16)])
def test_code_bits_is_ceil_log2(k, want):
  assert bits.code_bits(k) == want
  if k > 1:
    assert want == math.ceil(math.log2(k))


@pytest.mark.parametrize("count,width", [(0, 3), (1, 1), (8, 1), (9, 1),
                                         (3, 5), (7, 0), (10**6, 13)])
def test_packed_and_mask_bytes_are_ceilings(count, width):
  assert bits.packed_bytes(count, width) == math.ceil(count * width / 8)
  assert bits.mask_bytes(count) == math.ceil(count / 8)


@pytest.mark.parametrize("value,width", [(-1, 1), (0, 1), (255, 1),
                                         (256, 2), (65535, 2), (65536, 4),
                                         (2**32 - 1, 4), (2**32, 8)])
def test_uint_bytes_is_the_narrowest_width_that_holds_the_value(value,
                                                                width):
  assert bits.uint_bytes(value) == width
  assert max(value, 0) < 2 ** (8 * width)
  assert width == 1 or max(value, 0) >= 2 ** (4 * width)


def test_masks_are_one_bit_per_entry_in_c_order():
  mask = np.random.default_rng(0).random((5, 7)) < 0.4
  buf = bits.pack_mask(mask)
  assert buf == _bytes_of("".join("1" if m else "0" for m in mask.ravel()))
  assert len(buf) == bits.mask_bytes(mask.size)
  np.testing.assert_array_equal(bits.unpack_mask(buf, mask.size),
                                mask.ravel())
