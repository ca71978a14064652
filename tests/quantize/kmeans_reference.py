"""Numpy references of k-means++ and Lloyd, for the quantize tests."""

import numpy as np


def np_seed(x, mask, u, k):
  """k-means++ in float64 driven by the uniforms ``u`` (inverse-CDF draws)."""
  x = np.where(mask, x, 0.0).astype(np.float64)
  mask = mask.astype(np.float64)
  n = len(x)
  dist = lambda c: np.sum(mask * (x - c) ** 2, axis=1)
  centres = [x[min(int(np.floor(u[0] * n)), n - 1)]]
  d2 = dist(centres[0])
  for i in range(1, k):
    total = d2.sum()
    if total > 0:
      cum = np.cumsum(d2)
      rows = np.nonzero(cum > u[i] * total)[0]
      row = rows[0] if rows.size else int(np.argmax(d2))
    else:
      row = min(int(np.floor(u[i] * n)), n - 1)
    centres.append(x[row])
    d2 = np.minimum(d2, dist(x[row]))
  return np.stack(centres)


def np_assign(x, mask, c):
  d = np.sum(mask[:, None, :] * (x[:, None, :] - c[None]) ** 2, axis=-1)
  return np.argmin(d, axis=1)


def np_lloyd(x, c, iterations, mask=None):
  """Plain Lloyd in float64, coordinate-wise means over kept entries."""
  mask = np.ones(x.shape, bool) if mask is None else mask
  x = np.where(mask, x, 0.0).astype(np.float64)
  mask = mask.astype(np.float64)
  c = np.array(c, np.float64)
  for _ in range(iterations):
    a = np_assign(x, mask, c)
    for j in range(len(c)):
      rows = a == j
      weight = mask[rows].sum(axis=0)
      total = (x[rows] * mask[rows]).sum(axis=0)
      c[j] = np.where(weight > 0, total / np.maximum(weight, 1), c[j])
  return c, np_assign(x, mask, c)
