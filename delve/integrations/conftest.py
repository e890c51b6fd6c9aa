"""Pytest collection rule for this folder; not part of delve's API.

The integration modules import their framework when they are imported and
raise ImportError without it. ``--doctest-modules`` imports every module of
delve/, so a checkout without Lightning or transformers would report that
as a collection error; those modules are left out of collection instead.
"""

from __future__ import annotations

import importlib.util

_INTEGRATIONS = {
    "lightning.py": "lightning",
    "huggingface.py": "transformers",
}

collect_ignore = [path for path, package in _INTEGRATIONS.items() if importlib.util.find_spec(package) is None]
