"""The HTML report: the data behind each chart, the command line, and the page as a person sees it in a
real headless Chromium (offline, from file://).

The run is written by the test through the Store (tests/stored_runs.py), so every answer is known: no
clock, no framework. The browser tests skip, saying why in one line, on a machine without Chromium.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

import browser
from conftest import Cli
from dlarena import api
from dlarena.api import _read
from dlarena.plan.cell import Cell
from dlarena.report import charts, figures
from dlarena.store.database import Store
from stored_runs import process, run, seed, timed, verified, written

pytestmark = pytest.mark.xdist_group("report-html")
# Where the browser test leaves its screenshot, for a person to look at after CI: beside the tests'
# other outputs, outside the repository's tracked files ($DLARENA_ARTEFACTS overrides).
ARTEFACTS = Path(os.environ.get("DLARENA_ARTEFACTS", Path(__file__).resolve().parent.parent / "results" / "artefacts"))
# Median step times (s) by framework and threads: torch fastest at both thread counts, each framework
# faster at two threads than at one.
TRAIN_MEDIANS = {"torch": {1: 1.0e-3, 2: 0.6e-3}, "jax": {1: 1.5e-3, 2: 0.8e-3}, "tensorflow": {1: 2.0e-3, 2: 1.5e-3}}
PROCESSES = 3  # enough worker processes for a verdict (measure/compare.MIN_PROCESSES is 2)


def _sweep_run(db: Path) -> str:
    """fcn5-small training at 1 and 2 threads (Shi et al.'s sweep); inference at batch 32 and 64 with a
    mismatching and a failed framework; digits-mlp trained to accuracy, two seeds each, one failed."""
    store = Store.open(db)
    cells = [(Cell(name, "fcn5-small", "train", 32, threads), timed(median, PROCESSES))
             for name, by_threads in TRAIN_MEDIANS.items() for threads, median in by_threads.items()]
    for batch, scale in ((32, 1.0), (64, 1.6)):
        cells += [
            (Cell("torch", "fcn5-small", "infer", batch, 1), timed(0.4e-3 * scale, PROCESSES)),
            (Cell("jax", "fcn5-small", "infer", batch, 1), timed(0.5e-3 * scale, PROCESSES)),
            (Cell("onnxruntime", "fcn5-small", "infer", batch, 1), timed(0.2e-3 * scale, PROCESSES)),
            (Cell("keras-jax", "fcn5-small", "infer", batch, 1), [process("failed", 0)]),
        ]
    cells += [
        (Cell("torch", "digits-mlp", "accuracy", 32, 1),
         [seed(3.0, index, 0.9, (0.5, 0.8, 0.92, 0.95)) for index in range(2)]),
        (Cell("jax", "digits-mlp", "accuracy", 32, 1),
         [seed(4.0, index, 0.9, (0.4, 0.7, 0.85, 0.91)) for index in range(2)]),
        (Cell("tensorflow", "digits-mlp", "accuracy", 32, 1), [process("failed", 0)]),
    ]
    run_id = run(store, cells)
    for name in ("torch", "jax", "tensorflow"):
        verified(store, name, "fcn5-small", "ok")
    verified(store, "onnxruntime", "fcn5-small", "mismatch")
    store.close()
    return run_id


@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return written(tmp_path_factory, "sweep", _sweep_run)


@pytest.fixture(scope="module")
def rows(sweep_db: Path) -> list[dict[str, object]]:
    return _read(sweep_db, None)[2]


@pytest.fixture(scope="module")
def page(sweep_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("page") / "report.html"
    path.write_text(api.report_page(db=sweep_db), encoding="utf-8")
    return path


# --- the data behind each chart --------------------------------------------------------------------


def test_every_timing_cell_is_one_record_of_its_configurations_step_chart(rows: list[dict[str, object]]) -> None:
    groups = figures.step_times(rows)
    per_configuration = Counter((row["workload"], row["scenario"], row["batch_size"], row["threads"])
                                for row in rows if row["scenario"] != "accuracy")
    assert {(g.key[0], g.key[1], g.key[4], g.key[5]): len(g.records) for g in groups} == per_configuration
    infer = next(g for g in groups if g.key[:2] == ("fcn5-small", "infer") and g.key[4] == 32)
    by_name = {record["framework"]: record for record in infer.records}
    assert by_name["keras-jax"]["timed"] is False and by_name["keras-jax"]["status"] == "failed"
    assert by_name["onnxruntime"]["timed"] and not by_name["onnxruntime"]["valid"]
    assert "mismatch" in by_name["onnxruntime"]["flags"]
    assert by_name["torch"]["median_s"] == pytest.approx(0.4e-3, rel=1e-3)


def test_thread_scaling_is_the_speedup_over_each_frameworks_fewest_threads(rows: list[dict[str, object]]) -> None:
    (group,) = figures.thread_scaling(rows)
    assert group.key[:2] == ("fcn5-small", "train")
    speedups = {(r["framework"], r["threads"]): r["speedup"] for r in group.records}
    for name, by_threads in TRAIN_MEDIANS.items():
        assert speedups[(name, 1)] == pytest.approx(1.0)
        assert speedups[(name, 2)] == pytest.approx(by_threads[1] / by_threads[2])


def test_batch_scaling_leaves_out_invalid_and_untimed_cells(rows: list[dict[str, object]]) -> None:
    (group,) = figures.batch_scaling(rows)
    assert {(r["framework"], r["batch_size"]) for r in group.records} == {
        (name, batch) for name in ("torch", "jax") for batch in (32, 64)}
    torch32 = next(r for r in group.records if r["framework"] == "torch" and r["batch_size"] == 32)
    assert torch32["throughput"] == pytest.approx(32 / 0.4e-3, rel=1e-3)


def test_latency_against_throughput_is_inference_by_batch_size_with_its_tail(rows: list[dict[str, object]]) -> None:
    (group,) = figures.latency_throughput(rows)
    assert group.key[:3] == ("latency", "fcn5-small", "infer")
    assert group.slug != figures.batch_scaling(rows)[0].slug  # two charts, two elements
    torch64 = next(r for r in group.records if r["framework"] == "torch" and r["batch_size"] == 64)
    assert torch64["median_s"] == pytest.approx(0.64e-3, rel=1e-3)
    assert torch64["throughput"] == pytest.approx(64 / 0.64e-3, rel=1e-3)
    assert torch64["p90_s"] is not None and torch64["p99_s"] is None  # 123 steps: a p90, no p99


def test_accuracy_curves_accumulate_training_time_per_seed(sweep_db: Path, rows: list[dict[str, object]]) -> None:
    store = Store.open(sweep_db, create=False)
    try:
        (group,) = figures.accuracy_curves(rows, store.ok_processes)
    finally:
        store.close()
    torch = sorted((r["seed"], r["epoch"], r["time_s"], r["accuracy"]) for r in group.records
                   if r["framework"] == "torch")
    assert [entry[2] for entry in torch if entry[0] == 0] == [1.0, 2.0, 3.0, 4.0]  # 1 s an epoch
    assert {entry[0] for entry in torch} == {0, 1}
    assert {r["framework"] for r in group.records} == {"torch", "jax"}  # the failed cell has no curve
    spread = {(r["framework"], r["epoch"]): r for r in figures.band(group.records)}
    assert spread[("jax", 4)]["low"] == spread[("jax", 4)]["high"] == pytest.approx(0.91)


def test_the_headline_names_the_fastest_valid_framework_and_the_next(sweep_db: Path) -> None:
    from dlarena.report.ranking import rank_rows

    _, _, rows = _read(sweep_db, None)
    store = Store.open(sweep_db, create=False)
    try:
        records = {r["configuration"]: r for r in figures.headline(rank_rows(store, rows))}
    finally:
        store.close()
    train = records["fcn5-small, train, batch 32, 1 thread"]
    assert (train["fastest"], train["next"], train["verdict"]) == ("torch", "jax", "faster")
    assert train["times"] == pytest.approx(1.5, rel=0.02)
    # onnxruntime is twice as fast but computes other numbers: never the fastest
    assert records["fcn5-small, infer, batch 32, 1 thread"]["fastest"] == "torch"
    assert records["digits-mlp, accuracy, batch 32, 1 thread"]["fastest"] == "torch"


def test_the_costs_chart_says_when_compiling_pays_off(db_path: Path) -> None:
    store = Store.open(db_path)
    run(store, [(Cell("torch", "fcn5-small", "train", 32, 1), timed(2e-3, 2)),
                (Cell("torch-compile", "fcn5-small", "train", 32, 1), timed(1e-3, 2, first_step_s=5.0))])
    store.close()
    rows = _read(db_path, None)[2]
    (group,) = figures.costs(rows)
    assert {(r["framework"], r["phase"]) for r in group.records} == {
        (name, phase) for name in ("torch", "torch-compile") for phase in ("import", "build", "first step")}
    steps = next(row["break_even_steps"] for row in rows if row["framework"] == "torch-compile")
    assert 4000 < steps < 5000  # 4.5 s more up front, 1 ms a step saved
    assert charts.costs(group)["title"]["subtitle"] == [
        f"torch-compile: compiling pays off after {round(steps):,} steps (vs torch)"]


def test_both_reports_show_the_capability_answers_of_the_runs_frameworks(tmp_path: Path, sweep_db: Path) -> None:
    import shutil

    db = tmp_path / "results.db"
    shutil.copy(sweep_db, db)
    store = Store.open(db)
    for framework, outcome in (("torch", "pass"), ("jax", "fail"), ("chainer", "pass")):  # chainer: not in the run
        answer = {"framework": framework, "probe": "custom-layer", "outcome": outcome, "framework_version": "1",
                  "message": "" if outcome == "pass" else "it differs", "figures": {"gradient_error": 3e-7},
                  "command": ["python"], "wall_s": 1.0, "stderr_tail": ""}
        store.record_probe(answer, "0.1.0", {"cpu_model": "x", "cores": 1, "memory_bytes": 1, "os": "x", "python": "3"})
    store.close()
    markdown = api.report(db=db)
    section = markdown[markdown.index("## Capabilities"):]
    assert "| torch | pass (3.0e-07) |" in section and "| jax | *fail* (3.0e-07) |" in section
    assert "chainer" not in section and "- jax `custom-layer`: fail: it differs" in section
    page = api.report_page(db=db)
    assert '<td class="probe probe-pass" title="{&#34;gradient_error&#34;: 3e-07}">pass (3.0e-07)</td>' in page
    assert '<td class="probe probe-fail" title="it differs">fail (3.0e-07)</td>' in page


# --- the command line ------------------------------------------------------------------------------


def test_the_page_is_one_self_contained_file(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert "<script src" not in text and "<link" not in text and "@import" not in text
    assert "window.vegaEmbed" in text  # the libraries are inlined
    assert text.count('class="cell-row"') == 17  # every cell of the run


def test_report_html_and_charts_on_the_command_line(cli: Cli, sweep_db: Path, tmp_path: Path) -> None:
    done = cli("report", "--db", str(sweep_db), "--format", "html", "--output", str(tmp_path / "out" / "r.html"))
    assert done.returncode == 0, done.stderr
    charts = (tmp_path / "out" / "r.html").read_text(encoding="utf-8").count('class="chart"')
    done = cli("report", "--db", str(sweep_db), "--format", "svg", "--output", str(tmp_path / "svg"))
    assert done.returncode == 0, done.stderr
    files = sorted((tmp_path / "svg").iterdir())
    assert len(files) == charts and all(file.read_text().lstrip().startswith("<svg") for file in files)
    assert oct((tmp_path / "out" / "r.html").stat().st_mode & 0o777) != oct(0o600)  # the umask's, not mkstemp's


@pytest.mark.parametrize(("args", "words"), [
    (("--run", "20990101-000000-dead"), "no run '20990101-000000-dead'"),
    (("--output", "{file}/report.html"), "cannot write into"),
])
def test_bad_report_input_is_one_sentence_and_writes_nothing(cli: Cli, sweep_db: Path, tmp_path: Path,
                                                             args: tuple[str, ...], words: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    arguments = [arg.replace("{file}", str(blocker)) for arg in args]
    before = sorted(path.name for path in tmp_path.iterdir())
    done = cli("report", "--db", str(sweep_db), "--format", "html", *arguments)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and words in done.stderr and "Traceback" not in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_a_run_without_results_has_no_report(cli: Cli, db_path: Path) -> None:
    store = Store.open(db_path)
    store.start_run({"cpu_model": "x", "cores": 1, "memory_bytes": 1, "os": "x", "python": "3"}, "test", 1, "",
                    ["dlarena", "run"], "0.1.0", [])
    store.close()
    done = cli("report", "--db", str(db_path), "--format", "html")
    assert done.returncode == 2 and "has no results yet" in done.stderr


# --- in a real browser -----------------------------------------------------------------------------

needs_browser = pytest.mark.skipif(browser.missing() is not None, reason=f"browser tests: {browser.missing()}")


@pytest.fixture(scope="module")
def opened(page: Path, tmp_path_factory: pytest.TempPathFactory) -> object:
    with browser.chromium(tmp_path_factory.mktemp("chromium")) as driver:
        browser.open_report(driver, page)
        yield driver


@needs_browser
def test_the_page_opens_offline_without_errors_and_draws_every_cell(opened: object, sweep_db: Path) -> None:
    driver = opened
    assert browser.console_errors(driver) == []
    assert [url for url in browser.fetched_urls(driver) if not url.startswith(("data:", "blob:"))] == []
    # The cells behind each step-time chart, counted from the database, not from the page.
    store = Store.open(sweep_db, create=False)
    try:
        counts = store.connection.execute(
            "SELECT workload, scenario, device, precision, batch_size, threads, COUNT(*) FROM cells"
            " WHERE scenario != 'accuracy' GROUP BY workload, scenario, device, precision, batch_size, threads"
        ).fetchall()
    finally:
        store.close()
    for *key, cells in counts:
        element = "chart-steps-" + "-".join(str(part) for part in key)
        assert browser.cell_marks(driver, element) == cells, element
    # Shi et al.'s thread-scaling chart: one point per framework and thread count
    assert browser.cell_marks(driver, "chart-threads-fcn5-small-train-cpu-float32-32") == 6
    # one line per seed of each framework that trained
    assert browser.cell_marks(driver, "chart-curves-digits-mlp-cpu-float32-32-1") == 4
    # latency against throughput: one point per valid framework and batch size
    assert browser.cell_marks(driver, "chart-batch-latency-fcn5-small-infer-cpu-float32-1") == 4


@needs_browser
def test_the_headline_names_the_framework_the_database_says_is_fastest(opened: object, sweep_db: Path) -> None:
    from selenium.webdriver.common.by import By

    store = Store.open(sweep_db, create=False)
    try:
        (fastest,) = store.connection.execute(
            "SELECT c.framework FROM cells c JOIN summaries s ON s.cell_id = c.id WHERE c.workload = 'fcn5-small'"
            " AND c.scenario = 'train' AND c.threads = 2 ORDER BY s.median_s LIMIT 1").fetchone()
    finally:
        store.close()
    row = opened.find_element(  # type: ignore[attr-defined]
        By.CSS_SELECTOR, "#headline-table tr[data-configuration='fcn5-small, train, batch 32, 2 threads']")
    assert row.find_element(By.CSS_SELECTOR, "td.fastest").text == fastest


@needs_browser
def test_a_cell_without_a_time_shows_its_status_in_place(opened: object) -> None:
    from selenium.webdriver.common.by import By

    driver = opened
    chart = driver.find_element(By.ID, "chart-steps-fcn5-small-infer-cpu-float32-32-1")  # type: ignore[attr-defined]
    assert "failed" in [text.text for text in chart.find_elements(By.CSS_SELECTOR, "text")]
    failed = driver.find_element(  # type: ignore[attr-defined]
        By.CSS_SELECTOR, "tr.cell-row[data-framework='keras-jax'][data-batchsize='32']")
    assert failed.find_element(By.CSS_SELECTOR, "td.status").text == "failed"


@needs_browser
def test_the_table_filters_sorts_and_tells_each_cells_story(opened: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = opened
    Select(driver.find_element(By.CSS_SELECTOR, "select[data-key='framework']")).select_by_value(  # type: ignore
        "torch")
    visible = [row for row in driver.find_elements(By.CSS_SELECTOR, "tr.cell-row") if row.is_displayed()]  # type: ignore
    assert {row.get_attribute("data-framework") for row in visible} == {"torch"} and len(visible) == 5
    header = next(th for th in driver.find_elements(By.CSS_SELECTOR, "#cells-table th")  # type: ignore
                  if th.text == "median step")
    header.click()
    medians = [row.find_elements(By.TAG_NAME, "td")[7].get_attribute("data-sort") for row in  # type: ignore
               driver.find_elements(By.CSS_SELECTOR, "tr.cell-row") if row.is_displayed()]  # type: ignore
    assert len(medians) == 5 and [float(m) for m in medians] == sorted(float(m) for m in medians)
    visible[0].click()
    details = driver.find_element(By.ID, visible[0].get_attribute("data-details"))  # type: ignore
    assert details.is_displayed() and "Re-run this cell" in details.text
    Select(driver.find_element(By.CSS_SELECTOR, "select[data-key='framework']")).select_by_value("")  # type: ignore


def _pairs_of(db: Path, a: str, b: str) -> int:
    """Configurations of the run that both frameworks ran, counted in the database."""
    store = Store.open(db, create=False)
    try:
        (count,) = store.connection.execute(
            "SELECT COUNT(*) FROM cells x JOIN cells y ON x.run_id = y.run_id AND x.workload = y.workload AND"
            " x.scenario = y.scenario AND x.batch_size = y.batch_size AND x.threads = y.threads AND"
            " x.precision = y.precision AND x.device = y.device WHERE x.framework = ? AND y.framework = ?",
            (a, b)).fetchone()
    finally:
        store.close()
    return int(count)


@needs_browser
def test_a_comparison_page_draws_one_ratio_per_compared_cell(cli: Cli, sweep_db: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    page = tmp_path / "comparison.html"
    done = cli("compare", "latest", "--frameworks", "torch,jax", "--db", str(sweep_db), "--format", "html",
               "--output", str(page))
    assert done.returncode == 0, done.stderr
    with browser.chromium(tmp_path / "chromium") as driver:
        browser.open_report(driver, page)
        assert browser.console_errors(driver) == []
        assert browser.cell_marks(driver, "chart-forest-comparison") == _pairs_of(sweep_db, "torch", "jax") == 5
        verdicts = [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#comparison-table td:last-child")]
        # jax is 1.5x slower at one thread and 1.33x at two, in 3 processes a side: real differences
        assert sum(verdict.startswith("slower") for verdict in verdicts) >= 2
        browser.full_page_screenshot(driver, ARTEFACTS / "comparison-html.png")


@needs_browser
def test_a_screenshot_of_the_page_is_kept(opened: object) -> None:
    shot = browser.full_page_screenshot(opened, ARTEFACTS / "report-html.png")
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")  # the artefact's path, in the test log


def test_the_sweep_has_a_mismatch_struck_out(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    row = text[text.index('data-framework="onnxruntime"'):]
    assert 'class="number struck"' in row[:row.index("</tr>")]
