"""The ``modzoo`` command line (``main``); the ``data`` and ``plugin`` command groups live beside it."""
from .main import main

__all__ = ["main"]
