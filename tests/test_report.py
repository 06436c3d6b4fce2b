"""Which framework is fastest, `compare` of N frameworks, and the pandas-ready export, read from a real store.

Results are written through the Store as the orchestrator writes them (one result per worker process,
then the cell's summary from measure/aggregate), with step times chosen so that the answer is known.
No framework is imported: a framework is only a name in the store.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path

import pytest

from conftest import Cli
from dlarena import api
from dlarena.errors import DlarenaError
from dlarena.measure.compare import MIN_PROCESSES
from dlarena.plan.cell import Cell
from dlarena.store.database import Store
from stored_runs import process, run, seed, timed, verified, written

# Its module-scoped runs are built once: under pytest-xdist its tests stay in one test process.
pytestmark = pytest.mark.xdist_group("report-runs")



def _timing_run(db: Path) -> str:
    """fcn5-small inference: torch fastest (1 ms, verified), tensorflow 1% slower (not a real difference),
    jax 1.5x slower (unverified), onnxruntime twice as fast but mismatching, keras-jax failed; and
    training at one process per cell, where no verdict may be given."""
    store = Store.open(db)
    infer = {name: Cell(name, "fcn5-small", "infer", 32, 1)
             for name in ("jax", "torch", "tensorflow", "onnxruntime", "keras-jax")}
    train = {name: Cell(name, "fcn5-small", "train", 32, 1) for name in ("torch", "jax")}
    run_id = run(store, [
        (infer["jax"], timed(1.5e-3, 3)), (infer["torch"], timed(1e-3, 3)),
        (infer["tensorflow"], timed(1.01e-3, 3)), (infer["onnxruntime"], timed(0.5e-3, 3)),
        (infer["keras-jax"], [process("failed", 0)]),
        (train["torch"], timed(2e-3, 1)), (train["jax"], timed(3e-3, 1)),
    ])
    for framework in ("torch", "tensorflow"):
        verified(store, framework, "fcn5-small", "ok")
    verified(store, "onnxruntime", "fcn5-small", "mismatch")
    store.close()
    return run_id


@pytest.fixture(scope="module")
def timing_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The timing run, written once for the tests that only read it (writing it bootstraps every cell)."""
    return written(tmp_path_factory, "timing", _timing_run)


@pytest.fixture(scope="module")
def timing_report(timing_db: Path) -> str:
    return api.report(db=timing_db)


def _row(text: str, start: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(start))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_report_opens_with_the_fastest_framework_and_how_much_slower_each_other_is(timing_report: str) -> None:
    report = timing_report
    headline = report.index("## Which framework is fastest")
    assert headline < report.index("## Time per mini-batch") < report.index("## Step times")
    # every cell shares device, precision, batch and threads: said once, not in every title
    assert "(every cell: cpu, float32, batch 32, 1 thread)" in report
    assert ("**fcn5-small, infer**: **torch** is fastest (1 ms a step); really faster than jax;"
            " not really faster than tensorflow.") in report
    assert _row(report, "| torch |")[:3] == ["torch", "1 ms", "fastest"]
    assert _row(report, "| jax *(unverified)* |") == ["jax *(unverified)*", "1.5 ms", "1.50x slower",
                                                       _row(report, "| jax *(unverified)* |")[3], "yes"]
    low, high = (float(x) for x in _row(report, "| jax *(unverified)* |")[3].split(" - "))
    assert low < 1.5 < high
    tensorflow = _row(report, "| tensorflow |")
    assert tensorflow[2] == "1.01x slower" and tensorflow[4] == "no"
    # twice as fast, but its numbers are wrong: struck out, never the fastest
    assert _row(report, "| ~~onnxruntime~~ *invalid: mismatch* |")[2] == "2.00x faster"
    assert _row(report, "| keras-jax |")[1] == "*failed*"


def test_one_process_a_side_withholds_the_verdict_in_the_headline(timing_report: str) -> None:
    report = timing_report
    train = report[report.index("**fcn5-small, train**"):]
    assert train.startswith("**fcn5-small, train**: **torch** is fastest (2 ms a step); no verdict against jax"
                            f" (fewer than {MIN_PROCESSES} processes).")
    assert _row(train, "| jax *(unverified)* |")[2:] == ["1.50x slower", _row(train, "| jax *(unverified)* |")[3],
                                                        "withheld: 1 process"]
    assert "A verdict is withheld where a side has fewer than 2 worker processes" in report


def test_every_time_in_the_report_has_a_unit(timing_report: str) -> None:
    report = timing_report
    table = report[report.index("## Time per mini-batch"):report.index("## Step times")]
    assert "| torch | 1 ms |" in table and "| jax | 1.5 ms (unverified" not in table
    assert "0.001" not in report and "e-0" not in report and "e+0" not in report


def test_accuracy_cells_rank_by_time_to_target(db_path: Path) -> None:
    store = Store.open(db_path)
    cells = {name: Cell(name, "digits-mlp", "accuracy", 32, 1) for name in ("torch", "jax", "tensorflow")}
    # four seeds a side: the fewest at which a Mann-Whitney test of one figure per seed can reach p < 0.05
    run(store, [
        (cells["torch"], [seed(t, i) for i, t in enumerate((10.0, 10.2, 10.5, 11.0))]),
        (cells["jax"], [seed(t, i) for i, t in enumerate((20.0, 20.5, 21.0, 22.0))]),
        (cells["tensorflow"], [seed(None, i) for i in range(4)]),
    ])
    store.close()
    report = api.report(db=db_path)
    assert "**digits-mlp, accuracy**: **torch** is fastest (10.3 s to the target); the other framework is really" \
           " slower." in report
    assert "| framework | median time to target | vs fastest | 95% CI | real difference? |" in report
    assert _row(report, "| jax *(unverified)* | 20.8 s |")[2:5:2] == ["2.00x slower", "yes"]
    assert _row(report, "| tensorflow |")[1] == "*target not reached*"


def test_compare_ranks_several_frameworks_against_the_fastest_or_a_baseline(timing_db: Path) -> None:
    db_path = timing_db
    store = Store.open(db_path, create=False)
    run_id = store.run("latest")["id"]
    store.close()
    ranked = api.compare("latest", frameworks="jax,torch,tensorflow", db=db_path)
    assert ranked.startswith(f"# jax, torch, tensorflow in run {run_id}, against the fastest")
    assert _row(ranked, "| fcn5-small | infer | 32 | 1 | torch |")[5:7] == ["1 ms", "fastest"]
    jax = _row(ranked, "| fcn5-small | infer | 32 | 1 | jax *(unverified)* |")
    assert jax[6] == "1.50x slower" and jax[9].startswith("slower by 50.0% (95% CI ")
    assert _row(ranked, "| fcn5-small | train | 32 | 1 | jax *(unverified)* |")[9] == "withheld: 1 process"
    assert "Fastest in 2 compared configurations: jax 0, torch 2, tensorflow 0." in ranked
    against_jax = api.compare("latest", frameworks=["jax", "torch", "tensorflow"], baseline="jax", db=db_path)
    torch = _row(against_jax, "| fcn5-small | infer | 32 | 1 | torch |")
    assert torch[6] == "1.50x faster" and torch[9].startswith("faster by 33.3% (95% CI ")
    assert _row(against_jax, "| fcn5-small | infer | 32 | 1 | jax *(unverified)* |")[6] == "baseline"
    assert "Against jax: torch faster in 1, slower in 0, same in 0, withheld in 1;" in against_jax
    # two frameworks and no baseline: B against A, as before
    pair = api.compare("latest", frameworks="torch,jax", db=db_path)
    assert pair.startswith("# jax (B) against torch (A)")
    assert "withheld: 1 process" in pair and "A verdict is withheld where" in pair


@pytest.mark.parametrize(("frameworks", "baseline", "message"), [
    ("torch", None, "--frameworks takes at least two frameworks to compare, got 1"),
    ("torch,jax,torch", None, "--frameworks names 'torch' more than once"),
    ("torch,jax", "tensorflow", "--baseline 'tensorflow' is not one of --frameworks: torch, jax"),
    (None, "torch", "--baseline torch goes with --frameworks A,B,C"),
    ("torch,jax,pytorch", None, "has no cell of 'pytorch' (did you mean 'torch'?); its frameworks: jax, keras-jax,"),
])
def test_compare_names_a_bad_choice_in_one_sentence(timing_db: Path, frameworks: str | None, baseline: str | None,
                                                    message: str) -> None:
    with pytest.raises(DlarenaError, match=re.escape(message)):
        api.compare("latest", frameworks=frameworks, baseline=baseline, db=timing_db)


def test_compare_on_the_command_line(cli: Cli, timing_db: Path) -> None:
    db_path = timing_db
    ranked = cli("compare", "latest", "--frameworks", "torch,jax,tensorflow", "--baseline", "torch",
                 "--db", str(db_path))
    assert ranked.returncode == 0, ranked.stderr
    assert "against torch" in ranked.stdout.splitlines()[0]
    two_runs = cli("compare", "latest", "latest", "--frameworks", "torch,jax,tensorflow", "--db", str(db_path))
    assert two_runs.returncode == 2 and "Traceback" not in two_runs.stderr
    assert two_runs.stderr.count("\n") == 1 and "reads one run" in two_runs.stderr


@pytest.fixture(scope="module")
def export_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return written(tmp_path_factory, "export", _export_run)


def _export_run(db: Path) -> str:
    """Compiled frameworks against their eager twins, an unstable cell, a failed one and an accuracy cell."""
    store = Store.open(db)
    cell = {name: Cell(name, "fcn5-small", "train", 32, 1)
            for name in ("torch", "torch-compile", "tensorflow", "tensorflow-xla", "jax")}
    run_id = run(store, [
        (cell["torch"], timed(2e-3, 2)),
        (cell["torch-compile"], timed(1e-3, 2, first_step_s=5.0)),  # pays off after some 4,500 steps
        (cell["tensorflow"], timed(1e-3, 2)),
        (cell["tensorflow-xla"], timed(2e-3, 2, first_step_s=5.0)),  # slower once compiled: never pays off
        (cell["jax"], timed(1e-3, 2, shifts=(0.0, 0.3))),  # two processes 30% apart, each wide: two warnings
        (Cell("keras-jax", "fcn5-small", "train", 32, 1), [process("failed", 0)]),
        (Cell("torch", "digits-mlp", "accuracy", 32, 1), [seed(5.0, 0)]),
    ])
    store.close()
    return run_id


def test_the_export_has_one_type_per_column(export_db: Path) -> None:
    db_path = export_db
    rows = {(row["framework"], row["workload"]): row for row in api.results(db=db_path)}
    compiled, never = rows[("torch-compile", "fcn5-small")], rows[("tensorflow-xla", "fcn5-small")]
    assert isinstance(compiled["break_even_steps"], int) and compiled["break_even_steps"] > 0
    assert never["break_even_steps"] is None and never["eager_counterpart"] == "tensorflow"
    assert rows[("torch", "fcn5-small")]["break_even_steps"] is None
    assert rows[("torch", "fcn5-small")]["eager_counterpart"] is None
    unstable = rows[("jax", "fcn5-small")]
    warnings = json.loads(json.dumps(unstable["warnings"])).split("; ")
    assert len(warnings) == 2 and all(warning.startswith("unstable: ") for warning in warnings)
    assert unstable["unstable"] is True and rows[("torch", "fcn5-small")]["unstable"] is False
    assert rows[("keras-jax", "fcn5-small")]["unstable"] is None
    trained = rows[("torch", "digits-mlp")]
    assert trained["epochs_to_target"] == 13 and isinstance(trained["epochs_to_target"], int)
    assert isinstance(trained["epochs_trained"], int) and isinstance(trained["seeds"], int)
    text = api.export_rows(db=db_path, fmt="csv")
    exported = {(row["framework"], row["workload"]): row for row in csv.DictReader(io.StringIO(text))}
    assert exported[("tensorflow-xla", "fcn5-small")]["break_even_steps"] == ""
    assert exported[("torch", "digits-mlp")]["epochs_to_target"] == "13"
    assert exported[("jax", "fcn5-small")]["unstable"] == "True"


def test_the_dataframe_reads_with_numeric_and_boolean_columns(export_db: Path) -> None:
    db_path = export_db
    pandas = pytest.importorskip("pandas", reason="pandas is not installed (pip install 'dlarena[pandas]')")
    frame = api.dataframe(db=db_path)
    assert list(frame.columns) == list(api.export.COLUMNS) and len(frame) == 7
    assert frame["median_s"].dtype.kind == "f" and frame["break_even_steps"].dtype.kind == "f"
    ok = frame[frame["status"] == "ok"]
    assert set(ok["unstable"]) == {True, False}
    from_csv = pandas.read_csv(io.StringIO(api.export_rows(db=db_path, fmt="csv")))
    assert from_csv["break_even_steps"].dtype.kind == "f" and from_csv["epochs_to_target"].dtype.kind == "f"
    assert from_csv["break_even_steps"].isna().sum() == 6 and from_csv["break_even_steps"].max() > 4000


def test_the_dataframe_without_pandas_says_how_to_install_it(export_db: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    db_path = export_db
    monkeypatch.setitem(sys.modules, "pandas", None)  # what `import pandas` meets where it is not installed
    with pytest.raises(DlarenaError, match=r"needs pandas, which is not installed: pip install 'dlarena\[pandas\]'"):
        api.dataframe(db=db_path)


def test_select_takes_every_axis_as_a_comma_separated_string_or_a_sequence() -> None:
    from_text = api.select("quick", frameworks="torch", workloads="fcn5-small,lstm32-small", scenarios="train",
                           batch_sizes="16,32", threads="1", precisions="float32", devices="cpu")
    from_lists = api.select("quick", frameworks=["torch"], workloads=("fcn5-small", "lstm32-small"),
                            scenarios=["train"], batch_sizes=[16, 32], threads=1)
    cells = [cell for cell, _ in from_text.cells(cores=2)]
    assert cells == [cell for cell, _ in from_lists.cells(cores=2)]
    assert {(cell.framework, cell.scenario, cell.threads) for cell in cells} == {("torch", "train", 1)}
    assert {(cell.workload, cell.batch_size) for cell in cells} == {
        (workload, batch) for workload in ("fcn5-small", "lstm32-small") for batch in (16, 32)}
    with pytest.raises(DlarenaError, match="thread counts must be positive integers separated by commas, got 'x'"):
        api.select("quick", threads="1,x")
    with pytest.raises(DlarenaError, match="unknown framework 'pytorch'"):
        api.select("quick", frameworks="pytorch")
