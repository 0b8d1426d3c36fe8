"""Benchmark scripts: each prints a table and one JSON line; none asserts a number."""
