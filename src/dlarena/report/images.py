"""The HTML report's charts as static files, for papers and slides: SVG, or PNG at twice the size
(vl-convert renders the same Vega-Lite specifications the page draws, with no browser)."""

from __future__ import annotations

from collections.abc import Sequence

import vl_convert

from dlarena.report.html import Chart

IMAGE_FORMATS = ("svg", "png")
# PNG pixels per CSS pixel: sharp on a slide or a high-density screen.
PNG_SCALE = 2.0


def render(charts: Sequence[Chart], fmt: str) -> dict[str, bytes]:
    """Each chart's file name and contents in ``fmt`` (one of IMAGE_FORMATS)."""
    files = {}
    for chart in charts:
        if fmt == "svg":
            files[f"{chart.element_id}.svg"] = str(vl_convert.vegalite_to_svg(chart.spec)).encode("utf-8")
        else:
            files[f"{chart.element_id}.png"] = bytes(vl_convert.vegalite_to_png(chart.spec, scale=PNG_SCALE))
    return files
