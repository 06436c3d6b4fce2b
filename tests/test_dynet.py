"""DyNet 2.1.2 (``dynet``, in the Python 3.8 ``dynet`` environment): what verify does not show.

``dlarena verify`` holds its logits, loss and gradients to the oracle; here: DyNet's trainers stepping
as PyTorch's optimizers do (SGD, momentum, global-norm clipping with DyNet's default clipping turned
off otherwise, Adadelta, Adam; batch norm on batch statistics in training) on a network with
convolution and batch norm and one with an embedding and an LSTM; what it refuses, each with its
reason (float64, weight decay, Nesterov, a GRU); and a timed cell at one thread using one core. What
needs the environment skips, saying why, where it is not set up (``dlarena env setup dynet``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dlarena.environments import manage
from dlarena.frameworks.job import network_json
from dlarena.frameworks.kernel import loss_divisor
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
    Workload,
)
from dlarena.spec.weights import canonical_batch, initial_weights

THREADS = 1
BATCH = 8
STEPS = 4
SEED = 3
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
_STEPS_SCRIPT = """
import json, sys
import numpy as np
from dlarena_runner.frameworks import dynet_graph
from dlarena_runner.model import Network, Unsupported
folder, steps, precision = sys.argv[1], int(sys.argv[2]), sys.argv[3]
job = json.load(open(folder + "/job.json"))
arrays = dict(np.load(folder + "/arrays.npz"))
try:
    model = dynet_graph.Model(Network(job["network"]), job["recipe"], precision, job["batch"], True, job["divisor"])
except Unsupported as error:
    json.dump({"unsupported": str(error)}, open(folder + "/out.json", "w"))
    sys.exit(0)
model.load_weights({k[7:]: v for k, v in arrays.items() if k.startswith("weight/")})
inputs, labels = model.device_batch(arrays["inputs"]), model.device_batch(arrays["labels"])
losses = [float(model.train_step(inputs, labels)) for _ in range(steps)]
np.savez(folder + "/after.npz", **model.export_weights())
json.dump({"losses": losses}, open(folder + "/out.json", "w"))
"""


def _steps(folder: Path, network: Network, recipe: Recipe, precision: str = "float32") -> dict[str, object]:
    """The module's STEPS training steps in the dynet environment: its output record."""
    start = initial_weights(network, recipe.init, SEED)
    inputs, labels = canonical_batch(network, BATCH, SEED)
    (folder / "job.json").write_text(json.dumps({
        "network": network_json(network), "recipe": dataclasses.asdict(recipe), "batch": BATCH,
        "divisor": loss_divisor(network, recipe, BATCH)}))
    np.savez(folder / "arrays.npz", inputs=inputs if network.input_kind == "tokens" else inputs.astype(np.float32),
             labels=labels, **{f"weight/{key}": value for key, value in start.items()})
    python, variables = manage.launch("dynet")
    completed = subprocess.run([python, "-c", _STEPS_SCRIPT, str(folder), str(STEPS), precision],
                               capture_output=True, text=True, timeout=TIMEOUT_S, env={**os.environ, **variables})
    assert completed.returncode == 0, completed.stderr[-2000:]
    record: dict[str, object] = json.loads((folder / "out.json").read_text())
    return record


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
    """STEPS steps in DyNet and in PyTorch (the torch framework) from the same start: the same weights."""
    pytest.importorskip("torch")
    from dlarena.frameworks.base import StepRequest
    from dlarena.frameworks.registry import load_backend

    record = _steps(tmp_path, network, recipe)
    mine = dict(np.load(tmp_path / "after.npz"))
    losses = record["losses"]
    assert isinstance(losses, list) and losses[-1] < losses[0]

    workload = Workload(name="dynet-test", title="dynet-test", study="test", citation="", network=network,
                        recipe=recipe, default_batch_size=BATCH)
    request = StepRequest(workload=workload, scenario="train", batch_size=BATCH, device="cpu", threads=THREADS,
                          precision="float32", seed=SEED)
    theirs = load_backend("torch", THREADS).prepare(request)
    for _ in range(STEPS):
        theirs.step()
    start = initial_weights(network, recipe.init, SEED)
    for key, value in theirs.export_weights().items():
        assert not np.array_equal(value, start[key]), key  # the steps moved it: the comparison means something
        scale = float(np.max(np.abs(value))) or 1.0
        assert float(np.max(np.abs(mine[key] - value))) / scale < OPTIMIZER_TOLERANCE, key


@needs_dynet
@pytest.mark.parametrize("optimizer, precision, reason", [
    (Optimizer("sgd", 0.05), "float64", "DyNet computes in float32 only"),
    (Optimizer("sgd", 0.05, weight_decay=1e-3), "float32", "shrinks the stored weights multiplicatively"),
    (Optimizer("sgd", 0.05, momentum=0.9, nesterov=True), "float32", "no Nesterov momentum"),
    (Optimizer("adadelta", 0.5), "float32", "has no learning rate"),
], ids=["float64", "weight-decay", "nesterov", "adadelta-lr"])
def test_what_dynet_cannot_honour_is_unsupported_with_its_reason(
        tmp_path: Path, optimizer: Optimizer, precision: str, reason: str) -> None:
    record = _steps(tmp_path, IMAGES, Recipe(optimizer, Init("glorot_uniform")), precision)
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
