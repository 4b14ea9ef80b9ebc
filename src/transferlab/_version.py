"""The package version, in a leaf module so that reading it imports nothing."""

__version__ = "0.1.0"
