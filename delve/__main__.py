"""``python -m delve``: the same as the ``delve`` command."""

import sys

from .cli import main

# Guarded so that importing this module (pytest --doctest-modules does) runs nothing.
if __name__ == "__main__":
    sys.exit(main())
