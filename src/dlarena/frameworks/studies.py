"""The frameworks that the published comparisons named, as each study named them, and what dlarena has
for each: a registered framework (registry.FRAMEWORKS), or an `Unavailable` record saying why there is
none, measured on this project's machine kind (Debian 12, PyPI and Debian's archive reachable, nothing
else). Imports nothing heavier than the registry: `dlarena list frameworks` and the reports read it.

A study's spelling is kept as the study wrote it (Karmanov writes both "MXNet (Gluon)" and "Gluon"), so
that a reader finds the name of the paper's table here. Where dlarena's framework is the study's
framework in a later version (TensorFlow 2 for the studies' TensorFlow 1, Keras 3 for Karmanov's Keras
2 on TensorFlow), the framework's own description says which version it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlarena.frameworks.registry import FRAMEWORKS, FrameworkInfo

# The day every reason below was measured (tried again on a machine of this project's kind).
MEASURED_ON = "2026-12-01"


@dataclass(frozen=True)
class Study:
    key: str  # the suite's name where dlarena has a suite for the study
    short: str  # a word for a table's column: `Karmanov`
    title: str
    source: str  # where its list of frameworks was read
    # (the name as the study wrote it, dlarena's framework or the key of an Unavailable record)
    frameworks: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Unavailable:
    """A framework a study named that dlarena cannot run here, and why (measured, not assumed)."""

    name: str
    description: str
    reason: str


UNAVAILABLE: dict[str, Unavailable] = {
    record.name: record
    for record in (
        Unavailable(
            name="torch7",
            description="Torch7, the Lua framework (LuaJIT, nn, optim); PyTorch is the torch framework",
            reason=(f"measured {MEASURED_ON}: Torch7 installs from luarocks.org and GitHub (torch/distro), "
                    "whose names do not resolve from this machine; Debian bookworm, bullseye and trixie have "
                    "no lua-torch-torch7 (apt-cache policy: no candidate) and buster's archive "
                    "(archive.debian.org) does not resolve either; PyPI's lutorpy 1.3.7 only bridges to an "
                    "installed Torch7 and its setup stops with 'failed to find torch luajit'"),
        ),
        Unavailable(
            name="knet",
            description="Knet, the Julia framework",
            reason=(f"measured {MEASURED_ON}: Knet installs from Julia's package registry (pkg.julialang.org, "
                    "github.com), whose names do not resolve from this machine; Debian bullseye has Julia "
                    "1.5.3 but no Knet, bookworm and trixie have no Julia, and PyPI's 'knet' is an unrelated "
                    "network-topology tool (KNet 1.0.16)"),
        ),
        Unavailable(
            name="r-keras",
            description="R's keras package: Keras on TensorFlow, driven from R through reticulate",
            reason=(f"measured {MEASURED_ON}: R's keras and tensorflow packages install from CRAN "
                    "(cran.r-project.org does not resolve from this machine); Debian bullseye, bookworm and "
                    "trixie have R (r-base-core 4.2.2 in bookworm) and r-cran-reticulate but no r-cran-keras "
                    "or r-cran-tensorflow"),
        ),
        Unavailable(
            name="neon",
            description="Nervana Neon, Intel Nervana's Python framework",
            reason=(f"measured {MEASURED_ON}: Neon installs from its GitHub sources (NervanaSystems/neon; "
                    "github.com does not resolve from this machine); PyPI has no 'nervananeon' for any "
                    "Python (pip download --python-version 2.7/3.5/3.6: no distribution) and its 'neon' "
                    "0.1.2 is an unrelated terminal-colour utility; no Debian release packages it"),
        ),
        Unavailable(
            name="deeplearning4j",
            description="Deeplearning4j, the JVM framework (ND4J)",
            reason=(f"measured {MEASURED_ON}: Deeplearning4j's JARs come from Maven Central "
                    "(repo.maven.apache.org and search.maven.org do not resolve from this machine); Java 17 "
                    "and Maven 3.8.7 are here but the local Maven repository holds no deeplearning4j or nd4j "
                    "artefact, no Debian release packages them, and PyPI's pydl4j 0.1.5 installs but builds its "
                    "JAR at first use with Maven from the same Maven Central, in Docker (here it stops at "
                    "'Cannot connect to the Docker daemon')"),
        ),
        Unavailable(
            name="singa",
            description="Apache SINGA",
            reason=(f"measured {MEASURED_ON}: PyPI's only SINGA, singa 3.0.0.dev1 (one cp36 wheel), installs "
                    "on Python 3.6 (217 MB, 99 s) and imports, but was built without SWIG's NumPy "
                    "typemaps: tensor.from_numpy and tensor.to_numpy fail with \"TypeError: "
                    "CopyFloatDataFromHostPtr() missing 1 required positional argument: 'num'\", so no "
                    "array enters or leaves a SINGA tensor; its working releases come from conda's "
                    "nusdbsystem channel and singa.apache.org, which do not resolve from this machine, and "
                    "no Debian release packages it"),
        ),
    )
}


# Read from the studies' papers and code, as recorded in the project's reference/workloads.md.
STUDIES: dict[str, Study] = {
    study.key: study
    for study in (
        Study(
            key="shi2016",
            short="Shi",
            title="Shi, Wang, Xu, Chu: Benchmarking State-of-the-Art Deep Learning Software Tools (DLBench, 2016)",
            source="arXiv 1608.07249 abstracts (v1: Caffe, CNTK, TensorFlow, Torch; v7/v8 add MXNet); "
                   "hclhkbu/dlbench README (Torch7)",
            frameworks=(
                ("Caffe", "caffe"),
                ("CNTK", "cntk"),
                ("MXNet", "mxnet"),
                ("TensorFlow", "tensorflow"),
                ("Torch", "torch7"),
            ),
        ),
        Study(
            key="karmanov2017",
            short="Karmanov",
            title="Karmanov et al.: DeepLearningFrameworks, a Rosetta Stone of deep learning frameworks (2017-2018)",
            source="ilkarman/DeepLearningFrameworks README.md at 671e2a0 (its three result tables)",
            frameworks=(
                ("Caffe2", "caffe2"),
                ("Chainer", "chainer"),
                ("CNTK", "cntk"),
                ("MXNet (Gluon)", "gluon"),
                ("Gluon", "gluon"),
                ("Keras (CNTK)", "keras2-cntk"),
                ("Keras (TF)", "keras-tensorflow"),
                ("Keras (Theano)", "keras2-theano"),
                ("TensorFlow", "tensorflow"),
                ("TF", "tensorflow"),
                ("Lasagne", "lasagne"),
                ("MXNet (Module)", "mxnet"),
                ("MXNet", "mxnet"),
                ("PyTorch", "torch"),
                ("Knet", "knet"),
                ("R-Keras (TF)", "r-keras"),
            ),
        ),
        Study(
            key="shatnawi2017",
            short="Shatnawi",
            title="Shatnawi, Al-Bdour, Al-Qurran, Al-Ayyoub: A Comparative Study of Open Source Deep Learning "
                  "Frameworks (ICICS 2018)",
            source="the paper's abstract (DOI 10.1109/IACS.2018.8355444): TensorFlow, Theano, CNTK",
            frameworks=(
                ("TensorFlow", "tensorflow"),
                ("Theano", "theano"),
                ("CNTK", "cntk"),
            ),
        ),
        Study(
            key="zer0n2016",
            short="zer0n",
            title="zer0n: Evaluation of Deep Learning Toolkits (zer0n/deepframeworks, 2015-2016)",
            source="zer0n/deepframeworks README.md: \"Caffe, CNTK, TensorFlow, Theano, and Torch\"",
            frameworks=(
                ("Caffe", "caffe"),
                ("CNTK", "cntk"),
                ("TensorFlow", "tensorflow"),
                ("Theano", "theano"),
                ("Torch", "torch7"),
            ),
        ),
        Study(
            key="svds2017",
            short="SVDS",
            title="Silicon Valley Data Science (Rubashkin): Getting Started with Deep Learning (2017)",
            source="svds.com/getting-started-deep-learning; the article is not in the project's stored "
                   "references: this list is as the project's reference notes give it",
            frameworks=(
                ("Theano", "theano"),
                ("TensorFlow", "tensorflow"),
                ("Torch", "torch7"),
                ("Caffe", "caffe"),
                ("MXNet", "mxnet"),
                ("Neon", "neon"),
                ("CNTK", "cntk"),
                ("Deeplearning4j", "deeplearning4j"),
                ("Apache SINGA", "singa"),
                ("DyNet", "dynet"),
            ),
        ),
    )
}


@dataclass(frozen=True)
class Naming:
    """One study's names for one dlarena framework or unavailable record."""

    study: str  # Study.key
    short: str
    names: tuple[str, ...]


def namings(name: str) -> list[Naming]:
    """Which studies named the framework (or unavailable record) ``name``, and how, in study order."""
    found = []
    for study in STUDIES.values():
        names = tuple(named for named, target in study.frameworks if target == name)
        if names:
            found.append(Naming(study.key, study.short, names))
    return found


def named_targets() -> list[str]:
    """Every dlarena framework or unavailable record some study names, each once, in study order."""
    return list(dict.fromkeys(target for study in STUDIES.values() for _, target in study.frameworks))


def resolve(name: str) -> FrameworkInfo | Unavailable:
    """The registered framework, else the unavailable record, that a study's entry points to; a name
    that is neither is a mistake in this table (tests/test_studies.py), reported as unavailable."""
    if name in FRAMEWORKS:
        return FRAMEWORKS[name]
    if name in UNAVAILABLE:
        return UNAVAILABLE[name]
    return Unavailable(name=name, description=name,
                       reason="a study's entry names a framework that dlarena does not register")


def unavailable_rows() -> list[Unavailable]:
    """The studies' frameworks that dlarena cannot run, in study order: the rows every framework
    listing and report shows besides the registered frameworks."""
    return [record for name in named_targets() if isinstance(record := resolve(name), Unavailable)]


def framework_rows() -> list[dict[str, object]]:
    """Every registered framework (installed or not, with how to set it up) and then every framework a
    study named that dlarena cannot run (with why), each with the studies that named it: what
    `dlarena list frameworks --json` prints and what a report's framework table shows."""
    rows: list[dict[str, object]] = []
    for info in FRAMEWORKS.values():
        installed = info.is_installed()
        rows.append({
            "name": info.name, "status": "installed" if installed else "not installed", "installed": installed,
            "versions": info.versions(), "scenarios": list(info.scenarios), "precisions": list(info.precisions),
            "extra": info.extra, "environment": info.environment, "description": info.description,
            "setup": None if installed else info.unavailable_message(),
            "studies": [{"study": naming.study, "names": list(naming.names)} for naming in namings(info.name)],
        })
    for record in unavailable_rows():
        rows.append({
            "name": record.name, "status": "unavailable", "installed": False, "versions": {}, "scenarios": [],
            "precisions": [], "extra": "", "environment": None, "description": record.description,
            "reason": record.reason,
            "studies": [{"study": naming.study, "names": list(naming.names)} for naming in namings(record.name)],
        })
    return rows


def named_by(name: str) -> str:
    """`Shi, Shatnawi as CNTK; Karmanov as MXNet (Gluon), Gluon`: the studies that named the framework
    (or unavailable record) ``name``, grouped by how they spelled it; empty when no study named it."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for naming in namings(name):
        groups.setdefault(naming.names, []).append(naming.short)
    return "; ".join(f"{', '.join(shorts)} as {', '.join(names)}" for names, shorts in groups.items())


def unavailable_markdown() -> list[str]:
    """A report's section (Markdown lines) on the studies' frameworks that dlarena cannot run, so that
    every report lists every framework the studies compared: which studies named each, and why."""
    lines = ["## Frameworks the studies named that do not run here", "",
             "| framework | named by | why |", "| --- | --- | --- |"]
    for record in unavailable_rows():
        cells = (record.description, named_by(record.name), record.reason)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines
