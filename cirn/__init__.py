"""cirn: Content Invariant Representation Network toolkit (train, export, run)."""
__version__ = "0.1.0"
