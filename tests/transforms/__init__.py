"""Tests of `sparsify.transforms`."""
