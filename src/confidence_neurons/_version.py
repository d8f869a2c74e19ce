"""The toolkit's version (a leaf: provenance and the package both read it)."""

__version__ = "0.1.0"
