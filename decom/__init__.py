"""decom: retire legacy electronic document management systems safely and provably."""

__version__ = "0.1.0"
