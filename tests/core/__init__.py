"""Tests of `sparsify.core`."""
