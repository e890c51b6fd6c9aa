"""The built documentation works offline: formulas are drawn at build time, nothing is fetched."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the documentation tools come with requirements/docs.txt")

ROOT = Path(__file__).resolve().parents[2]
REMOTE_ASSET = re.compile(r"""<(?:script|link|img)\b[^>]*\b(?:src|href)=["'](?:https?:)?//""", re.I)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html")
    subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(ROOT / "docs"), str(out)],
        check=True,
        timeout=600,
    )
    return out


def test_no_page_loads_anything_from_the_network(site) -> None:
    pages = sorted(site.glob("**/*.html"))
    assert len(pages) > 10
    offenders = {page.name: REMOTE_ASSET.findall(page.read_text(encoding="utf-8")) for page in pages}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_formulas_are_svg_not_raw_tex(site) -> None:
    page = (site / "saturation.html").read_text(encoding="utf-8")
    assert page.count('<span class="math"') >= 10 and page.count('<div class="math"') >= 3
    text_only = re.sub(r"<svg.*?</svg>", "", page, flags=re.S)
    text_only = re.sub(r'aria-label="[^"]*"', "", text_only)
    assert "\\frac" not in text_only and "\\sum" not in text_only
    assert "mathjax" not in page.lower()
