"""The conformance kit a plugin author runs (``check_plugin``, or ``pytest --modzoo-plugin=NAME`` through
:mod:`modzoo.testing.pytest_plugin`); its public names are those of :mod:`modzoo.testing.conformance`."""
from . import conformance
from .conformance import *  # noqa: F403

__all__ = conformance.__all__
