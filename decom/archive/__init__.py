"""Encrypted Parquet archives: keys, encryption, writer, manifest, verification and restore.

docs/archive-format.md is the format; this package is one implementation of it.
"""
