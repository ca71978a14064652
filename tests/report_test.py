"""Tests for sparsify.report: every number is worked out by hand below.

FLOPs are also checked against XLA's cost analysis of the same model, and
effective FLOPs against numpy counts of the nonzero weights each product
reads.
"""

import json
import math

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsify import flops as flops_lib
from sparsify import report as report_lib
from sparsify import spz

B = 2  # the example batch

# Dense_0/kernel (4, 3): 5 nonzeros -> bitmask wins.
DENSE0 = np.array([[1., 0., 2.],
                   [0., 0., 3.],
                   [4., 0., 0.],
                   [0., 5., 0.]], np.float32)
# Dense_0/bias (3,): all nonzero -> dense wins.
BIAS0 = np.array([0.1, -0.2, 0.3], np.float32)
# Conv_0/kernel (3, 3, 2, 4): ones but one zero; the mask keeps [:, :, 0, 0],
# of which [0, 0, 0, 0] is zero -> 8 nonzeros; without mask 71.
CONV = np.ones((3, 3, 2, 4), np.float32)
CONV[0, 0, 0, 0] = 0.
CONV_MASK = np.zeros((3, 3, 2, 4), bool)
CONV_MASK[:, :, 0, 0] = True
# Dense_1/kernel (2, 300): 3 nonzeros -> csr wins, 2-byte column indices.
DENSE1 = np.zeros((2, 300), np.float32)
DENSE1[0, 0], DENSE1[0, 299], DENSE1[1, 150] = 1., -1., 2.

PARAMS = {"Conv_0": {"kernel": CONV},
          "Dense_0": {"kernel": DENSE0, "bias": BIAS0},
          "Dense_1": {"kernel": DENSE1}}


def _apply(params, image, x0, x1):
  """Each leaf's one product: Conv_0 VALID 3x3 on 7x7 (5x5 positions, every
  tap at each), Dense_0 and Dense_1 on one position."""
  p = params["params"]
  conv = jax.lax.conv_general_dilated(
      image, p["Conv_0"]["kernel"], (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  dense0 = x0 @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  return conv, dense0, x1 @ p["Dense_1"]["kernel"]


FLOPS = flops_lib.param_flops(
    _apply, {"params": PARAMS}, np.ones((B, 7, 7, 2), np.float32),
    np.ones((B, 4), np.float32), np.ones((B, 2), np.float32))


def _ones(x):
  return np.ones(x.shape, bool)


MASKS = {
    "full": {"Conv_0": {"kernel": CONV_MASK},
             "Dense_0": {"kernel": _ones(DENSE0), "bias": _ones(BIAS0)},
             "Dense_1": {"kernel": _ones(DENSE1)}},
    "none_leaves": {"Conv_0": {"kernel": CONV_MASK},
                    "Dense_0": {"kernel": None, "bias": None},
                    "Dense_1": {"kernel": None}},
    "masked_node": {"Conv_0": {"kernel": CONV_MASK},
                    "Dense_0": {"kernel": optax.MaskedNode(),
                                "bias": optax.MaskedNode()},
                    "Dense_1": optax.MaskedNode()},
    "absent": {"Conv_0": {"kernel": CONV_MASK}},
}

# name: (shape, params, nonzeros, flops_dense, flops_effective,
#        bytes_sparse, bytes_index, encoding)
EXPECTED = {
    "Conv_0/kernel": (
        (3, 3, 2, 4), 3 * 3 * 2 * 4, 8,
        2 * 72 * 5 * 5, 2 * 8 * 5 * 5,
        # dense 4*72 = 288; bitmask ceil(72/8) + 4*8 = 41;
        # csr rows 18, cols 4: 4*8 + 8*1 + (18+1)*1 = 59.
        math.ceil(72 / 8) + 4 * 8, math.ceil(72 / 8), "bitmask"),
    "Dense_0/bias": (
        (3,), 3, 3, 0, 0,
        # dense 12; bitmask 1 + 12 = 13; csr (1, 3): 12 + 3*1 + 2*1 = 17.
        4 * 3, 0, "dense"),
    "Dense_0/kernel": (
        (4, 3), 12, 5, 2 * 4 * 3, 2 * 5,
        # dense 48; bitmask ceil(12/8) + 4*5 = 22; csr 4*5 + 5*1 + 5*1 = 30.
        math.ceil(12 / 8) + 4 * 5, math.ceil(12 / 8), "bitmask"),
    "Dense_1/kernel": (
        (2, 300), 600, 3, 2 * 2 * 300, 2 * 3,
        # dense 2400; bitmask ceil(600/8) + 4*3 = 87;
        # csr: cols - 1 = 299 needs 2 bytes: 4*3 + 3*2 + (2+1)*1 = 21.
        4 * 3 + 3 * 2 + (2 + 1) * 1, 3 * 2 + (2 + 1) * 1, "csr"),
}


def _check_row(row, name):
  (shape, params, nnz, flops_dense, flops_eff, bytes_sparse, bytes_index,
   encoding) = EXPECTED[name]
  assert row.name == name
  assert row.shape == shape
  assert row.params == params
  assert row.nonzeros == nnz
  assert row.sparsity == pytest.approx(1 - nnz / params)
  assert row.flops_dense == flops_dense
  assert row.flops_effective == flops_eff
  assert row.bytes_dense == 4 * params
  assert row.bytes_sparse == bytes_sparse
  assert row.bytes_index == bytes_index
  assert row.encoding == encoding
  assert row.compression_ratio == pytest.approx(4 * params / bytes_sparse)


@pytest.mark.parametrize("mask_kind", sorted(MASKS))
def test_hand_made_pytree(mask_kind):
  report = report_lib.compression_report(
      PARAMS, MASKS[mask_kind], flops=FLOPS)
  assert [r.name for r in report.layers] == sorted(EXPECTED)
  for row in report.layers:
    _check_row(row, row.name)
    for field in ("params", "nonzeros", "flops_dense", "flops_effective",
                  "bytes_dense", "bytes_sparse", "bytes_index"):
      assert type(getattr(row, field)) is int  # Python int, not numpy.

  total = report.total
  assert total.name == "total" and total.shape is None
  assert total.params == 72 + 3 + 12 + 600
  assert total.nonzeros == 8 + 3 + 5 + 3
  assert total.sparsity == pytest.approx(1 - 19 / 687)
  assert total.flops_dense == 3600 + 0 + 24 + 1200
  assert total.flops_effective == 400 + 0 + 10 + 6
  assert total.bytes_dense == 4 * 687
  assert total.bytes_sparse == 41 + 12 + 22 + 21
  assert total.bytes_index == 9 + 0 + 2 + 9
  assert total.encoding == "mixed"
  assert total.compression_ratio == pytest.approx(2748 / 96)
  assert total.flops_ratio == pytest.approx(4824 / 416)


def test_without_masks_counts_stored_zeros_only():
  report = report_lib.compression_report(PARAMS, flops=FLOPS)
  conv = report.layers[0]
  assert conv.nonzeros == 71
  assert conv.flops_effective == 2 * 71 * 25
  # dense 288; bitmask 9 + 4*71 = 293; csr 4*71 + 71*1 + 19*1 = 374.
  assert (conv.encoding, conv.bytes_sparse) == ("dense", 288)
  assert report.total.nonzeros == 71 + 3 + 5 + 3


def test_sparse_bytes_are_what_the_compressed_file_stores(tmp_path):
  # float32 leaves without -0.0: the file stores the same entries in the
  # same encodings, so its bytes per leaf are the report's.
  masked = {"Conv_0": {"kernel": np.where(CONV_MASK, CONV, 0.)},
            "Dense_0": {"kernel": DENSE0, "bias": BIAS0},
            "Dense_1": {"kernel": DENSE1}}
  report = report_lib.compression_report(PARAMS, MASKS["full"])
  path = tmp_path / "model.spz"
  spz.save(path, masked)
  stored = spz.file_report(path).leaves
  assert [(r.name, r.encoding, r.bytes_sparse) for r in report.layers] == [
      (leaf.path, leaf.encoding, leaf.nbytes) for leaf in stored]
  assert report.total.bytes_sparse == sum(leaf.nbytes for leaf in stored)


def test_scalar_false_mask_zeroes_leaf():
  report = report_lib.compression_report(
      {"b": BIAS0}, {"b": False})
  assert report.layers[0].nonzeros == 0
  # dense 12; bitmask 1 + 0; csr 0 + 0 + 2*1 = 2.
  assert (report.layers[0].encoding, report.layers[0].bytes_sparse) == (
      "bitmask", 1)


@pytest.mark.parametrize("shape, nonzero_at, encoding, bytes_sparse", [
    # rows 10, cols 10000 (2 B), nnz 300 (2 B pointers):
    # csr 4*300 + 300*2 + 11*2 = 1822 < bitmask 12500 + 1200.
    ((10, 10000), (np.repeat(np.arange(10), 30), np.tile(np.arange(30), 10)),
     "csr", 4 * 300 + 300 * 2 + 11 * 2),
    # 1-D leaf as (1, 1000): 4*1 + 1*2 + 2*1 = 8 < bitmask 125 + 4.
    ((1000,), (np.array([999]),), "csr", 4 * 1 + 1 * 2 + 2 * 1),
    # cols - 1 = 69999 > 65535 needs 4 bytes: 4 + 1*4 + 2*1 = 10.
    ((1, 70000), (np.array([0]), np.array([5])), "csr", 4 + 1 * 4 + 2 * 1),
])
def test_csr_index_widths(shape, nonzero_at, encoding, bytes_sparse):
  w = np.zeros(shape, np.float32)
  w[nonzero_at] = 1.
  row = report_lib.compression_report({"w": w}).layers[0]
  assert (row.encoding, row.bytes_sparse) == (encoding, bytes_sparse)
  assert row.bytes_index == bytes_sparse - 4 * row.nonzeros


def test_without_flops_every_flops_field_is_none():
  report = report_lib.compression_report(PARAMS, MASKS["full"])
  for row in (*report.layers, report.total):
    assert row.flops_dense is None and row.flops_effective is None
  assert report.total.flops_ratio is None
  assert "n/a" in report.table()
  assert "pass flops=" in report.table()


def test_flops_must_count_every_parameter():
  partial = {k: v for k, v in FLOPS.items() if k != "Dense_0/bias"}
  with pytest.raises(ValueError, match="Dense_0/bias"):
    report_lib.compression_report(PARAMS, flops=partial)
  other = flops_lib.param_flops(
      lambda p, x: x @ p["Dense_0"]["kernel"],
      {"Dense_0": {"kernel": DENSE0.T}}, np.ones((B, 3), np.float32))
  with pytest.raises(ValueError, match="Dense_0/kernel"):
    report_lib.compression_report({"Dense_0": {"kernel": DENSE0}},
                                  flops=other)


def test_bad_masks():
  with pytest.raises(ValueError, match="match no parameter"):
    report_lib.compression_report(PARAMS, {"Dense_9": {"kernel": True}})
  with pytest.raises(ValueError, match="Dense_0/kernel"):
    report_lib.compression_report(
        PARAMS, {"Dense_0": {"kernel": np.ones((3, 4), bool)}})


def test_json_round_trip_and_table(tmp_path):
  report = report_lib.compression_report(
      PARAMS, MASKS["full"], flops=FLOPS)
  path = tmp_path / "report.json"
  report.to_json(path)
  with open(path) as f:
    loaded = json.load(f)
  assert loaded == report.to_dict()
  assert loaded["total"]["params"] == 687
  assert loaded["total"]["compression_ratio"] == pytest.approx(2748 / 96)
  assert loaded["layers"][0]["shape"] == [3, 3, 2, 4]

  table = report.table()
  lines = table.splitlines()
  for name in EXPECTED:
    assert any(line.startswith(name) for line in lines)
  total_line = next(line for line in lines if line.startswith("total"))
  # 687 params, 19 nonzeros, 1 - 19/687 = 97.2 %, 2748 B = 2.7 KiB, 96 B,
  # 2748 / 96 = 28.6x.
  for text in ("687", "19", "97.2 %", "2.7 KiB", "96 B", "28.6x", "mixed"):
    assert text in total_line
  footer = " ".join(lines[lines.index(total_line) + 1:])
  for text in ("dense (4 B/value)", "bitmask", "csr", "11.6x fewer"):
    assert text in footer  # 4824 / 416 = 11.6.


class _LeNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (5, 5), padding="SAME")(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(120)(x))
    x = nn.relu(nn.Dense(84)(x))
    return nn.Dense(10)(x)


def _valid_taps(size, kernel, out, stride=1, pad=0):
  """Per kernel tap: of ``out`` output positions, those at which it reads an
  input entry (numpy, from the definition of a strided convolution whose
  input is padded with ``pad`` zeros in front)."""
  rows = np.arange(out)[:, None] * stride - pad + np.arange(kernel)[None]
  return ((rows >= 0) & (rows < size)).sum(0)


def test_lenet_report():
  model = _LeNet()
  x = np.ones((4, 28, 28, 1), np.float32)
  variables = model.init(jax.random.key(0), x)
  params = variables["params"]
  rng = np.random.default_rng(0)
  masks = {name: {"kernel": rng.random(layer["kernel"].shape) < 0.3}
           for name, layer in params.items()}
  flops = flops_lib.param_flops(model.apply, variables, x)
  report = report_lib.compression_report(params, masks, flops=flops)
  rows = {r.name: r for r in report.layers}

  def kept(name):
    return np.asarray(params[name]["kernel"]) * masks[name]["kernel"] != 0

  # Conv_0: 5x5 SAME on 28x28, a tap at each output position it reads the
  # image from; Conv_1: VALID 5x5 on 14x14 -> every tap at 10x10.
  taps = _valid_taps(28, 5, 28, pad=2)
  assert taps.tolist() == [26, 27, 28, 27, 26]
  per_tap = np.outer(taps, taps)[:, :, None, None]
  assert rows["Conv_0/kernel"].flops_dense == 2 * 6 * taps.sum() ** 2
  assert rows["Conv_0/kernel"].flops_effective == 2 * int(
      (per_tap * kept("Conv_0")).sum())
  assert rows["Conv_1/kernel"].flops_dense == 2 * 5 * 5 * 6 * 16 * 10 * 10
  assert rows["Conv_1/kernel"].flops_effective == (
      2 * np.count_nonzero(kept("Conv_1")) * 10 * 10)
  assert rows["Dense_0/kernel"].flops_dense == 2 * 400 * 120
  assert rows["Dense_2/kernel"].flops_effective == 2 * np.count_nonzero(
      kept("Dense_2"))
  assert rows["Conv_0/bias"].flops_dense == 0
  assert report.total.params == ((5 * 5 * 1 * 6 + 6) + (5 * 5 * 6 * 16 + 16)
                                 + (400 * 120 + 120) + (120 * 84 + 84)
                                 + (84 * 10 + 10))
  assert report.total.flops_dense == (
      2 * 6 * taps.sum() ** 2 + 2 * 5 * 5 * 6 * 16 * 10 * 10
      + 2 * 400 * 120 + 2 * 120 * 84 + 2 * 84 * 10)
  assert report.total.flops_effective == sum(
      r.flops_effective for r in report.layers)
  # Flax initialises biases to zero, so only kernels hold nonzeros.
  assert report.total.nonzeros == sum(
      np.count_nonzero(kept(n)) for n in masks)


# Whole models against XLA: with no bias and no elementwise work, XLA's
# FLOPs of the batch are the products' only, B times the report's total.


def xla_flops(fn, *args):
  """``cost_analysis()['flops']`` of ``jax.jit(fn)`` compiled on ``args``."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # one dict per device in older JAX
    cost = cost[0]
  return cost["flops"]


def _linen_report(model, x, masks=None):
  variables = model.init(jax.random.key(0), x)
  flops = flops_lib.param_flops(model.apply, variables, x)
  report = report_lib.compression_report(variables["params"], masks,
                                         flops=flops)
  return report, xla_flops(model.apply, variables, x)


def test_dense_on_tokens_matches_xla():
  x = np.ones((B, 7, 3), np.float32)  # [batch, tokens, features]
  report, xla = _linen_report(nn.Dense(5, use_bias=False), x)
  assert B * report.total.flops_dense == xla
  assert report.layers[0].flops_dense == 2 * 7 * 3 * 5  # every token


def test_padded_strided_conv_matches_xla():
  x = np.ones((B, 9, 9, 2), np.float32)
  model = nn.Conv(4, (3, 3), strides=2, padding="SAME", use_bias=False)
  report, xla = _linen_report(model, x)
  assert B * report.total.flops_dense == xla
  # SAME, stride 2 on 9: 5 outputs, pads (1, 1); the taps read 4, 5, 4 of
  # them, not 3 * 5 (the count at every output position).
  taps = _valid_taps(9, 3, 5, stride=2, pad=1)
  assert taps.tolist() == [4, 5, 4]
  assert report.total.flops_dense == 2 * 2 * 4 * taps.sum() ** 2
  assert report.total.flops_dense < 2 * 3 * 3 * 2 * 4 * 5 * 5


class _NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(2, 3, (3, 3), strides=2, padding="SAME",
                         use_bias=False, rngs=rngs)
    self.head = nnx.Linear(3 * 3 * 3, 4, use_bias=False, rngs=rngs)

  def __call__(self, x):
    return self.head(self.conv(x).reshape(x.shape[0], -1))


def test_nnx_model_matches_xla():
  model = _NnxNet(nnx.Rngs(0))
  x = np.ones((B, 6, 6, 2), np.float32)
  apply_fn, state = flops_lib.nnx_apply(model)
  flops = flops_lib.param_flops(apply_fn, state, x)
  report = report_lib.compression_report(nnx.state(model, nnx.Param),
                                         flops=flops)
  assert [r.name for r in report.layers] == ["conv/kernel", "head/kernel"]
  assert B * report.total.flops_dense == xla_flops(apply_fn, state, x)
  # SAME, stride 2 on 6: 3 outputs, pads (0, 1); taps read 3, 3, 2 of them.
  taps = _valid_taps(6, 3, 3, stride=2, pad=0)
  assert taps.tolist() == [3, 3, 2]
  assert report.layers[0].flops_dense == 2 * 2 * 3 * taps.sum() ** 2


def test_effective_flops_of_half_the_columns():
  model = nn.Dense(6, use_bias=False)
  x = np.ones((B, 7, 4), np.float32)  # 7 tokens
  variables = model.init(jax.random.key(0), x)
  kernel = np.asarray(variables["params"]["kernel"])
  keep = np.zeros((4, 6), bool)
  keep[:, ::2] = True  # columns 0, 2, 4
  report, _ = _linen_report(model, x, {"kernel": keep})
  # numpy: one multiply-add per token and nonzero kept weight.
  macs = sum(np.count_nonzero(kernel[i, j] * keep[i, j])
             for _ in range(7) for i in range(4) for j in range(6))
  assert report.total.flops_effective == 2 * macs == 2 * 7 * 4 * 3
  assert report.total.flops_dense == 2 * 7 * 4 * 6
  assert report.total.flops_ratio == 2
  # The same as XLA's count of the layer without the masked columns.
  narrow = {"params": {"kernel": kernel[:, ::2]}}
  assert B * report.total.flops_effective == xla_flops(
      nn.Dense(3, use_bias=False).apply, narrow, x)


def test_all_variables_as_params_drop_the_collection_prefix():
  model = nn.Dense(3)
  x = np.ones((B, 4), np.float32)
  variables = model.init(jax.random.key(0), x)
  flops = flops_lib.param_flops(model.apply, variables, x)
  report = report_lib.compression_report(variables, flops=flops)
  rows = {r.name: r.flops_dense for r in report.layers}
  assert rows == {"params/bias": 0, "params/kernel": 2 * 4 * 3}


def test_total_counts_products_without_a_weight():
  # q @ k^T reads no weight: the total holds it, no row does.
  def attention(p, x):
    q, k = x @ p["q"], x @ p["k"]
    return jnp.einsum("btd,bsd->bts", q, k)

  rng = np.random.default_rng(0)
  params = {name: rng.standard_normal((4, 3)).astype(np.float32)
            for name in ("k", "q")}
  x = np.ones((B, 5, 4), np.float32)  # 5 tokens
  flops = flops_lib.param_flops(attention, params, x)
  report = report_lib.compression_report(params, {"q": np.zeros((4, 3))},
                                         flops=flops)
  scores = 2 * 5 * 5 * 3
  assert [r.flops_dense for r in report.layers] == [2 * 5 * 4 * 3] * 2
  assert report.total.flops_dense == 2 * 2 * 5 * 4 * 3 + scores
  assert B * report.total.flops_dense == xla_flops(attention, params, x)
  # Masking q removes its products, not those of the scores.
  assert report.total.flops_effective == 2 * 5 * 4 * 3 + scores
  assert "the total includes 150 of products" in " ".join(
      report.table().split())
