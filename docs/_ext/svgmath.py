"""Render ``:math:`` and ``.. math::`` to inline SVG at build time, so the docs need no network.

Sphinx's default MathJax renderer loads a script from a CDN; offline, a
reader sees raw TeX. This renderer draws each formula with matplotlib's
mathtext (a subset of TeX: no ``\\bigl``/``\\Bigl``, use ``\\left``/``\\right``)
into an SVG embedded in the page, glyphs as paths, so it shows in any browser
without fonts or scripts. A formula mathtext cannot parse fails the build.
"""

from __future__ import annotations

import html
import io
from typing import Any

from docutils import nodes
from matplotlib import mathtext
from matplotlib.font_manager import FontProperties

INLINE_SIZE = 11.5
DISPLAY_SIZE = 13.0


def render(latex: str, size: float) -> tuple[str, float]:
    """``(svg markup, depth below the baseline in points)`` of one formula."""
    buffer = io.BytesIO()
    depth = mathtext.math_to_image(f"${latex}$", buffer, prop=FontProperties(size=size), format="svg")
    text = buffer.getvalue().decode("utf-8")
    return text[text.index("<svg") :], float(depth or 0.0)


def _formula(node: nodes.Node) -> str:
    return " ".join(node.astext().split())


def visit_inline(translator: Any, node: nodes.Node) -> None:
    latex = _formula(node)
    svg, depth = render(latex, INLINE_SIZE)
    translator.body.append(
        f'<span class="math" role="math" aria-label="{html.escape(latex)}" '
        f'style="display:inline-block;vertical-align:-{depth:.2f}pt">{svg}</span>'
    )
    raise nodes.SkipNode


def visit_block(translator: Any, node: nodes.Node) -> None:
    latex = _formula(node)
    svg, _ = render(latex, DISPLAY_SIZE)
    translator.body.append(
        f'<div class="math" role="math" aria-label="{html.escape(latex)}" style="text-align:center;margin:1em 0">'
        f"{svg}</div>"
    )
    raise nodes.SkipNode


def setup(app: Any) -> dict[str, Any]:
    app.add_html_math_renderer("svgmath", (visit_inline, None), (visit_block, None))
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
