"""The studies' published timings (spec/published.py), the study suites' framework lists, and the
report's section that sets measured ratios between frameworks beside the published ones.

Results enter the store as the orchestrator writes them (one result per worker process); no framework
is imported by the report tests. The suite test runs the real `dlarena` command.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from pathlib import Path

import pytest

from conftest import Cli
from dlarena import api
from dlarena.frameworks import studies
from dlarena.frameworks.registry import FRAMEWORKS
from dlarena.measure.aggregate import aggregate
from dlarena.plan.cell import Cell
from dlarena.plan.suite import builtin_suites, load_suite
from dlarena.report.against_published import ranking_change
from dlarena.spec import SCENARIOS
from dlarena.spec.catalogue import CATALOGUE
from dlarena.spec.published import FIGURES, NO_FIGURES, REFERENCE_FRAMEWORKS, Figure, measured_name
from dlarena.store.database import PlannedCell, Store, StoredResult

# --- the published figures ---------------------------------------------------------------------------

# Copied by hand from reference/workloads.md (section 2.5: Karmanov's README tables; 4: convnet-benchmarks'
# headline numbers; 5: zer0n's README), not read from spec/published.py: a figure mistyped there fails
# here. (study, table, column, study's name) -> (dlarena framework, workload, scenario, batch, as printed)
PICKED = {
    ("karmanov2017", "CNN training time (s), 10 epochs", "K80", "Keras (Theano)"):
        ("keras2-theano", "karmanov-cnn", "train", 64, "269"),
    ("karmanov2017", "CNN training time (s), 10 epochs", "P100", "PyTorch"):
        ("torch", "karmanov-cnn", "train", 64, "51"),
    ("karmanov2017", "CNN training time (s), 10 epochs", "P100", "Knet"): ("knet", "karmanov-cnn", "train", 64, "??"),
    ("karmanov2017", "ResNet-50 feature extraction, seconds per 1000 images", "K80", "Caffe2"):
        ("caffe2", "resnet50", "infer", 32, "14.1"),
    ("karmanov2017", "ResNet-50 feature extraction, seconds per 1000 images", "K80", "Gluon"):
        ("gluon", "resnet50", "infer", 32, "–"),
    ("karmanov2017", "RNN (GRU) training time (s)", "P100", "Keras (CNTK)"):
        ("keras2-cntk", "karmanov-gru", "train", 64, "53"),
    ("chintala2015", "GoogLeNet: total (forward + backward), ms", "Titan X", "CuDNN[R4]-fp32 (Torch)"):
        ("torch7", "googlenet", "train", 128, "470"),
    ("chintala2015", "VGG-A: backward, ms", "Titan X", "TensorFlow"): ("tensorflow", "vgg-a", None, 64, "382"),
    ("chintala2015", "OverFeat: forward, ms", "Titan X", "TensorFlow"): ("tensorflow", "overfeat", "infer", 128, "90"),
    ("zer0n2016", "AlexNet: latency (ms) of a forward-backward pass", "Titan X, convnet-benchmarks at efb3d93",
     "TF 0.6 (ref)"): ("tensorflow", "alexnet-owt", "train", 128, "292"),
    ("zer0n2016", "Inception v1: latency (ms) of a forward-backward pass", "Titan X, zer0n's runs",
     "TF 0.8 (his run)"): ("tensorflow", "googlenet", "train", 128, "518"),
}
# Lines per printed table: Karmanov's CNN, ResNet-50 and GRU tables x 2 columns; convnet-benchmarks'
# 4 networks x 3 measures x 2 frameworks; zer0n's 2 networks x 3 columns.
TABLE_SIZES = {"karmanov2017": (13 + 11 + 8) * 2, "chintala2015": 4 * 3 * 2, "zer0n2016": 2 * 3}


def _figure(study: str, table: str, series: str, named: str) -> Figure:
    found = [figure for figure in FIGURES if (figure.study, figure.table, figure.series, figure.named)
             == (study, table, series, named)]
    assert len(found) == 1, (study, table, series, named)
    return found[0]


def test_picked_figures_are_as_published() -> None:
    for (study, table, series, named), (framework, workload, scenario, batch, printed) in PICKED.items():
        figure = _figure(study, table, series, named)
        assert (figure.framework, figure.workload, figure.scenario, figure.batch_size, figure.printed) == (
            framework, workload, scenario, batch, printed), figure
        assert figure.value == (float(printed) if printed[0].isdigit() else None), figure


def test_every_figure_says_what_it_is_and_where_it_comes_from() -> None:
    assert collections.Counter(figure.study for figure in FIGURES) == TABLE_SIZES
    assert len({figure.key for figure in FIGURES}) == len(FIGURES)
    for figure in FIGURES:
        assert figure.workload in CATALOGUE and not CATALOGUE[figure.workload].is_small, figure
        assert figure.scenario is None or figure.scenario in SCENARIOS, figure
        assert figure.source and figure.table and figure.hardware and figure.unit, figure
        # dlarena's name, or a framework of a study that dlarena records as unavailable
        assert figure.framework in FRAMEWORKS or figure.framework in studies.UNAVAILABLE, figure
        assert measured_name(figure.framework) in FRAMEWORKS or figure.framework in ("knet", "r-keras"), figure
    assert _figure("karmanov2017", "CNN training time (s), 10 epochs", "K80", "PyTorch").epochs == 10
    assert _figure("karmanov2017", "CNN training time (s), 10 epochs", "P100", "CNTK").versions == "CUDA 8, cuDNN 6"
    assert _figure("chintala2015", "AlexNet: forward, ms", "Titan X", "CuDNN[R4]-fp32 (Torch)").versions \
        == "Torch7, cuDNN R4, fp32"
    for study, reference in REFERENCE_FRAMEWORKS.items():
        assert reference in FRAMEWORKS and study in TABLE_SIZES
    assert set(NO_FIGURES) == {"shi2016", "shatnawi2017"}


def test_the_study_s_names_map_as_frameworks_studies_maps_them() -> None:
    mapping = {named: target for named, target in studies.STUDIES["karmanov2017"].frameworks}
    for figure in FIGURES:
        if figure.study == "karmanov2017":
            assert mapping[figure.named] == figure.framework, figure


# --- the study suites --------------------------------------------------------------------------------

STUDY_SUITES = ("shi2016", "karmanov2017", "shatnawi2017")


def test_every_suite_names_only_registered_frameworks() -> None:
    for name in builtin_suites():
        for sweep in load_suite(name).sweeps:
            assert set(sweep.frameworks or ()) <= set(FRAMEWORKS), name


@pytest.mark.parametrize("name", STUDY_SUITES)
def test_a_study_suite_runs_the_study_s_frameworks(name: str) -> None:
    """Every framework the study named that dlarena runs (PyTorch in Torch7's place), and no other."""
    expected = {measured_name(target) for _, target in studies.STUDIES[name].frameworks} & set(FRAMEWORKS)
    for sweep in load_suite(name).sweeps:
        assert set(sweep.frameworks or ()) == expected, name
    assert {cell.framework for cell, _ in load_suite(name).cells(cores=2)} == expected


def test_a_framework_whose_environment_is_not_set_up_gives_unavailable_cells(cli: Cli, tmp_path: Path) -> None:
    """The study suite names frameworks of managed environments; where none is set up (an empty
    environments folder) their cells are stored as `unavailable` with the setup command."""
    suite = tmp_path / "cntk-theano.toml"
    # the shatnawi2017 suite's own frameworks on its small MNIST twin, without the frameworks dlarena
    # installs with itself (TensorFlow), so that no worker starts
    text = builtin_suites()["shatnawi2017"].replace('"cntk", "tensorflow", "theano"', '"cntk", "theano"')
    assert text != builtin_suites()["shatnawi2017"]
    suite.write_text(text)
    result = cli("run", "--suite", str(suite), "--workloads", "mnist-cnn-small", "--scenarios", "train", "--threads",
                 "1", "--batch-sizes", "8", "--repetitions", "1", "--target-ci", "0", "--db", "results.db",
                 env={"DLARENA_ENVS": str(tmp_path / "no-envs")})
    # stored, not an error; a run of which nothing could be measured says so and exits 1
    assert result.returncode == 1, result.stderr
    assert "no cell could be measured: 2 unavailable" in result.stderr and "Traceback" not in result.stderr
    rows = {row["framework"]: row for row in api.results(db=tmp_path / "results.db")}
    assert set(rows) == {"cntk", "theano"}
    assert rows["cntk"]["status"] == rows["theano"]["status"] == "unavailable"
    assert "`dlarena env setup cntk`" in rows["cntk"]["message"]
    assert "`dlarena env setup legacy`" in rows["theano"]["message"]


# --- the report ----------------------------------------------------------------------------------------

ENVIRONMENT = {"cpu_model": "test cpu", "cores": 2, "memory_bytes": 1 << 30, "os": "Linux", "python": "3.11"}
STEP_OFFSETS = [0.002 * k for k in range(-20, 21)]  # symmetric: the pooled median is the chosen one


def _process(repetition: int, median: float) -> StoredResult:
    data = {"status": "ok", "framework_version": "1.0", "first_step_s": 0.5, "warmup_s": [],
            "samples_s": [median * (1 + offset) for offset in STEP_OFFSETS], "flops_per_step": 2e6, "params": 10,
            "parity": {}, "import_s": 1.0, "build_s": 0.1, "cores_used": 1.0, "peak_rss_bytes": 1 << 20,
            "resources": {}}
    return StoredResult(status="ok", message="", stderr_tail="", command=["python"], exit_code=0, wall_s=1.0,
                        started_at="t0", finished_at="t1", data=data, repetition=repetition)


def _trained(repetition: int, train_s: float) -> StoredResult:
    """One seed of an accuracy cell that trained its 3 epochs in ``train_s`` seconds (no target)."""
    epochs = [{"epoch": epoch, "train_s": train_s / 3, "data_s": 0.0, "eval_s": 0.1, "loss": 0.5,
               "test_accuracy": 0.85} for epoch in (1, 2, 3)]
    result = _process(repetition, 0.01)
    result.data["accuracy"] = {
        "dataset": "imdb", "target_accuracy": None, "epochs_planned": 3, "final_accuracy": 0.85,
        "epochs_to_target": None, "time_to_target_s": None, "epochs": epochs, "train_s": train_s, "data_s": 0.0,
        "eval_s": 0.3, "data_load_s": 0.1}
    return result


def _failed() -> StoredResult:
    return StoredResult(status="unavailable", message="cntk runs in the managed environment cntk, which is not set up",
                        stderr_tail="", command=["python"], exit_code=None, wall_s=0.0, started_at="t0",
                        finished_at="t1", data={}, repetition=0)


def _run(db: Path, cells: Sequence[tuple[Cell, float | None]]) -> None:
    """A finished run: each cell three ok processes at its median step time (an accuracy cell: three
    seeds that each trained for that many seconds), or unavailable (None)."""
    store = Store.open(db)
    planned = [PlannedCell(cell, 60.0, f"key{index}") for index, (cell, _) in enumerate(cells)]
    run_id, ids = store.start_run(ENVIRONMENT, "karmanov2017", 3, "", ["dlarena", "run"], "0.1.0", planned)
    for cell_id, (cell, median) in zip(ids, cells, strict=True):
        if median is None:
            store.record_result(cell_id, _failed())
            continue
        for repetition in range(3):
            result = _trained(repetition, median) if cell.scenario == "accuracy" else _process(repetition, median)
            store.record_result(cell_id, result)
        store.record_summary(cell_id, aggregate(store.ok_processes(cell_id), cell.batch_size, cell.threads, 100.0))
    store.finish_run(run_id, "finished")
    store.close()


def _row(text: str, start: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(start))
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.fixture(scope="module")
def published_report(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Karmanov's CNN trained at batch 64 on one thread: tensorflow fastest (10 ms), torch 20 ms, mxnet
    30 ms, keras-tensorflow 40 ms, cntk unavailable; its small twin; and Shi's FCN-5 small twin."""
    db = tmp_path_factory.mktemp("published") / "results.db"
    medians: dict[str, float | None] = {"tensorflow": 0.01, "torch": 0.02, "mxnet": 0.03, "keras-tensorflow": 0.04,
                                        "cntk": None}
    cells: list[tuple[Cell, float | None]] = [(Cell(name, "karmanov-cnn", "train", 64, 1), median)
                                             for name, median in medians.items()]
    cells += [(Cell("torch", "karmanov-cnn-small", "train", 8, 1), 0.001),
              (Cell("torch", "fcn5-small", "train", 8, 1), 0.001)]
    _run(db, cells)
    return api.report(db=db)


def test_the_report_sets_measured_ratios_beside_the_published_ones(published_report: str) -> None:
    report = published_report
    assert "## Against the published figures" in report
    assert ("### Karmanov: CNN training time (s), 10 epochs / measured: karmanov-cnn, train, cpu, float32, batch 64,"
            " 1 thread") in report
    assert "Ratios are each framework's figure over **torch**'s." in report
    assert ("| framework | as Karmanov wrote it | K80 published | K80 ratio | P100 published | P100 ratio"
            " | measured median step | measured ratio |") in report
    # K80: MXNet (Module) 145 s / PyTorch 169 s; P100: 52 / 51; measured 30 ms / 20 ms
    assert _row(report, "| mxnet | MXNet (Module) |") == ["mxnet", "MXNet (Module)", "145", "0.86x", "52", "1.02x",
                                                          "30 ms", "1.50x"]
    assert _row(report, "| torch | PyTorch |")[2:] == ["169", "1.00x", "51", "1.00x", "20 ms", "1.00x"]
    assert _row(report, "| keras-tensorflow | Keras (TF) |")[2:] == ["241", "1.43x", "76", "1.49x", "40 ms", "2.00x"]
    assert _row(report, "| cntk | CNTK |")[2:] == ["163", "0.96x", "53", "1.04x", "*unavailable*", ""]
    assert ("- K80: **the ranking changed** since the study: published mxnet < torch < tensorflow < keras-tensorflow;"
            " measured tensorflow < torch < mxnet < keras-tensorflow (tensorflow 3rd -> 1st, mxnet 1st -> 3rd).") \
        in report
    assert "Published but not in this run: Caffe2, Chainer, MXNet (Gluon), Keras (CNTK), Keras (Theano)," \
           " Lasagne, Knet, R-Keras (TF)." in report
    # nothing was run at the ResNet-50 or GRU tables' configurations
    assert "ResNet-50 feature extraction" not in report and "RNN (GRU)" not in report


def test_the_report_says_why_small_twins_and_some_studies_have_no_figures_beside_them(published_report: str) -> None:
    assert ("- Small twins measured (karmanov-cnn-small): the studies published figures for"
            " karmanov-cnn, not for these; they are not set beside them.") in published_report
    assert "- Shi (fcn5-small): no published timings to compare with: the body of Shi et al.'s paper" \
        in published_report


def test_a_run_the_studies_did_not_time_has_no_such_section(tmp_path: Path) -> None:
    _run(tmp_path / "results.db", [(Cell("torch", "digits-mlp", "train", 32, 1), 0.001)])
    assert "Against the published figures" not in api.report(db=tmp_path / "results.db")


@pytest.mark.parametrize(("published", "measured", "expected"), [
    ({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.1, "b": 0.2, "c": 0.3}, "K80: same order as published (a < b < c)."),
    # a tie the study printed orders nothing: either order here is the published one
    ({"a": 1.0, "b": 1.0, "c": 3.0}, {"a": 0.2, "b": 0.1, "c": 0.3}, "K80: same order as published (b < a < c)."),
    ({"a": 1.0, "b": 2.0, "c": 2.0}, {"a": 0.3, "b": 0.1, "c": 0.2},
     "K80: **the ranking changed** since the study: published a < b = c; measured b < c < a"
     " (b 2nd -> 1st, a 1st -> 3rd)."),
])
def test_ranking_change_wording(published: dict[str, float], measured: dict[str, float], expected: str) -> None:
    assert ranking_change("K80", published, measured) == expected


def test_a_successor_is_labelled_as_standing_in(tmp_path: Path) -> None:
    """convnet-benchmarks timed Torch7; PyTorch is measured in its place and the report says so."""
    _run(tmp_path / "results.db", [(Cell("tensorflow", "googlenet", "infer", 128, 1), 0.5),
                                    (Cell("torch", "googlenet", "infer", 128, 1), 0.4)])
    report = api.report(db=tmp_path / "results.db")
    assert "### Chintala (convnet-benchmarks): GoogLeNet: forward, ms / measured: googlenet, infer" in report
    # forward: Torch 130 ms, TensorFlow 135 ms; measured 400 ms / 500 ms against TensorFlow
    assert _row(report, "| torch (for torch7) |")[1:] == ["CuDNN[R4]-fp32 (Torch) (Torch7, cuDNN R4, fp32)", "130",
                                                          "0.96x", "400 ms", "0.80x"]
    assert "Published: soumith/convnet-benchmarks README.md at b458aab (2017-06-09), in ms per mini-batch; Titan X:" \
           " Intel i7-5930K + NVIDIA Titan X (Maxwell). Mean of 10 forward passes" in report
    assert "- Titan X: same order as published (torch (for torch7) < tensorflow)." in report


def test_an_accuracy_cell_s_training_time_is_set_beside_a_whole_training_run(tmp_path: Path) -> None:
    """Karmanov timed 3 epochs of the GRU; the accuracy scenario trains the same 3 epochs and times them."""
    _run(tmp_path / "results.db", [(Cell("torch", "karmanov-gru", "accuracy", 64, 2, epochs=3), 300.0),
                                    (Cell("mxnet", "karmanov-gru", "accuracy", 64, 2, epochs=3), 450.0)])
    report = api.report(db=tmp_path / "results.db")
    assert ("### Karmanov: RNN (GRU) training time (s) / measured: karmanov-gru, training time, cpu, float32,"
            " batch 64, 2 threads") in report
    # K80: MXNet 29 s / PyTorch 31 s, P100: 24 / 16; measured 450 s / 300 s
    assert _row(report, "| mxnet | MXNet |")[2:] == ["29", "0.94x", "24", "1.50x", "450 s", "1.50x"]
    assert "- K80: **the ranking changed** since the study: published mxnet < torch; measured torch < mxnet" \
           " (torch 2nd -> 1st, mxnet 1st -> 2nd)." in report
    assert "- P100: same order as published (torch < mxnet)." in report
