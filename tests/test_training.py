"""The accuracy scenario without a deep learning framework: the loop, the seeds, the figures, the store.

The learner in the unit tests is a real NumPy softmax regression; the end-to-end test runs worker
processes of the test-only fault framework, whose trainer is the same kind of learner, on the real
scikit-learn digits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dlarena.measure.aggregate import training_figures, trimmed_mean
from dlarena.orchestrate.orchestrator import run_suite
from dlarena.plan.suite import SuiteError, parse_suite
from dlarena.report.markdown import render
from dlarena.spec.catalogue import DIGITS_TARGET_ACCURACY, get_workload
from dlarena.spec.weights import initial_weights, parameter_specs
from dlarena.store.database import Store
from dlarena_runner.training import accuracy, epoch_order, predict_all, train_to_accuracy

CLASSES = 3


class Regression:
    """Softmax regression by SGD; records the batch sizes it was given."""

    def __init__(self, features: int, lr: float = 0.5) -> None:
        self.weights = np.zeros((features, CLASSES))
        self.lr = lr
        self.train_batches: list[int] = []
        self.predict_batches: list[int] = []

    def train_step(self, inputs: np.ndarray, labels: np.ndarray) -> float:
        self.train_batches.append(len(inputs))
        logits = inputs @ self.weights
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.mean(np.log(p[np.arange(len(labels)), labels])))
        p[np.arange(len(labels)), labels] -= 1
        self.weights -= self.lr * inputs.T @ p / len(labels)
        return loss

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        self.predict_batches.append(len(inputs))
        result: np.ndarray = inputs @ self.weights
        return result

    def sync(self) -> None:
        pass


def _blobs(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated clusters: a problem a linear model solves to 100%."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, samples)
    centres = np.eye(CLASSES) * 4
    return (centres[labels] + rng.normal(0, 0.5, (samples, CLASSES))).astype(np.float32), labels


class Clock:
    """One second per reading, so that times can be counted exactly."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_epoch_order_is_a_seeded_permutation_shared_by_everyone() -> None:
    first = epoch_order(100, seed=0, epoch=1)
    assert sorted(first) == list(range(100))
    assert np.array_equal(first, epoch_order(100, seed=0, epoch=1))
    assert not np.array_equal(first, epoch_order(100, seed=0, epoch=2))
    assert not np.array_equal(first, epoch_order(100, seed=1, epoch=1))


def test_accuracy_counts_samples_and_tokens() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert accuracy(logits, np.array([1, 0, 0, 0])) == 0.75
    tokens = logits.reshape(2, 2, 2)  # two sequences of two tokens
    assert accuracy(tokens, np.array([[1, 0], [1, 1]])) == 0.75


def test_predict_pads_the_last_batch_and_cuts_it_away() -> None:
    model = Regression(CLASSES)
    model.weights = np.eye(CLASSES)
    inputs, _ = _blobs(10, seed=0)
    logits = predict_all(model, inputs, batch_size=4)
    assert model.predict_batches == [4, 4, 4]  # the 2 left over were padded to 4
    assert np.array_equal(logits, inputs)


def test_training_stops_at_the_target_and_counts_complete_batches_only() -> None:
    train, test = _blobs(103, seed=1), _blobs(40, seed=2)
    model = Regression(CLASSES, lr=0.02)
    model.weights = -2 * np.eye(CLASSES)  # starts out wrong about every sample, so it takes epochs to learn
    run = train_to_accuracy(model, train, test, batch_size=10, epochs=20, target_accuracy=0.95, seed=0)
    assert set(model.train_batches) == {10}
    assert len(model.train_batches) == 10 * len(run.epochs)  # 103 samples: 10 complete batches an epoch
    reached = run.epochs_to_target
    assert reached is not None and 1 < reached == len(run.epochs) < 20
    assert run.epochs[-1].test_accuracy >= 0.95 > max([e.test_accuracy for e in run.epochs[:-1]], default=0)
    assert run.epochs[0].loss > run.epochs[-1].loss


def test_without_a_target_every_epoch_is_trained() -> None:
    run = train_to_accuracy(Regression(CLASSES), _blobs(50, 1), _blobs(20, 2), 10, epochs=3,
                            target_accuracy=None, seed=0)
    assert [e.epoch for e in run.epochs] == [1, 2, 3]
    assert run.epochs_to_target is None and run.time_to_target_s is None


def test_times_are_split_into_data_steps_and_testing() -> None:
    # Each batch reads the clock three times: before drawing, after drawing, after the step.
    run = train_to_accuracy(Regression(CLASSES), _blobs(30, 1), _blobs(20, 2), 10, epochs=2,
                            target_accuracy=None, seed=0, clock=Clock())
    for epoch in run.epochs:
        assert epoch.data_s == 3 and epoch.train_s == 3 and epoch.eval_s == 1
    assert run.first_step_s == 1 and run.samples_s == [1.0] * 5
    assert run.loop_wall_s == 12


def test_time_to_target_sums_training_time_up_to_the_epoch_that_reached_it() -> None:
    model = Regression(CLASSES, lr=0.02)
    model.weights = -2 * np.eye(CLASSES)
    run = train_to_accuracy(model, _blobs(40, 1), _blobs(40, 2), 10, epochs=30, target_accuracy=0.99, seed=0,
                            clock=Clock())
    assert run.epochs_to_target is not None and run.epochs_to_target > 1
    assert run.time_to_target_s == pytest.approx(8.0 * run.epochs_to_target)  # 4 batches x (1 s + 1 s)


def test_trimmed_mean_drops_the_best_and_the_worst_from_three_runs_on() -> None:
    assert trimmed_mean([1.0, 2.0]) == 1.5
    assert trimmed_mean([10.0, 1.0, 4.0]) == 4.0
    assert trimmed_mean([0.90, 0.97, 0.95, 0.96, 0.50]) == pytest.approx((0.90 + 0.95 + 0.96) / 3)


def _process(final: float, reached: int | None, seconds: float | None) -> dict[str, object]:
    return {"accuracy": {"dataset": "digits", "target_accuracy": 0.9, "epochs_planned": 10, "final_accuracy": final,
                         "epochs_to_target": reached, "time_to_target_s": seconds, "epochs": [{}] * (reached or 10),
                         "train_s": 5.0, "data_s": 1.0, "eval_s": 0.5, "data_load_s": 0.1}}


def test_figures_over_seeds_follow_mlperf_and_say_how_many_reached_the_target() -> None:
    figures = training_figures([_process(0.95, 3, 3.0), _process(0.93, 5, 5.0), _process(0.80, None, None),
                                _process(0.97, 2, 2.0)])
    assert figures is not None
    assert figures["seeds"] == 4 and figures["reached"] == 3
    assert figures["accuracy"] == pytest.approx((0.93 + 0.95) / 2)
    assert (figures["accuracy_min"], figures["accuracy_max"]) == (0.80, 0.97)
    assert figures["epochs_to_target"] == 3 and figures["time_to_target_s"] == 3.0
    assert training_figures([{"samples_s": [1.0]}]) is None


def test_starting_weights_follow_the_recipe_and_are_the_same_for_a_seed() -> None:
    workload = get_workload("digits-cnn")
    weights = initial_weights(workload.network, workload.recipe.init, seed=3)
    assert sum(value.size for value in weights.values()) == workload.params
    assert all(value.dtype == np.float32 for value in weights.values())
    for spec in parameter_specs(workload.network):
        value = weights[spec.name]
        if spec.role == "bias":
            assert not value.any()
        elif len(spec.shape) == 4:  # glorot: within sqrt(6 / (fan_in + fan_out)), and filling it
            out, channels, kh, kw = spec.shape
            limit = math.sqrt(6 / ((channels + out) * kh * kw))
            assert np.abs(value).max() <= limit and np.abs(value).max() > 0.9 * limit
    again = initial_weights(workload.network, workload.recipe.init, seed=3)
    other = initial_weights(workload.network, workload.recipe.init, seed=4)
    assert all(np.array_equal(weights[name], again[name]) for name in weights)
    assert not np.array_equal(weights["0.kernel"], other["0.kernel"])


SUITE = """
name = "trained"
frameworks = ["fault-none"]
threads = [1]
target_ci = 0  # the timing cell's one process only: the test counts them
[measurement]
sample_interval_s = 0
[[sweep]]
workloads = ["digits-mlp"]
scenarios = ["accuracy"]
repetitions = 3
epochs = 6
[[sweep]]
workloads = ["fcn5-small"]
scenarios = ["train"]
batch_sizes = [4]
repetitions = 1
"""


def test_accuracy_sweeps_take_the_workloads_training_recipe_unless_the_suite_says_otherwise() -> None:
    planned = parse_suite(SUITE, "test").planned(cores=2)
    (accuracy_cell, _, seeds), (timing_cell, _, processes) = planned
    training = get_workload("digits-mlp").training
    assert training is not None
    assert accuracy_cell.batch_size == training.batch_size and accuracy_cell.epochs == 6
    assert accuracy_cell.target_accuracy == DIGITS_TARGET_ACCURACY and seeds == 3
    assert timing_cell.epochs is None and processes == 1
    assert [accuracy_cell.for_process(r).seed for r in range(3)] == [0, 1, 2]
    assert timing_cell.for_process(2) == timing_cell
    override = parse_suite(SUITE, "test").override(repetitions=2).planned(cores=2)
    assert [count for _, _, count in override] == [2, 2]


@pytest.mark.parametrize(("line", "problem"), [("epochs = 0", "'epochs' must be at least 1"),
                                                ("target_accuracy = 1.5", "'target_accuracy' must be a fraction"),
                                                ("epochs = 6\nrepetitions = 0", "Cannot overwrite")])
def test_bad_training_settings_are_named(line: str, problem: str) -> None:
    with pytest.raises(SuiteError, match=problem):
        parse_suite(SUITE.replace("epochs = 6", line), "test").planned(cores=2)


def test_a_sweep_needs_at_least_one_process() -> None:
    with pytest.raises(SuiteError, match="'repetitions' must be at least 1"):
        parse_suite(SUITE.replace("repetitions = 3", "repetitions = 0"), "test")


def test_a_run_trains_each_seed_in_its_own_process_and_stores_every_epoch(db_path: Path) -> None:
    store = Store.open(db_path)
    summary = run_suite(parse_suite(SUITE, "test"), store, ["test"])
    rows = {row["workload"]: row for row in store.cell_rows(summary.run_id)}
    trained = rows["digits-mlp"]
    assert trained["status"] == "ok" and trained["processes_run"] == 3
    results = store.connection.execute(
        "SELECT id, repetition, command, data FROM results WHERE cell_id = ? ORDER BY repetition",
        (trained["cell_id"],)).fetchall()
    seeds = [json.loads(json.loads(row["command"])[4])["seed"] for row in results]
    assert seeds == [0, 1, 2]
    for row in results:
        epochs = store.connection.execute(
            "SELECT epoch, test_accuracy, loss FROM epochs WHERE result_id = ? ORDER BY epoch", (row["id"],)
        ).fetchall()
        stored = json.loads(row["data"])["accuracy"]
        assert [e["epoch"] for e in epochs] == list(range(1, len(stored["epochs"]) + 1))
        assert epochs[-1]["test_accuracy"] == stored["final_accuracy"]
        assert 1 <= len(epochs) <= 6
    finals = sorted(json.loads(row["data"])["accuracy"]["final_accuracy"] for row in results)
    assert trained["accuracy"] == pytest.approx(finals[1])  # three seeds: the middle one
    assert trained["accuracy"] > 0.85  # a linear model on the digits
    assert rows["fcn5-small"]["status"] == "ok" and rows["fcn5-small"]["processes_run"] == 1
    report = render(dict(store.run(summary.run_id)), {}, store.cell_rows(summary.run_id))
    assert "## Training to accuracy" in report
    line = next(line for line in report.splitlines() if line.startswith("| fault-none | digits-mlp"))
    assert f"{trained['accuracy']:.2%}" in line


def test_naming_a_suites_own_workload_selects_its_sweeps_and_other_names_replace_them() -> None:
    from dlarena.plan.suite import load_suite

    own = load_suite("karmanov2017").override(frameworks=("torch",), workloads=("karmanov-cnn",)).cells(cores=2)
    assert {(cell.workload, cell.scenario) for cell, _ in own} == {("karmanov-cnn", "train"),
                                                                   ("karmanov-cnn", "accuracy")}
    other = load_suite("quick").override(frameworks=("torch",), workloads=("fcn5",)).cells(cores=2)
    assert {(cell.workload, cell.scenario) for cell, _ in other} == {("fcn5", "train"), ("fcn5", "infer")}
    asked = load_suite("quick").override(frameworks=("torch",), workloads=("fcn5",), scenarios=("accuracy",))
    assert [(cell.workload, cell.scenario) for cell, _ in asked.cells(cores=2)] == [("fcn5", "accuracy")]


def test_the_export_carries_the_accuracy_figures(db_path: Path) -> None:
    from dlarena.report.export import tidy

    store = Store.open(db_path)
    run_id = run_suite(parse_suite(SUITE.replace("repetitions = 3", "repetitions = 1"), "test"), store, ["t"]).run_id
    rows = {row["workload"]: row for row in tidy(store.cell_rows(run_id))}
    trained, timed = rows["digits-mlp"], rows["fcn5-small"]
    assert trained["dataset"] == "digits" and trained["seeds"] == 1 and 0.85 < trained["accuracy"] <= 1
    assert trained["target_accuracy"] == DIGITS_TARGET_ACCURACY and 1 <= trained["epochs_trained"] <= 6
    assert timed["accuracy"] is None and timed["dataset"] is None and timed["median_s"] > 0
