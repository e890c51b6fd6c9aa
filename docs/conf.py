"""Sphinx configuration of the delve documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` from the
repository root; ``-W`` turns every warning into an error.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The API pages import delve from this checkout, installed or not; _ext holds
# the formula renderer.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")

project = "delve"
author = "the delve authors"
copyright = "2019-2026, the delve authors"
release = re.search(r'__version__ = "([^"]+)"', (ROOT / "delve" / "__init__.py").read_text()).group(1)
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "svgmath",
]
# Formulas become inline SVG at build time: the pages load nothing from the network.
html_math_renderer = "svgmath"

# numpy-style docstrings only; "Attributes" become fields, not extra
# attribute entries that would duplicate the dataclass fields autodoc lists.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_mock_imports: list[str] = []


exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
html_static_path = ["_static"]
html_theme = "alabaster"
html_theme_options = {
    "description": "Layer saturation of PyTorch models, live during training",
    "fixed_sidebar": True,
}
html_title = f"delve {release}"
nitpicky = False
