"""The limit of a cell's worker process: the timing cells', one derived for an accuracy cell, or the user's."""

from __future__ import annotations

import dataclasses

import pytest

from dlarena.data import DATASETS
from dlarena.orchestrate.executor import Execution
from dlarena.orchestrate.orchestrator import classify
from dlarena.plan.cell import DEFAULT_TIMEOUT_S, Cell
from dlarena.plan.suite import Suite, SuiteError, load_suite, parse_suite
from dlarena.plan.timeouts import UNKNOWN_SIZE_TIMEOUT_S, accuracy_timeout_s, default_timeout_s

# The quick suite's own limit (quick.toml), meant for its small networks.
QUICK_TIMEOUT_S = 300.0
# With real MNIST, TensorFlow trained Shatnawi's CNN to 99% in 207 s on 2 threads, and torch took
# longer (issue 12): a limit must leave such a process many times that.
TENSORFLOW_MNIST_CNN_S = 207.0


def limits(suite: Suite) -> dict[tuple[str, str, str], float]:
    return {(cell.framework, cell.workload, cell.scenario): timeout for cell, timeout in suite.cells(cores=2)}


def test_the_issue_command_gives_mnist_training_a_limit_from_its_recipe() -> None:
    # `dlarena run --frameworks torch,tensorflow --workloads mnist-cnn --scenarios accuracy --threads 2`
    suite = load_suite("quick").override(frameworks=("torch", "tensorflow"), workloads=("mnist-cnn",),
                                         scenarios=("accuracy",), threads=(2,))
    planned = suite.cells(cores=2)
    assert [cell.framework for cell, _ in planned] == ["torch", "tensorflow"]
    for cell, timeout in planned:
        assert (cell.workload, cell.epochs, cell.batch_size) == ("mnist-cnn", 12, 128)
        assert timeout == accuracy_timeout_s(cell)
        assert timeout > 10 * TENSORFLOW_MNIST_CNN_S and timeout > QUICK_TIMEOUT_S


def test_the_derived_limit_follows_the_recipe() -> None:
    def limit(workload: str, batch: int, epochs: int) -> float:
        return accuracy_timeout_s(Cell("torch", workload, "accuracy", batch, 1, epochs=epochs))

    # Above the one-off costs (the timing cells' limit), the allowance grows with the epochs...
    one, twelve = limit("mnist-cnn", 128, 1) - DEFAULT_TIMEOUT_S, limit("mnist-cnn", 128, 12) - DEFAULT_TIMEOUT_S
    assert one > 0 and twelve == pytest.approx(12 * one, abs=12)  # each limit is rounded up to whole seconds
    # ...and with the work: CIFAR-10's CNN does more per epoch than MNIST's, the digits MLP far less.
    assert limit("cifar10-cnn", 32, 1) > limit("mnist-cnn", 128, 1) > limit("digits-mlp", 32, 1) > DEFAULT_TIMEOUT_S
    # A workload without real data stops at once as unsupported: the timing cells' limit.
    assert accuracy_timeout_s(Cell("torch", "fcn5-small", "accuracy", 32, 1)) == DEFAULT_TIMEOUT_S
    assert default_timeout_s(Cell("torch", "mnist-cnn", "train", 128, 1)) == DEFAULT_TIMEOUT_S


def test_an_explicit_limit_wins() -> None:
    # The command line's --timeout, over the derived limit and over the suite's.
    chosen = load_suite("quick").override(workloads=("mnist-cnn",), scenarios=("accuracy",), timeout_s=100.0)
    assert set(limits(chosen).values()) == {100.0}
    # A suite's own limit on its own cells: shatnawi2017 gives its training sweep 12 h, its timing 900 s.
    shatnawi = limits(load_suite("shatnawi2017").override(workloads=("mnist-cnn",), frameworks=("torch",)))
    assert shatnawi[("torch", "mnist-cnn", "accuracy")] == 43_200.0
    assert shatnawi[("torch", "mnist-cnn", "train")] == 900.0
    # The quick suite's 300 s still holds for its own cells, timing and digits training alike.
    assert set(limits(load_suite("quick").override(frameworks=("torch",))).values()) == {QUICK_TIMEOUT_S}


def test_a_suite_without_a_limit_derives_one_per_cell() -> None:
    suite = parse_suite('frameworks = ["torch"]\nthreads = [1]\n[[sweep]]\nworkloads = ["fcn5-small"]\n'
                        'scenarios = ["train"]\n[[sweep]]\nworkloads = ["digits-cnn"]\nscenarios = ["accuracy"]\n', "t")
    (train, train_limit), (accuracy, accuracy_limit) = suite.cells(cores=1)
    assert train.scenario == "train" and train_limit == DEFAULT_TIMEOUT_S
    assert accuracy.scenario == "accuracy" and accuracy_limit == accuracy_timeout_s(accuracy) > DEFAULT_TIMEOUT_S
    with pytest.raises(SuiteError, match="'timeout_s' must be positive, got 0"):
        parse_suite('workloads = ["fcn5-small"]\ntimeout_s = 0\n', "t")


def test_networks_put_in_a_suite_get_their_own_limit_not_the_suites() -> None:
    # quick's 300 s was set for its small networks; AlexNet timed in its place gets the timing default.
    other = limits(load_suite("quick").override(frameworks=("torch",), workloads=("alexnet",), scenarios=("train",)))
    assert other == {("torch", "alexnet", "train"): DEFAULT_TIMEOUT_S}


def test_the_timeout_message_names_the_option_that_raises_it() -> None:
    execution = Execution(command=[], data=None, exit_code=-9, timed_out=True, output_tail="", wall_s=301.0)
    assert classify(execution, QUICK_TIMEOUT_S) == (
        "timeout", "killed after the cell's limit of 300 s (raise it with --timeout)")


def test_a_data_set_without_published_counts_gets_the_longest_suite_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # PTB-like: its sample count depends on the preparation, so there is nothing to derive from.
    monkeypatch.setitem(DATASETS, "digits", dataclasses.replace(DATASETS["digits"], train_size=None))
    assert accuracy_timeout_s(Cell("torch", "digits-mlp", "accuracy", 32, 1, epochs=40)) == UNKNOWN_SIZE_TIMEOUT_S
