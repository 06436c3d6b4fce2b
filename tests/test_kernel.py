"""The framework kernel's shared parts, with no framework: layout plans, recipes as data, and the
runner/checker wiring around a Model written in NumPy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dlarena.frameworks import kernel
from dlarena.frameworks.base import StepRequest, Unsupported
from dlarena.spec import Network, reference
from dlarena.spec.catalogue import get_workload
from dlarena.spec.layers import LSTM, Activation, BatchNorm, Conv2D, Dense, Dropout, Flatten
from dlarena.spec.recipe import Optimizer
from dlarena.spec.weights import canonical_batch, canonical_weights

NHWC = kernel.Conventions(channels_last=True, conv_kernel="hwio")


def _conv_net() -> Network:
    return Network(input_shape=(3, 5, 4), input_kind="image", classes=6, layers=(
        Conv2D(filters=2, kernel=3, padding=1), Activation("relu"), Flatten(), Dropout(0.5), Dense(units=6)))


def test_channels_last_plan_makes_the_dense_see_the_same_features() -> None:
    """A channels-last framework flattens (H, W, C): its permuted kernel must give the same product."""
    network = _conv_net()
    plan = kernel.layout_plan(network, NHWC)
    feature_map = np.random.RandomState(0).standard_normal((2, 5, 4)).astype(np.float64)  # (C, H, W)
    dense = canonical_weights(network)["4.kernel"].astype(np.float64)  # after Flatten and Dropout
    expected = feature_map.reshape(-1) @ dense
    converted = plan["4.kernel"].to_framework(dense)
    assert not np.array_equal(converted, dense)  # the plan did permute
    np.testing.assert_allclose(feature_map.transpose(1, 2, 0).reshape(-1) @ converted, expected, rtol=1e-12)
    np.testing.assert_array_equal(plan["4.kernel"].to_canonical(converted), dense)
    assert plan["0.kernel"].to_framework(np.zeros((2, 3, 3, 3))).shape == (3, 3, 3, 2)  # (kh, kw, in, out)


def test_flattens_into_dense_are_those_whose_dense_rows_the_plan_permutes() -> None:
    """A channels-last module flattens these maps as they lie and puts every other one back in (C, H, W)."""
    assert kernel.flattens_into_dense(_conv_net()) == {"2"}  # Flatten, Dropout, Dense
    normalised = Network(input_shape=(3, 5, 4), input_kind="image", classes=6, layers=(
        Conv2D(filters=2, kernel=3, padding=1), Flatten(), BatchNorm(), Dense(units=6)))
    assert kernel.flattens_into_dense(normalised) == frozenset()  # the batch norm's features are canonical
    assert kernel.layout_plan(normalised, NHWC)["3.kernel"].rows_chw is None
    sequence = Network(input_shape=(4, 3), input_kind="vector", classes=2, layers=(Flatten(), Dense(units=2)))
    assert kernel.flattens_into_dense(sequence) == frozenset()  # no (C, H, W) map: nothing to reorder


def test_channels_first_plan_leaves_the_rows_alone_and_transposes_where_asked() -> None:
    network = _conv_net()
    dense = canonical_weights(network)["4.kernel"]
    assert np.array_equal(kernel.layout_plan(network, kernel.Conventions())["4.kernel"].to_framework(dense), dense)
    out_in = kernel.layout_plan(network, kernel.Conventions(dense_kernel="out_in"))["4.kernel"]
    np.testing.assert_array_equal(out_in.to_framework(dense), dense.T)


def test_gate_order_and_transpose_round_trip() -> None:
    network = Network(input_shape=(4, 3), input_kind="vector", classes=2, layers=(
        LSTM(hidden=2, return_sequences=False), Dense(units=2)))
    conventions = kernel.Conventions(recurrent_kernel="out_in", lstm_gates="iofg")
    entry = kernel.layout_plan(network, conventions)["0.layer0.input_kernel"]
    canonical = np.arange(3 * 8, dtype=np.float64).reshape(3, 8)  # gate blocks i f g o of width 2
    converted = entry.to_framework(canonical)
    assert converted.shape == (8, 3)
    np.testing.assert_array_equal(converted[2:4], canonical[:, 6:8].T)  # framework's 2nd block: o
    np.testing.assert_array_equal(entry.to_canonical(converted), canonical)


def test_optimizer_arguments_map_fields_and_refuse_what_the_framework_lacks() -> None:
    spelling: kernel.OptimizerSpelling = {
        "sgd": ("SGD", {"lr": "lr"}), "sgd_momentum": ("MomentumSGD", {"lr": "lr", "momentum": "momentum"}),
    }
    assert kernel.optimizer_arguments(Optimizer("sgd", lr=0.1), spelling, "x") == ("SGD", {"lr": 0.1})
    assert kernel.optimizer_arguments(Optimizer("sgd", lr=0.1, momentum=0.9), spelling, "x") == (
        "MomentumSGD", {"lr": 0.1, "momentum": 0.9})
    with pytest.raises(Unsupported, match="nesterov"):
        kernel.optimizer_arguments(Optimizer("sgd", lr=0.1, momentum=0.9, nesterov=True), spelling, "x")
    with pytest.raises(Unsupported, match="adam"):
        kernel.optimizer_arguments(Optimizer("adam", lr=0.1), spelling, "x")


def test_loss_divisor_follows_the_reduction() -> None:
    workload = get_workload("lstm32-small")  # a language model: one label per time step
    steps = workload.network.label_shape[0]
    assert kernel.loss_divisor(workload.network, workload.recipe, 4) == (
        4 if workload.recipe.loss_reduction == "sum_over_batch" else 4 * steps)
    classifier = get_workload("fcn5-small")
    assert kernel.loss_divisor(classifier.network, classifier.recipe, 4) == 4


class NumpyDense(kernel.Model):
    """A framework for dense networks written in NumPy, storing kernels (out, in) as PyTorch does."""

    conventions = kernel.Conventions(dense_kernel="out_in")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.params: dict[str, np.ndarray] = {}
        for name in kernel.layout_plan(self.network, self.conventions):
            self.params[name] = np.full(1, np.nan)  # shapes come with the loaded weights

    def bindings(self) -> list[kernel.Binding]:
        return self.bind({name: name for name in self.params})

    def read(self, handle: Any) -> np.ndarray:
        return self.params[handle].copy()

    def write(self, handle: Any, value: np.ndarray) -> None:
        self.params[handle] = value.copy()

    def logits(self, inputs: Any) -> np.ndarray:
        weights = {name: (value.T if name.endswith("kernel") else value) for name, value in self.params.items()}
        return reference.forward(self.network, weights, inputs)

    def gradients(self, inputs: Any, labels: Any) -> tuple[float, dict[str, np.ndarray]]:
        raise Unsupported("not needed here")

    def train_step(self, inputs: Any, labels: Any) -> Any:
        return 0.0


class NumpyBackend(kernel.KernelBackend):
    name = "numpy-dense"
    model_class = NumpyDense


def test_checker_and_runner_load_export_and_compute_through_the_plan() -> None:
    workload = get_workload("fcn5-small")
    backend = NumpyBackend(threads=1)
    checker = backend.checker(workload, "cpu", "float64")
    weights = {name: value.astype(np.float64) for name, value in canonical_weights(workload.network).items()}
    checker.load_weights(weights)
    stored = checker.model.params  # type: ignore[attr-defined]
    assert stored["0.kernel"].shape == weights["0.kernel"].shape[::-1]  # held in the framework's layout
    exported = checker.export_weights()
    assert all(np.array_equal(exported[name], weights[name]) for name in weights)
    inputs, _ = canonical_batch(workload.network, 3)
    np.testing.assert_allclose(checker.forward(inputs.astype(np.float64)),
                               reference.forward(workload.network, weights, inputs.astype(np.float64)), rtol=1e-12)
    runner = backend.prepare(StepRequest(workload=workload, scenario="infer", batch_size=3, device="cpu", threads=1,
                                         precision="float32", seed=0))
    runner.step()
    assert runner.last.shape == (3, workload.network.classes)
    assert runner.parity().dtype == "float32"
    with pytest.raises(Unsupported, match="cuda"):
        backend.checker(workload, "cuda")
