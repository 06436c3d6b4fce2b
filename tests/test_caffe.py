"""BVLC Caffe 1.0 (``caffe``, Debian bullseye's packages in the ``caffe`` environment): what verify does not show.

``dlarena verify`` holds its logits, loss and gradients to the oracle; here: the Debian step's pins and
its failure as one sentence with nothing kept, Caffe's solvers stepping as PyTorch's optimizers do
(the recipe's semantics through SGD, Nesterov, Adam, RMSProp, AdaDelta, weight decay and clipping),
and the ``caffe time`` cross-check on the generated prototxt. What needs the environment skips, saying
why, where it is not set up (``dlarena env setup caffe``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dlarena.environments import ENVIRONMENTS, debs, manage
from dlarena.frameworks.job import network_json
from dlarena.spec import Activation, Conv2D, Dense, Flatten, Init, MaxPool2D, Network, Optimizer, Recipe
from job_steps import assert_steps_as_pytorch_does

THREADS = 1
# Weights after STEPS steps, Caffe against PyTorch from the same start, relative to each array's largest:
# the same bound as test_tensorflow_backend's (float32 rounding, RMSProp's sqrt(ms) + eps amplifying it
# while ms is small); a wrong formula (epsilon placement, decay after clipping, Nesterov) is 1e-3 or more.
OPTIMIZER_TOLERANCE = 1e-4
# A worker that imports pycaffe (2 s) and steps a small network: only a hung one reaches this.
TIMEOUT_S = 300.0

# Convolution, pooling, Flatten into Dense layers; no dropout and no batch norm, so that steps are
# deterministic and Caffe's statistics (a normalised sum, not PyTorch's moving average) stay out.
NETWORK = Network(input_shape=(3, 8, 8), input_kind="image",
                  layers=(Conv2D(4, 3, padding=1), Activation("relu"), MaxPool2D(2), Flatten(), Dense(16),
                          Activation("tanh"), Dense(5)), classes=5)

_RECORD = manage.installed_record("caffe")
needs_caffe = pytest.mark.skipif(_RECORD is None, reason="the caffe environment is not set up: "
                                                         "`dlarena env setup caffe`")

def _in_caffe(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    python, variables = manage.launch("caffe")
    environment = {**os.environ, **variables, "OPENBLAS_NUM_THREADS": str(THREADS)}
    return subprocess.run([python, *arguments], capture_output=True, text=True, timeout=TIMEOUT_S, env=environment)


def test_the_pins_are_exact_and_a_bad_line_is_one_sentence() -> None:
    pins = debs.read_pins(ENVIRONMENTS["caffe"].debs_text())
    names = {name for name, _ in pins}
    assert {"caffe", "libcaffe1", "python3-caffe", "libopenblas0-pthread"} <= names
    assert not names & {"libc6", "libstdc++6", "python3", "python3-numpy", "libpython3.9"}  # the host's, pip's
    with pytest.raises(debs.DebianError, match=r"line 2 .* not package=version"):
        debs.read_pins("caffe=1.0\ncaffe >= 1.0\n")


def test_env_placeholders_become_the_environments_folder() -> None:
    spec = ENVIRONMENTS["caffe"]
    _, variables = manage.launch("caffe", require=False)
    libraries = variables["LD_LIBRARY_PATH"].split(":")
    assert libraries[0] == f"{manage.folder(spec)}/debian/usr/lib/x86_64-linux-gnu/openblas-pthread"
    assert "{env}" not in variables["LD_LIBRARY_PATH"]


def test_without_apt_setup_is_one_sentence_and_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(manage.ENVS_VARIABLE, str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no apt-get, no dpkg
    monkeypatch.setattr(manage, "find_interpreter", lambda spec: sys.executable)
    with pytest.raises(manage.EnvironmentError_) as raised:
        manage.setup("caffe")
    message = str(raised.value)
    assert "apt-get and dpkg not found" in message and "nothing was kept" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="no apt-get here (a Debian or Ubuntu system's)")
def test_an_unreachable_archive_is_one_sentence_and_keeps_nothing(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(manage.ENVS_VARIABLE, str(tmp_path))
    monkeypatch.setattr(debs, "ARCHIVE_URL", "http://127.0.0.1:9/debian")  # the discard port: refused at once
    monkeypatch.setattr(manage, "find_interpreter", lambda spec: sys.executable)
    with pytest.raises(manage.EnvironmentError_, match=r"package list could not be fetched from http://127\.0\.0\.1:9"):
        manage.setup("caffe")
    assert list(tmp_path.iterdir()) == []


@needs_caffe
@pytest.mark.parametrize("optimizer, clip", [
    (Optimizer("sgd", 0.05), None),
    (Optimizer("sgd", 0.05, momentum=0.9, weight_decay=1e-3), 0.5),
    (Optimizer("sgd", 0.05, momentum=0.9, nesterov=True), None),
    (Optimizer("adam", 1e-3, weight_decay=1e-3), None),
    (Optimizer("adadelta", 1.0, rho=0.95, eps=1e-6), None),
    (Optimizer("rmsprop", 1e-3, rho=0.9, eps=1e-8), None),
])
def test_solvers_step_as_pytorch_does(tmp_path: Path, optimizer: Optimizer, clip: float | None) -> None:
    recipe = Recipe(optimizer, Init("glorot_uniform"), grad_clip_norm=clip)
    assert_steps_as_pytorch_does("caffe", tmp_path, NETWORK, recipe, OPTIMIZER_TOLERANCE)


_TIME_SCRIPT = """
import json, sys
from dlarena_runner.frameworks import caffe_netspec
from dlarena_runner.model import Network
job = json.load(open(sys.argv[1]))
model = caffe_netspec.Model(Network(job["network"]), job["recipe"], "float32", 8, True, 8)
print(json.dumps(model.tool_time(3)))
"""


@needs_caffe
def test_caffe_time_reads_the_generated_prototxt(tmp_path: Path) -> None:
    recipe = Recipe(Optimizer("sgd", 0.05), Init("glorot_uniform"))
    (tmp_path / "job.json").write_text(json.dumps({"network": network_json(NETWORK),
                                                   "recipe": dataclasses.asdict(recipe)}))
    completed = _in_caffe(["-c", _TIME_SCRIPT, str(tmp_path / "job.json")])
    assert completed.returncode == 0, completed.stderr[-2000:]
    timing = json.loads(completed.stdout.strip().splitlines()[-1])
    assert timing["forward_ms"] > 0 and timing["backward_ms"] > 0 and timing["command"][1] == "time"
    assert timing["forward_backward_ms"] >= 0  # whole milliseconds: 0 for this small network
