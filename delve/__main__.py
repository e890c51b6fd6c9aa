"""``python -m delve``: the same as the ``delve`` command."""

import sys

from .cli import main

sys.exit(main())
