"""Renderers of the dry-run report (`decom plan`)."""
