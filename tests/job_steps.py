"""Training steps of an old-interpreter framework's module in its managed environment, beside PyTorch's
from the same start: what tests/test_cntk.py, test_caffe.py, test_caffe2.py and test_dynet.py compare.

The module is run as the job worker runs it (``dlarena_runner.model``'s Network, the registry's
``job_module`` and variables, the environment's interpreter), on one network and recipe, for a few
steps of one synthetic batch; its weights after them are read back here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlarena.environments import manage
from dlarena.frameworks.job import network_json
from dlarena.frameworks.kernel import loss_divisor
from dlarena.frameworks.registry import FRAMEWORKS
from dlarena.spec import Network, Recipe, Workload
from dlarena.spec.weights import canonical_batch, initial_weights

# The synthetic batch, its seed and the steps every comparison takes: enough for momentum and Adam's
# moments to matter, few enough that float32 rounding stays far below the tests' tolerances.
BATCH = 8
STEPS = 4
SEED = 3
THREADS = 1
# A worker that imports its framework (2 s here) and steps a small network: only a hung one reaches this.
TIMEOUT_S = 300.0

# Run by the environment's interpreter: STEPS steps of the recipe from the given start; the weights after.
_SCRIPT = """
import importlib, json, sys
import numpy as np
from dlarena_runner.model import Network, Unsupported
module_name, folder, precision = sys.argv[1], sys.argv[2], sys.argv[4]
steps, threads = int(sys.argv[3]), int(sys.argv[5])
module = importlib.import_module(module_name)
job = json.load(open(folder + "/job.json"))
arrays = dict(np.load(folder + "/arrays.npz"))
module.set_threads(threads)
try:
    model = module.Model(Network(job["network"]), job["recipe"], precision, job["batch"], True, job["divisor"])
except Unsupported as error:
    json.dump({"unsupported": str(error)}, open(folder + "/out.json", "w"))
    sys.exit(0)
model.load_weights({k[len("weight/"):]: v for k, v in arrays.items() if k.startswith("weight/")})
inputs, labels = model.device_batch(arrays["inputs"]), model.device_batch(arrays["labels"])
losses = [float(model.train_step(inputs, labels)) for _ in range(steps)]
np.savez(folder + "/after.npz", **model.export_weights())
json.dump({"losses": losses}, open(folder + "/out.json", "w"))
"""


def steps_in_environment(framework: str, folder: Path, network: Network, recipe: Recipe,
                         precision: str = "float32") -> dict[str, Any]:
    """STEPS training steps of ``framework``'s module: ``{"losses": [...]}`` with the weights after them
    in ``folder/after.npz``, or ``{"unsupported": sentence}`` where the module refuses the recipe."""
    info = FRAMEWORKS[framework]
    assert info.environment is not None and info.job_module is not None, framework
    start = initial_weights(network, recipe.init, SEED)
    inputs, labels = canonical_batch(network, BATCH, SEED)
    (folder / "job.json").write_text(json.dumps({
        "network": network_json(network), "recipe": dataclasses.asdict(recipe), "batch": BATCH,
        "divisor": loss_divisor(network, recipe, BATCH)}))
    np.savez(folder / "arrays.npz", inputs=inputs if network.input_kind == "tokens" else inputs.astype(np.float32),
             labels=labels, **{f"weight/{key}": value for key, value in start.items()})
    python, variables = manage.launch(info.environment)
    # The thread variables the worker sets before import (dlarena_runner.process), then the framework's own.
    threads = {name: str(THREADS) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    completed = subprocess.run(
        [python, "-c", _SCRIPT, info.job_module, str(folder), str(STEPS), precision, str(THREADS)],
        capture_output=True, text=True, timeout=TIMEOUT_S, env={**os.environ, **variables, **threads, **info.variables})
    assert completed.returncode == 0, completed.stderr[-2000:]
    record: dict[str, Any] = json.loads((folder / "out.json").read_text())
    return record


def assert_steps_as_pytorch_does(framework: str, folder: Path, network: Network, recipe: Recipe,
                                 tolerance: float) -> None:
    """STEPS steps in ``framework`` and in PyTorch (the torch framework) from the same start give the
    same weights, each array to ``tolerance`` of its largest value, and the loss falls."""
    pytest.importorskip("torch")
    from dlarena.frameworks.base import StepRequest
    from dlarena.frameworks.registry import load_backend

    record = steps_in_environment(framework, folder, network, recipe)
    losses = record.get("losses")
    assert isinstance(losses, list) and losses[-1] < losses[0], record
    mine = dict(np.load(folder / "after.npz"))
    workload = Workload(name=f"{framework}-test", title=f"{framework}-test", study="test", citation="",
                        network=network, recipe=recipe, default_batch_size=BATCH)
    request = StepRequest(workload=workload, scenario="train", batch_size=BATCH, device="cpu", threads=THREADS,
                          precision="float32", seed=SEED)
    theirs = load_backend("torch", THREADS).prepare(request)
    for _ in range(STEPS):
        theirs.step()
    start = initial_weights(network, recipe.init, SEED)
    for key, value in theirs.export_weights().items():
        assert not np.array_equal(value, start[key]), key  # the steps moved it: the comparison means something
        scale = float(np.max(np.abs(value))) or 1.0
        assert float(np.max(np.abs(mine[key] - value))) / scale < tolerance, key
