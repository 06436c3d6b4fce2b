"""The capability matrix: frameworks x probes, each answer with its key figure, then the stated facts
(languages, licence: probes/stated.py, marked as stated), then why each probe that did not pass did
not (probes/registry.py says what each column asks and what it replaces)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dlarena.probes.registry import PROBES
from dlarena.probes.stated import CHECKED, STATED, stated
from dlarena.report.tables import table

Answer = dict[str, Any]


def figure_text(value: Any) -> str:
    """A probe's key figure as the matrix writes it: an error as 3.0e-07, a count as 12, a share as 0.48."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.1e}" if 0 < abs(value) < 0.01 else f"{value:.3g}"
    return str(value)


def cell_text(answer: Answer | None) -> str:
    """One pair of the matrix: pass with its key figure, or the outcome; never blank."""
    if answer is None:
        return "*not asked*"
    figure = figure_text(answer["figures"].get(PROBES[answer["probe"]].figure)) if answer["probe"] in PROBES else ""
    if answer["outcome"] != "pass":
        return f"*{answer['outcome']}*" + (f" ({figure})" if figure and answer["outcome"] == "fail" else "")
    return f"pass ({figure})" if figure else "pass"


# The stated facts' columns, after the probes' (zer0n's "interfaces"; SVDS's "languages").
STATED_COLUMNS = ("languages (stated)", "licence (stated)")


def stated_cells(framework: str) -> tuple[str, str]:
    """A framework's stated languages and licence, or a dash where dlarena states nothing."""
    entry = STATED.get(framework)
    return (", ".join(entry.languages), entry.licence) if entry else ("-", "-")


def matrix(answers: Sequence[Answer], frameworks: Sequence[str] | None = None,
           probes: Sequence[str] | None = None) -> list[str]:
    """The Markdown lines of the matrix and, under it, the reason of every answer that is not a pass."""
    frameworks = list(frameworks or dict.fromkeys(answer["framework"] for answer in answers))
    probes = list(probes or [name for name in PROBES if any(answer["probe"] == name for answer in answers)])
    by_pair = {(answer["framework"], answer["probe"]): answer for answer in answers}
    body = [[framework, *(cell_text(by_pair.get((framework, probe))) for probe in probes), *stated_cells(framework)]
            for framework in frameworks]
    lines = table(["framework", *probes, *STATED_COLUMNS], body)
    lines += ["", "Columns: " + "; ".join(
        f"`{name}`: {PROBES[name].question} (key figure: {PROBES[name].figure}; replaces "
        f"{', '.join(PROBES[name].replaces)})" for name in probes if name in PROBES) + "."]
    sources = sorted({entry.source for framework in frameworks if (entry := stated(framework)) is not None})
    if sources:
        lines += ["", f"Columns marked *stated* are not measured: they come from these sources, checked {CHECKED}"
                  " (languages: the project's own APIs; licence: its LICENSE file, checked against the installed"
                  " wheel's metadata): " + "; ".join(sources) + "."]
    reasons = [f"- {framework} `{probe}`: {answer['outcome']}: {answer['message']}"
               for framework in frameworks for probe in probes
               if (answer := by_pair.get((framework, probe))) is not None and answer["outcome"] != "pass"]
    if reasons:
        lines += ["", "Why not a pass:", "", *reasons]
    return lines
