"""The TensorFlow module (``tensorflow``, ``tensorflow-xla``) on the kernel: what verify does not show.

``dlarena verify`` holds its forward pass and gradients to the oracle on every catalogue network; here:
its optimizers against PyTorch's (the recipe's semantics through TensorFlow's training ops), a Flatten
read by something other than a Dense, steps that trace once, and the parity record.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("torch")

from dlarena.frameworks.base import StepRequest
from dlarena.frameworks.kernel import KernelRunner
from dlarena.frameworks.layout import max_relative_error
from dlarena.frameworks.registry import load_backend
from dlarena.spec import (
    Activation,
    BatchNorm,
    Conv2D,
    Dense,
    Flatten,
    Init,
    MaxPool2D,
    Network,
    Optimizer,
    Recipe,
    Workload,
    reference,
)
from dlarena.spec.weights import canonical_batch, canonical_weights

THREADS = 1
BATCH = 8
STEPS = 4
# Weights after STEPS steps, TensorFlow against PyTorch from the same start, relative to each array's
# largest: measured at most 3.3e-5 (RMSprop, whose sqrt(ms) + eps amplifies float32 rounding while
# ms is small; the others 1e-6 to 4e-6, on karmanov-cnn-small without dropout); a wrong formula
# (epsilon placement, coupled decay, Nesterov) differs by 1e-3 or more.
OPTIMIZER_TOLERANCE = 1e-4
# Float64 logits against the NumPy float64 oracle, as verify's float64 forward tolerance.
FORWARD64_TOLERANCE = 1e-10

# Convolution, pooling, batch norm on the flattened features (not a Dense: the Flatten must then give
# the canonical channels-first order), then Dense layers; no dropout, so that steps are deterministic.
NETWORK = Network(
    input_shape=(3, 8, 8),
    input_kind="image",
    layers=(Conv2D(4, 3, padding=1), Activation("relu"), MaxPool2D(2), Flatten(), BatchNorm(),
            Dense(16), Activation("tanh"), Dense(5)),
    classes=5,
)


def _workload(optimizer: Optimizer, clip: float | None = None) -> Workload:
    return Workload(name="tf-test", title="tf-test", study="test", citation="", network=NETWORK,
                    recipe=Recipe(optimizer, Init("glorot_uniform"), grad_clip_norm=clip), default_batch_size=BATCH)


def _request(workload: Workload, scenario: str = "train") -> StepRequest:
    return StepRequest(workload=workload, scenario=scenario, batch_size=BATCH, device="cpu", threads=THREADS,
                       precision="float32", seed=3)


@pytest.mark.parametrize("optimizer, clip", [
    (Optimizer("sgd", 0.05), None),
    (Optimizer("sgd", 0.05, momentum=0.9, weight_decay=1e-3), 0.5),
    (Optimizer("sgd", 0.05, momentum=0.9, nesterov=True), None),
    (Optimizer("adam", 1e-3, weight_decay=1e-3), None),
    # decoupled decay strong enough (lr * wd = 5e-4 a step) that coupling it or leaving it out would show
    (Optimizer("adamw", 1e-3, weight_decay=0.5), None),
    (Optimizer("adadelta", 1.0, rho=0.95, eps=1e-6), None),
    (Optimizer("rmsprop", 1e-3, rho=0.9, eps=1e-8), None),
])
@pytest.mark.parametrize("name", ["tensorflow", "tensorflow-xla"])
def test_optimizers_step_as_pytorch_does(name: str, optimizer: Optimizer, clip: float | None) -> None:
    request = _request(_workload(optimizer, clip))
    ours, theirs = load_backend(name, THREADS).prepare(request), load_backend("torch", THREADS).prepare(request)
    for _ in range(STEPS):
        ours.step()
        theirs.step()
    mine, expected = ours.export_weights(), theirs.export_weights()
    for key, value in expected.items():
        scale = float(np.max(np.abs(value))) or 1.0
        assert float(np.max(np.abs(mine[key] - value))) / scale < OPTIMIZER_TOLERANCE, key


# bfloat16 keeps 8 significant bits: SGD's weights a few roundings apart, where torch rounds after each
# op of an update and TensorFlow's float32 update (tensorflow_native._apply_in_float32) once.
BF16_OPTIMIZER_TOLERANCE = 8 * 2.0**-8
# The spacing of bfloat16 numbers relative to their size is at most 2^-7: one rounding of a result.
BF16_SPACING = 2.0**-7


def _bfloat16_runners(optimizer: Optimizer, *names: str) -> list[KernelRunner]:
    request = dataclasses.replace(_request(_workload(optimizer)), precision="bfloat16")
    return [load_backend(name, THREADS).prepare(request) for name in names]


def test_bfloat16_sgd_steps_as_pytorch_does() -> None:
    ours, theirs = _bfloat16_runners(Optimizer("sgd", 0.05, momentum=0.9), "tensorflow", "torch")
    for _ in range(STEPS):
        ours.step()
        theirs.step()
    assert ours.parity().dtype == "bfloat16"
    mine, expected = ours.export_weights(), theirs.export_weights()
    for key, value in expected.items():
        scale = float(np.max(np.abs(value))) or 1.0
        assert float(np.max(np.abs(mine[key] - value))) / scale < BF16_OPTIMIZER_TOLERANCE, key


@pytest.mark.parametrize("optimizer", [Optimizer("adam", 1e-2), Optimizer("adamw", 1e-2, weight_decay=0.5)])
def test_bfloat16_adam_moves_the_weights_by_its_learning_rate(optimizer: Optimizer) -> None:
    """Adam's first update is ``lr * g / |g|``: each weight moves by the learning rate (AdamW's decay
    besides). TensorFlow's fused op in bfloat16 rounds beta2 to 1 and divides by zero there (and Keras'
    Adam moves nothing): bfloat16 variables step in float32, as torch's optimizers step them.
    Adam's later steps are not compared with torch's: a gradient near zero, rounded differently in
    bfloat16, flips the sign of a whole learning rate."""
    (runner,) = _bfloat16_runners(optimizer, "tensorflow")
    start = runner.export_weights()
    runner.step()
    after = runner.export_weights()
    for key, before in start.items():
        change = np.abs(after[key] - before)
        rounding = BF16_SPACING * np.maximum(np.abs(before), np.abs(after[key]))  # of the stored result
        bound = optimizer.lr * (1.0 + optimizer.weight_decay * np.abs(before)) + rounding
        assert np.all(change <= bound), key
        assert np.mean(change > 0) > 0.5, key  # the weights whose gradient is not exactly zero move


def test_a_flatten_read_by_batch_norm_keeps_the_canonical_order() -> None:
    checker = load_backend("tensorflow", THREADS).checker(_workload(Optimizer("sgd", 0.1)), "cpu", "float64")
    weights = canonical_weights(NETWORK, 0)
    checker.load_weights(weights)
    inputs = canonical_batch(NETWORK, BATCH, 0)[0].astype(np.float64)
    expected = reference.forward(NETWORK, {key: value.astype(np.float64) for key, value in weights.items()}, inputs)
    assert max_relative_error(checker.forward(inputs), expected) < FORWARD64_TOLERANCE


@pytest.mark.parametrize("name, execution", [("tensorflow", "graph"), ("tensorflow-xla", "xla")])
def test_steps_are_traced_once_when_built_and_the_parity_record_reads_tensorflow(name: str, execution: str) -> None:
    backend = load_backend(name, THREADS)
    runner = backend.prepare(_request(_workload(Optimizer("sgd", 0.1, momentum=0.9))))
    traced = dict(runner.model._functions)
    assert {key[0] for key in traced} == {"train", "infer"}  # both traced at build, the timed step included
    for _ in range(2):
        runner.step()
    trainer = backend.trainer(_request(_workload(Optimizer("sgd", 0.1, momentum=0.9))))
    inputs, labels = canonical_batch(NETWORK, BATCH, 1)
    trainer.train_step(inputs.astype(np.float32), labels)
    assert trainer.predict(inputs.astype(np.float32)).shape == (BATCH, NETWORK.classes)
    assert runner.model._functions == traced
    assert len(trainer.model._functions) == len(traced)  # the trainer's batches match what it traced
    parity = runner.parity()
    assert (parity.threads, parity.dtype, parity.layout, parity.execution) == (THREADS, "float32", "NHWC", execution)
    assert parity.details["threads_source"] == "tf.config.threading.get_intra_op_parallelism_threads"
    assert parity.details["jit_compile"] is (execution == "xla")
    assert runner.trainable_params() == sum(value.size for value in canonical_weights(NETWORK, 0).values())


def test_the_gpu_is_unavailable_without_one() -> None:
    import tensorflow as tf

    from dlarena.frameworks.base import Unavailable

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(Unavailable, match="sees no GPU"):
        load_backend("tensorflow", THREADS).prepare(dataclasses.replace(_request(_workload(Optimizer("sgd", 0.1))),
                                                                        device="cuda"))
