"""``python -m delve.demo``: the same as ``delve demo``."""

import sys

from ..cli import main

# Guarded so that importing this module (pytest --doctest-modules does) runs nothing.
if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
