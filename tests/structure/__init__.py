"""Tests of `sparsify.structure`."""
