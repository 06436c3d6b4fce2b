"""Every framework that the published comparisons named keeps a row: `dlarena list frameworks` shows the
ones dlarena runs and, for the others, `unavailable` with the measured reason."""

from __future__ import annotations

import json

import pytest

from conftest import Cli
from dlarena.frameworks import studies
from dlarena.frameworks.registry import FRAMEWORKS
from dlarena.plan.suite import builtin_suites

# The frameworks each study compared, spelled as the study spelled them, copied by hand from the
# project's reference notes (reference/workloads.md: §1.0 for Shi et al., the result tables of §2.5 for
# Karmanov, §3 for Shatnawi et al., and zer0n/deepframeworks' README abstract), and the SVDS review's list
# as the project's notes give it. Written out here, not read from studies.py, so that a study's name
# dropped from the table fails this test.
NAMED_BY_STUDIES = {
    "shi2016": {"Caffe", "CNTK", "MXNet", "TensorFlow", "Torch"},
    "karmanov2017": {"Caffe2", "Chainer", "CNTK", "MXNet (Gluon)", "Gluon", "Keras (CNTK)", "Keras (TF)",
                     "Keras (Theano)", "TensorFlow", "TF", "Lasagne", "MXNet (Module)", "MXNet", "PyTorch",
                     "Knet", "R-Keras (TF)"},
    "shatnawi2017": {"TensorFlow", "Theano", "CNTK"},
    "zer0n2016": {"Caffe", "CNTK", "TensorFlow", "Theano", "Torch"},
    "svds2017": {"Theano", "TensorFlow", "Torch", "Caffe", "MXNet", "Neon", "CNTK", "Deeplearning4j",
                 "Apache SINGA", "DyNet"},
}
# Frameworks of the studies that no reachable registry gave a working install of when this was measured:
# each must have a row, registered or unavailable.
NO_ROUTE = ("torch7", "knet", "neon", "deeplearning4j", "singa", "dynet", "r-keras")


def test_the_study_table_names_every_framework_each_study_compared() -> None:
    assert set(studies.STUDIES) == set(NAMED_BY_STUDIES)
    for key, expected in NAMED_BY_STUDIES.items():
        assert {named for named, _ in studies.STUDIES[key].frameworks} == expected, key


def test_every_entry_points_to_a_registered_framework_or_an_unavailable_record() -> None:
    """A misspelled dlarena name fails here; so does an unavailable record left behind once its framework
    is registered, or one that no study names."""
    for study in studies.STUDIES.values():
        for named, target in study.frameworks:
            assert (target in FRAMEWORKS) != (target in studies.UNAVAILABLE), f"{study.key}: {named!r} -> {target!r}"
    assert set(studies.UNAVAILABLE) <= set(studies.named_targets())


def test_every_unavailable_record_says_what_was_measured_and_when() -> None:
    for record in studies.UNAVAILABLE.values():
        assert record.reason.startswith(f"measured {studies.MEASURED_ON}: "), record.name
        assert len(record.reason) > len("measured 2026-12-01: ") + 40, record.name
        assert record.description and record.name not in FRAMEWORKS


def test_a_study_with_a_suite_has_the_suite_s_name() -> None:
    suites = set(builtin_suites())
    assert {"shi2016", "karmanov2017", "shatnawi2017"} <= suites & set(studies.STUDIES)


def test_list_frameworks_shows_every_study_framework_with_its_studies(cli: Cli) -> None:
    result = cli("list", "frameworks", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    for key, expected in NAMED_BY_STUDIES.items():
        listed = {named for row in rows.values() for entry in row["studies"] if entry["study"] == key
                  for named in entry["names"]}
        assert listed == expected, key
    for name in NO_ROUTE:
        assert name in rows, name
    for row in rows.values():
        assert row["status"] in ("installed", "not installed", "unavailable"), row
        if row["status"] == "unavailable":
            assert row["reason"].startswith("measured ") and row["studies"], row
        elif row["status"] == "not installed":
            assert "dlarena env setup" in row["setup"] or "pip install" in row["setup"], row
    assert {name for name, row in rows.items() if row["status"] != "unavailable"} == set(FRAMEWORKS)


@pytest.mark.parametrize("name", ["torch7", "cntk"])
def test_the_table_says_which_studies_named_a_framework_and_why_one_is_unavailable(cli: Cli, name: str) -> None:
    lines = cli("list", "frameworks").stdout.splitlines()
    assert lines[0].split()[:2] == ["framework", "status"]
    start = next(i for i, line in enumerate(lines) if line.split()[0] == name)
    block = " ".join(line.strip() for line in lines[start:start + 12])
    assert f"named by {studies.named_by(name)}" in block
    if name in studies.UNAVAILABLE:
        assert lines[start].split()[1] == "unavailable"
        assert f"why: {studies.UNAVAILABLE[name].reason}" in block


def test_a_report_s_section_has_a_row_for_every_unavailable_framework() -> None:
    lines = studies.unavailable_markdown()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith(("| framework", "| ---"))]
    assert len(rows) == len(studies.UNAVAILABLE)
    for record, row in zip(studies.unavailable_rows(), rows, strict=True):
        assert row.count(" | ") == 2 and record.reason in row and studies.named_by(record.name) in row
