"""litlab: a small autoregressive decoder on a frozen ViT, multi-tasking through text."""

__version__ = "0.1.0"
