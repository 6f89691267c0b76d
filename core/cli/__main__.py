"""``python -m modzoo.cli``: the same entry point as the ``modzoo`` script."""
import sys

from .main import main

sys.exit(main())
