"""Benchmarks: numbers printed next to the raw limits measured in the same run."""
