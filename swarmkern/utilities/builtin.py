"""Imports every module that registers a built-in utility type (add yours here)."""
from . import registry  # noqa: F401  (the "python" utility)
