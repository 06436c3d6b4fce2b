"""DyNet 2.1.2 (``dynet``, in the Python 3.8 ``dynet`` environment): what verify does not show.

``dlarena verify`` holds its logits, loss and gradients to the oracle; here: DyNet's trainers stepping
as PyTorch's optimizers do (SGD, momentum, global-norm clipping with DyNet's default clipping turned
off otherwise, Adadelta, Adam; batch norm on batch statistics in training) on a network with
convolution and batch norm and one with an embedding and an LSTM; what it refuses, each with its
reason (float64, weight decay, Nesterov, a GRU); and a timed cell at one thread using one core. What
needs the environment skips, saying why, where it is not set up (``dlarena env setup dynet``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dlarena.environments import manage
from dlarena.orchestrate.executor import LocalExecutor
from dlarena.orchestrate.orchestrator import execute_cell
from dlarena.plan.cell import Cell, Measurement
from dlarena.spec import (
    LSTM,
    Activation,
    BatchNorm,
    Conv2D,
    Dense,
    Embedding,
    Flatten,
    Init,
    MaxPool2D,
    Network,
    Optimizer,
    Recipe,
)
from job_steps import assert_steps_as_pytorch_does, steps_in_environment

THREADS = 1
# Weights after STEPS steps, DyNet against PyTorch from the same start, relative to each array's
# largest: float32 rounding (test_cntk's bound); DyNet's default clipping at 5 left on, or momentum as
# a learning-rate-scaled velocity with the wrong sign, is 1e-2 or more.
OPTIMIZER_TOLERANCE = 1e-4
# DyNet's Adam adds eps to the uncorrected sqrt(v) (TensorFlow's and Keras' form), PyTorch to the
# bias-corrected one; with this eps the two coincide, so the test checks the rest (test_cntk's reason).
ADAM_EPS_WHERE_PLACEMENT_VANISHES = 1e-14
# DyNet's RMSProp adds eps inside the square root (Tieleman and Hinton's form, as MXNet's), PyTorch
# outside it. With eps 1e-14 the LSTM's tiny first gradients (about 1e-7) stepped 2e-4 apart (measured);
# with this one sqrt(eps) is 1e-10, far below every gradient that moves a weight here.
RMSPROP_EPS_WHERE_PLACEMENT_VANISHES = 1e-20
# A worker that imports DyNet (under a second) and steps a small network: only a hung one reaches this.
TIMEOUT_S = 300.0
# cores_used (CPU seconds over wall seconds in the timed loop) of a one-thread cell: DyNet's kernels
# run in the calling thread; the allowance is for the sampler and the interpreter's own threads.
ONE_THREAD_CORES = 1.2

IMAGES = Network(input_shape=(3, 8, 8), input_kind="image",
                 layers=(Conv2D(4, 3, padding=1, bias=False), BatchNorm(), Activation("relu"), MaxPool2D(2),
                         Flatten(), Dense(16), Activation("tanh"), Dense(5)), classes=5)
TOKENS = Network(input_shape=(6,), input_kind="tokens", layers=(Embedding(13, 5), LSTM(4), Dense(13)), classes=13,
                 label_kind="token", vocab=13)

# Large starting weights and no batch norm: gradients far above DyNet's default clipping threshold.
WIDE = Network(input_shape=(20,), input_kind="vector", layers=(Dense(32), Activation("relu"), Dense(5)), classes=5)

_RECORD = manage.installed_record("dynet")
needs_dynet = pytest.mark.skipif(_RECORD is None,
                                 reason="the dynet environment is not set up: `dlarena env setup dynet`")

# Run by the dynet environment's interpreter: N steps of the recipe from the given start; the weights
# after, or the refusal's message.
@needs_dynet
@pytest.mark.parametrize("network", [IMAGES, TOKENS], ids=["conv-bn", "lstm"])
@pytest.mark.parametrize("optimizer, clip", [
    (Optimizer("sgd", 0.05), None),
    (Optimizer("sgd", 0.05, momentum=0.9), None),
    (Optimizer("sgd", 0.5, momentum=0.9), 0.5),
    (Optimizer("adadelta", 1.0, rho=0.95, eps=1e-6), None),
    (Optimizer("adam", 1e-2, eps=ADAM_EPS_WHERE_PLACEMENT_VANISHES), None),
    (Optimizer("rmsprop", 1e-2, rho=0.9, eps=RMSPROP_EPS_WHERE_PLACEMENT_VANISHES), None),
], ids=["sgd", "momentum", "momentum-clip", "adadelta", "adam", "rmsprop"])
def test_trainers_step_as_pytorch_does(tmp_path: Path, network: Network, optimizer: Optimizer,
                                       clip: float | None) -> None:
    _compare_with_torch(tmp_path, network, Recipe(optimizer, Init("glorot_uniform"), grad_clip_norm=clip))


@needs_dynet
def test_dynet_s_default_clipping_is_off_when_the_recipe_has_none(tmp_path: Path) -> None:
    # The first gradient's global norm is 12.9 here (measured), above the 5 DyNet clips to by default.
    _compare_with_torch(tmp_path, WIDE, Recipe(Optimizer("sgd", 0.05), Init("uniform", 2.0)))


def _compare_with_torch(tmp_path: Path, network: Network, recipe: Recipe) -> None:
    assert_steps_as_pytorch_does("dynet", tmp_path, network, recipe, OPTIMIZER_TOLERANCE)


@needs_dynet
@pytest.mark.parametrize("optimizer, precision, reason", [
    (Optimizer("sgd", 0.05), "float64", "DyNet computes in float32 only"),
    (Optimizer("sgd", 0.05, weight_decay=1e-3), "float32", "shrinks the stored weights multiplicatively"),
    (Optimizer("sgd", 0.05, momentum=0.9, nesterov=True), "float32", "no Nesterov momentum"),
    (Optimizer("adadelta", 0.5), "float32", "has no learning rate"),
], ids=["float64", "weight-decay", "nesterov", "adadelta-lr"])
def test_what_dynet_cannot_honour_is_unsupported_with_its_reason(
        tmp_path: Path, optimizer: Optimizer, precision: str, reason: str) -> None:
    record = steps_in_environment("dynet", tmp_path, IMAGES, Recipe(optimizer, Init("glorot_uniform")), precision)
    assert reason in str(record.get("unsupported")), record


def test_a_gru_is_unsupported_without_starting_a_worker() -> None:
    cell = Cell(framework="dynet", workload="karmanov-gru-small", scenario="train", batch_size=8, device="cpu",
                threads=THREADS, precision="float32", seed=0)
    stored = execute_cell(cell, TIMEOUT_S, LocalExecutor())
    assert stored.status == "unsupported" and "GRUBuilder" in stored.message


@needs_dynet
@pytest.mark.parametrize("scenario", ["train", "infer"])
def test_a_timed_cell_at_one_thread_uses_one_core(scenario: str) -> None:
    cell = Cell(framework="dynet", workload="karmanov-cnn-small", scenario=scenario, batch_size=32, device="cpu",
                threads=THREADS, precision="float32", seed=0,
                measurement=Measurement(warmup_steps=2, min_steps=5, min_time_s=0.5, max_steps=200, max_time_s=30.0))
    stored = execute_cell(cell, TIMEOUT_S, LocalExecutor())
    assert stored.status == "ok", stored.message + stored.stderr_tail
    data = stored.data
    assert data["framework_version"] == "2.1.2" and data["environment"]["python"].startswith("3.8")
    assert data["parity"]["threads"] == 1 and data["parity"]["dtype"] == "float32"
    assert 0 < data["cores_used"] < ONE_THREAD_CORES, data["cores_used"]
