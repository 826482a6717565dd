"""Attention, from the bottleneck to FlashAttention: the course package."""

from importlib import metadata

# The version lives in pyproject.toml alone; None where course_lib is imported from a checkout
# without being installed (PYTHONPATH=.).
try:
    __version__ = metadata.version("course_lib")
except metadata.PackageNotFoundError:
    __version__ = None
