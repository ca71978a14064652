"""Tests of `sparsify.models`."""
