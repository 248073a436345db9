"""Benchmarks, run by hand (`make bench`) and never part of `make test`."""
