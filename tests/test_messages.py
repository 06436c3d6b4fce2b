"""The words a user reads: "did you mean" for a near miss, "1 thread" and "2 threads" (issue 12)."""

from __future__ import annotations

import io

import pytest

from dlarena.data.catalogue import DATASETS
from dlarena.errors import UnknownNameError, suggestions, unknown
from dlarena.frameworks.registry import FRAMEWORKS, FrameworkInfo, framework_info, precision_support
from dlarena.orchestrate.progress import Progress
from dlarena.plan.suite import SuiteError, builtin_suites, parse_suite
from dlarena.spec.catalogue import CATALOGUE
from dlarena.wording import counted


@pytest.mark.parametrize(
    ("typed", "choices", "meant"),
    [
        ("pytorch", FRAMEWORKS, ["torch"]),  # a valid name inside the typed one
        ("Torch", FRAMEWORKS, ["torch"]),  # case alone wins alone
        ("TensorFlow-XLA", FRAMEWORKS, ["tensorflow-xla"]),
        ("keras", FRAMEWORKS, ["keras-jax", "keras-torch", "keras2-cntk"]),  # inside valid ones; the closest 3
        ("cifar-10", DATASETS, ["cifar10"]),  # separators are not part of a name
        ("cifar-10", CATALOGUE, ["cifar10-cnn", "cifar10-cnn-small"]),
        ("Fashion_MNIST", DATASETS, ["fashion-mnist"]),
        ("alexnet-smal", CATALOGUE, ["alexnet-small", "alexnet"]),  # the closest first
        ("qiuck", builtin_suites(), ["quick"]),  # a typo: difflib
        ("tensorflwo", FRAMEWORKS, ["tensorflow", "tensorflow-xla", "keras-tensorflow"]),
        ("tf", FRAMEWORKS, []),  # too short and too far for a guess
        ("cnn", CATALOGUE, []),  # contained in many, but three letters are a coincidence
        ("nightly", builtin_suites(), []),
        ("torch", FRAMEWORKS, []),  # a valid name needs no suggestion
    ],
)
def test_suggestions_for_near_misses(typed: str, choices: dict[str, object], meant: list[str]) -> None:
    assert suggestions(typed, choices) == meant


def test_the_sentence_names_the_mistake_the_likely_name_and_every_valid_one() -> None:
    assert unknown("suite", "Quick", ["quick", "shi2016"]) == (
        "unknown suite 'Quick' (did you mean 'quick'?); valid suites: quick, shi2016")
    assert unknown("suite", "x", ["quick", "shi2016"]) == "unknown suite 'x'; valid suites: quick, shi2016"
    assert unknown("list", "k", ["ab", "keras-a", "keras-b"]).count("did you mean") == 0
    with pytest.raises(UnknownNameError) as raised:
        framework_info("pytorch")
    assert raised.value.suggestions == ["torch"]
    assert str(raised.value).startswith("unknown framework 'pytorch' (did you mean 'torch'?); valid frameworks: ")
    listed = "jax, keras-jax, keras-tensorflow, keras-torch, keras2-cntk, keras2-theano, lasagne, mxnet, onnxruntime"
    assert listed in str(raised.value)


@pytest.mark.parametrize(
    ("number", "noun", "text"),
    [
        (1, "thread", "1 thread"), (2, "thread", "2 threads"), (0, "cell", "0 cells"),
        (1, "process", "1 process"), (3, "process", "3 processes"), (1, "worker process", "1 worker process"),
        (13.0, "epoch", "13 epochs"), (1.0, "epoch", "1 epoch"), (2.5, "epoch", "2.5 epochs"),
        (2, "batch", "2 batches"),
    ],
)
def test_counted_nouns(number: float, noun: str, text: str) -> None:
    assert counted(number, noun) == text


def test_the_run_line_counts_in_the_singular_where_it_is_one() -> None:
    stream = io.StringIO()
    progress = Progress(stream=stream)
    progress.begin("r1", cells=1, repetitions=1)
    progress.begin("r2", cells=4, repetitions=3, already_done=1)
    lines = stream.getvalue().splitlines()
    assert lines == ["run r1: 1 cell x 1 process", "run r2: 4 cells x 3 processes, 1 process stored before"]


def test_precision_support_reads_the_registry_grouped(monkeypatch: pytest.MonkeyPatch) -> None:
    assert precision_support(["onnxruntime", "mxnet"]) == "onnxruntime, mxnet: float32"
    monkeypatch.setitem(FRAMEWORKS, "half", FrameworkInfo(
        name="half", description="a framework that also runs float16", module="dlarena.frameworks.fault",
        imports=("numpy",), distributions=("numpy",), extra="test", precisions=("float32", "float16")))
    assert precision_support(["onnxruntime", "half", "mxnet"]) == "onnxruntime, mxnet: float32; half: float32, float16"
    assert (precision_support(["torch", "onnxruntime", "jax", "tensorflow", "keras-torch"])
            == "torch: float32, bfloat16, mixed-bf16, float16, mixed-fp16; onnxruntime: float32;"
               " jax, tensorflow, keras-torch: float32, bfloat16, mixed-bf16")


def test_a_precision_no_selected_framework_runs_is_refused_when_planned(monkeypatch: pytest.MonkeyPatch) -> None:
    suite = parse_suite('workloads = ["fcn5-small"]\nframeworks = ["onnxruntime", "mxnet"]\nprecisions = ["float16"]\n',
                        "t")
    with pytest.raises(SuiteError,
                       match=r"^no selected framework runs float16; what each runs: onnxruntime, mxnet: float32$"):
        suite.cells(cores=2)
    # One framework that runs it is enough: the others' cells are planned, and stored as unsupported.
    monkeypatch.setitem(FRAMEWORKS, "half", FrameworkInfo(
        name="half", description="a framework that also runs float16", module="dlarena.frameworks.fault",
        imports=("numpy",), distributions=("numpy",), extra="test", precisions=("float32", "float16")))
    mixed = parse_suite('workloads = ["fcn5-small"]\nframeworks = ["jax", "half"]\nprecisions = ["float16"]\n'
                        'scenarios = ["train"]\nthreads = [1]\ndevices = ["cuda"]\n', "t")
    assert sorted(cell.framework for cell, _ in mixed.cells(cores=2)) == ["half", "jax"]
    # float16 is a GPU's precision: a selection on the CPU alone can measure none of it.
    on_cpu = parse_suite('workloads = ["fcn5-small"]\nframeworks = ["half"]\nprecisions = ["float16"]\n', "t")
    with pytest.raises(SuiteError, match=r"^float16 and mixed-fp16 run on a GPU only \(--devices cuda\).*: cpu$"):
        on_cpu.cells(cores=2)
