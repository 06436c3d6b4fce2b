"""The JavaScript that draws the HTML report's charts (Vega, Vega-Lite and Vega-Embed), inlined in
every report so that it opens from disk with no network.

vl-convert ships the three libraries and bundles them into one script; the bundle is the same for
a given vl-convert release and Vega-Lite version, and takes seconds to build, so it is kept in
dlarena's cache folder under a name that says both.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import altair as alt
import vl_convert

from dlarena.data.cache import cache_base

# The Vega-Lite version Altair writes its specifications for ("v6.4.1" -> "6.4"): the bundle must
# render that version.
VEGA_LITE_VERSION = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
# The libraries as globals for report.js, which is a classic script: vl-convert's default snippet,
# spelled out because its type stubs make the argument required.
GLOBALS_SNIPPET = "window.vegaEmbed = vegaEmbed; window.vega = vega; window.vegaLite = vegaLite;"


def bundle_path() -> Path:
    return cache_base() / "report" / f"vega-{vl_convert.get_vega_embed_version()}-lite-{VEGA_LITE_VERSION}.js"


def javascript() -> str:
    """The bundled libraries, built once per vl-convert release and cached (written atomically)."""
    path = bundle_path()
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    text: str = vl_convert.javascript_bundle(GLOBALS_SNIPPET, vl_version=VEGA_LITE_VERSION)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(partial, path)
    except OSError:  # a read-only cache costs seconds per report, not the report
        pass
    return text
