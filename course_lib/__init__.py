"""Attention, from the bottleneck to FlashAttention: the course package."""

__version__ = "0.1.0"
