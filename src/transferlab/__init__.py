"""transferlab: run, compare and trust transfer-learning recipes for pretrained transformers."""

__version__ = "0.1.0"
