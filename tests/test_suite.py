"""Suite files and the command-line selection: parsing, validation and expansion into cells."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlarena.errors import DlarenaError, UnknownNameError
from dlarena.plan.cell import Cell
from dlarena.plan.suite import SuiteError, builtin_suites, load_suite, parse_suite


def test_top_level_is_one_sweep_crossing_every_axis() -> None:
    suite = parse_suite(
        'name = "s"\nframeworks = ["torch", "torch-compile"]\nworkloads = ["fcn5-small"]\n'
        'scenarios = ["train", "infer"]\nthreads = [1, 2]\nbatch_sizes = [8, 16]\n',
        "test",
    )
    cells = suite.cells(cores=2)
    assert len(cells) == 2 * 1 * 2 * 2 * 2
    assert {cell.batch_size for cell, _ in cells} == {8, 16}
    assert {cell.threads for cell, _ in cells} == {1, 2}


def test_threads_all_is_every_power_of_two_up_to_the_cores() -> None:
    suite = parse_suite('workloads = ["fcn5-small"]\nframeworks = ["torch"]\nscenarios = ["train"]\n', "t")
    assert [cell.threads for cell, _ in suite.cells(cores=6)] == [1, 2, 4]


def test_default_batch_size_comes_from_the_catalogue() -> None:
    suite = parse_suite('workloads = ["vgg-a"]\nframeworks = ["torch"]\nscenarios = ["train"]\n', "t")
    assert {cell.batch_size for cell, _ in suite.cells(cores=1)} == {64}


def test_sweeps_inherit_top_level_defaults_and_duplicates_collapse() -> None:
    suite = parse_suite(
        'frameworks = ["torch"]\nscenarios = ["train"]\nthreads = [1]\ntimeout_s = 5\n'
        '[[sweep]]\nworkloads = ["fcn5-small"]\n[[sweep]]\nworkloads = ["fcn5-small", "lstm32-small"]\n'
        'timeout_s = 9\n',
        "t",
    )
    cells = suite.cells(cores=2)
    assert [(cell.workload, timeout) for cell, timeout in cells] == [("fcn5-small", 5.0), ("lstm32-small", 9.0)]


def test_measurement_table_reaches_every_cell() -> None:
    suite = parse_suite(
        'workloads = ["fcn5-small"]\nframeworks = ["torch"]\nscenarios = ["infer"]\n'
        "[measurement]\nmin_steps = 5\nmin_time_s = 0.25\n",
        "t",
    )
    (cell, _), = suite.cells(cores=1)
    assert cell.measurement.min_steps == 5 and cell.measurement.min_time_s == 0.25


def test_latency_cells_time_enough_calls_for_their_p99() -> None:
    """An inference cell at batch 1, and every cell of a `latency` sweep, times at least the 1,000 calls
    a p99 needs (measure/stats.steps_for_percentile) in each process; other cells keep the suite's count."""
    suite = parse_suite(
        'frameworks = ["torch"]\n[measurement]\nmin_steps = 10\n'
        '[[sweep]]\nworkloads = ["fcn5-small"]\nscenarios = ["train", "infer"]\nbatch_sizes = [1, 4]\n'
        '[[sweep]]\nworkloads = ["lstm32-small"]\nscenarios = ["infer"]\nbatch_sizes = [4]\nlatency = true\n', "t")
    steps = {(cell.workload, cell.scenario, cell.batch_size): cell.measurement.min_steps
             for cell, _ in suite.cells(cores=1)}
    assert steps == {("fcn5-small", "train", 1): 10, ("fcn5-small", "train", 4): 10, ("fcn5-small", "infer", 1): 1000,
                     ("fcn5-small", "infer", 4): 10, ("lstm32-small", "infer", 4): 1000}
    with pytest.raises(SuiteError, match="a latency sweep times inference only"):
        parse_suite('workloads = ["fcn5-small"]\n[[sweep]]\nscenarios = ["train"]\nlatency = true\n', "t").cells(1)
    with pytest.raises(SuiteError, match="'latency' must be true or false"):
        parse_suite('workloads = ["fcn5-small"]\n[[sweep]]\nlatency = 1\n', "t").cells(1)


def test_compile_cache_is_cold_unless_a_suite_or_the_command_line_shares_it() -> None:
    text = 'workloads = ["fcn5-small"]\nframeworks = ["torch-compile"]\nscenarios = ["infer"]\n'
    (cell, _), = parse_suite(text, "t").cells(cores=1)
    assert cell.measurement.compile_cache == "cold"
    shared = parse_suite(text + '[measurement]\ncompile_cache = "shared"\n', "t")
    (cell, _), = shared.cells(cores=1)
    assert cell.measurement.compile_cache == "shared"
    (cell, _), = shared.override(compile_cache="cold").cells(cores=1)
    assert cell.measurement.compile_cache == "cold"
    assert load_suite("quick").measurement.compile_cache == "shared"  # stated in quick.toml


def test_denormals_are_left_alone_unless_a_suite_or_the_command_line_flushes_them() -> None:
    text = 'workloads = ["fcn5-small"]\nframeworks = ["torch"]\nscenarios = ["infer"]\n'
    (default, _), = parse_suite(text, "t").cells(cores=1)
    assert default.measurement.denormals == "default"
    flushing = parse_suite(text + '[measurement]\ndenormals = "flush"\n', "t")
    (flushed, _), = flushing.cells(cores=1)
    assert flushed.measurement.denormals == "flush"
    (back, _), = flushing.override(denormals="default").cells(cores=1)
    assert back == default
    # Part of the cell's identity: results of the two modes are never mixed under one key.
    assert flushed.key("v", {}) != default.key("v", {})
    assert Cell.from_json(flushed.to_json()) == flushed
    with pytest.raises(SuiteError, match="--denormals: 'denormals' must be one of default, flush, got 'on'"):
        flushing.override(denormals="on")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('workloads = ["fcn5-small"\n', "not valid TOML"),
        ('workloads = ["fcn5-small"]\ncolour = "red"\n', "unknown key 'colour'"),
        ('workloads = "fcn5-small"\n', "'workloads' must be a list of names"),
        ('workloads = ["fcn5-small"]\nthreads = [0]\n', "'threads' must be a list of positive integers"),
        ('workloads = ["fcn5-small"]\nbatch_sizes = [true]\n', "'batch_sizes' must be a list of positive"),
        ('workloads = ["fcn5-small"]\nversion = "one"\n', "'version' must be an integer"),
        ('workloads = ["fcn5-small"]\n[measurement]\nmin_steps = 1.5\n', "'min_steps' must be an integer"),
        ('workloads = ["fcn5-small"]\n[measurement]\nspeed = 1\n', "unknown key 'speed'"),
        ('workloads = ["fcn5-small"]\n[measurement]\ncompile_cache = "warm"\n',
         "'compile_cache' must be one of cold, shared, got 'warm'"),
        ('workloads = ["fcn5-small"]\n[measurement]\ndenormals = true\n',
         "[measurement]: 'denormals' must be one of default, flush, got True"),
        ('workloads = ["fcn5-small"]\n[[sweep]]\nthreds = [1]\n', "sweep 1: unknown key 'threds'"),
    ],
)
def test_malformed_suites_get_one_sentence(text: str, fragment: str) -> None:
    with pytest.raises(SuiteError) as caught:
        parse_suite(text, "my.toml").cells(cores=2)
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("my.toml")


def test_toml_syntax_error_names_line_and_column() -> None:
    with pytest.raises(SuiteError, match=r"line 2, column"):
        parse_suite('name = "x"\nworkloads = ["a" "b"]\n', "bad.toml")


@pytest.mark.parametrize(
    ("axis", "value", "kind"),
    [
        ("frameworks", '["tensorflow-1"]', "framework"),
        ("workloads", '["resnet51"]', "workload"),
        ("scenarios", '["fit"]', "scenario"),
        ("devices", '["tpu"]', "device"),
    ],
)
def test_unknown_names_list_the_valid_ones(axis: str, value: str, kind: str) -> None:
    text = f'{axis} = {value}\n' + ('' if axis == "workloads" else 'workloads = ["fcn5-small"]\n')
    with pytest.raises(UnknownNameError) as caught:
        parse_suite(text, "t").cells(cores=2)
    message = str(caught.value)
    assert message.startswith(f"unknown {kind}")
    assert "valid" in message and len(caught.value.valid) > 0
    assert all(name in message for name in caught.value.valid)


def test_more_threads_than_cores_is_refused() -> None:
    suite = parse_suite('workloads = ["fcn5-small"]\nthreads = [1, 64]\n', "t")
    with pytest.raises(SuiteError, match="64 threads asked for, but this machine lets dlarena use 2 cores"):
        suite.cells(cores=2)


def test_override_replaces_axes_in_every_sweep() -> None:
    suite = load_suite("quick").override(frameworks=("torch",), workloads=("alexnet-small",), threads=(1,))
    cells = [cell for cell, _ in suite.cells(cores=2)]
    assert {cell.workload for cell in cells} == {"alexnet-small"}
    assert {cell.framework for cell in cells} == {"torch"}


def test_every_builtin_suite_plans(tmp_path: Path) -> None:
    suites = builtin_suites()
    assert "quick" in suites
    for name in suites:
        assert load_suite(name).cells(cores=2), name


def test_suite_from_a_file_and_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nworkloads = ["mnist-cnn-small"]\nframeworks = ["torch"]\n')
    assert load_suite(str(path)).name == "mine"
    with pytest.raises(DlarenaError, match="cannot read suite file"):
        load_suite(str(tmp_path / "absent.toml"))
    with pytest.raises(UnknownNameError, match="unknown suite 'nosuch'"):
        load_suite("nosuch")
