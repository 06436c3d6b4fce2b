"""CNTK 2.7 (``cntk``, in the Python 3.6 ``cntk`` environment): what verify does not show.

``dlarena verify`` holds its logits, loss and gradients to the oracle; here: a missing system library
refused in one sentence naming its Debian package, with nothing kept; CNTK's learners stepping as
PyTorch's optimizers do (the recipe's SGD, momentum, Nesterov, weight decay, global-norm clipping,
Adadelta and Adam through ``cntk.learners`` and their minibatch-size conventions), on a network with
an embedding and an LSTM too. What needs the environment skips, saying why, where it is not set up
(``dlarena env setup cntk``).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from dlarena.environments import ENVIRONMENTS, EnvironmentSpec, SystemLink, manage
from dlarena.spec import (
    LSTM,
    Activation,
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
from job_steps import assert_steps_as_pytorch_does

# Weights after STEPS steps, CNTK against PyTorch from the same start, relative to each array's
# largest: float32 rounding (test_caffe's bound); a wrong convention (the learning rate per sample
# rather than per minibatch, unit-gain momentum, L2 per sample) is 1e-2 or more.
OPTIMIZER_TOLERANCE = 1e-4
# CNTK's Adam adds eps to sqrt(v) with the bias correction moved into the step size (Keras' and
# TensorFlow 1's Adam), PyTorch to the bias-corrected sqrt(v): a weight whose gradients are near eps
# (an LSTM's recurrent kernel and biases, whose first gradients are zero or tiny) steps differently,
# by up to 2e-2 of the largest weight on TOKENS after 4 steps with eps 1e-8 (measured). With this eps
# the two formulas coincide (1e-9 apart, measured), so the test checks everything else: the learning
# rate per minibatch, both moments, the bias correction. A learning rate per sample is 0.3 apart.
ADAM_EPS_WHERE_PLACEMENT_VANISHES = 1e-14

IMAGES = Network(input_shape=(3, 8, 8), input_kind="image",
                 layers=(Conv2D(4, 3, padding=1), Activation("relu"), MaxPool2D(2), Flatten(), Dense(16),
                         Activation("tanh"), Dense(5)), classes=5)
TOKENS = Network(input_shape=(6,), input_kind="tokens", layers=(Embedding(13, 5), LSTM(4), Dense(13)), classes=13,
                 label_kind="token", vocab=13)

_RECORD = manage.installed_record("cntk")
needs_cntk = pytest.mark.skipif(_RECORD is None, reason="the cntk environment is not set up: `dlarena env setup cntk`")

def test_a_missing_system_library_is_one_sentence_naming_its_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(manage.ENVS_VARIABLE, str(tmp_path))
    version = sys.version_info
    spec = dataclasses.replace(ENVIRONMENTS["cntk"], name="linked", python=((3, version.minor), (3, version.minor)),
                               links=(SystemLink("cntk/libs/libmpi.so.12", str(tmp_path / "absent.so.40"),
                                                 "libopenmpi3"),))
    monkeypatch.setitem(ENVIRONMENTS, "linked", spec)
    with pytest.raises(manage.EnvironmentError_) as raised:
        manage.setup("linked")
    message = str(raised.value)
    assert "\n" not in message and "apt-get install libopenmpi3" in message and "absent.so.40" in message
    assert list(tmp_path.iterdir()) == []  # refused before anything was made or downloaded


def test_links_and_a_bootstrap_key_the_environment_only_when_declared() -> None:
    plain = EnvironmentSpec(name="plain", description="", python=((3, 11), (3, 11)), constraints="legacy.txt",
                            packages=("numpy",))
    linked = dataclasses.replace(plain, links=(SystemLink("a/b.so.1", "/usr/lib/b.so.4", "libb4"),))
    assert manage.pin_hash(linked) != manage.pin_hash(plain)
    assert manage.pin_hash(dataclasses.replace(plain, bootstrap=("pip",))) != manage.pin_hash(plain)


@needs_cntk
def test_the_environment_links_openmpi_and_records_the_wheels_own_version() -> None:
    assert _RECORD is not None and _RECORD["packages"]["cntk"] == "2.7.post2"  # its dist-info folder says 2.7
    site = Path(_RECORD["python_executable"]).parent.parent / "lib" / "python3.6" / "site-packages"
    for link in ENVIRONMENTS["cntk"].links:
        assert (site / link.path).resolve() == Path(link.target).resolve()


@needs_cntk
@pytest.mark.parametrize("network", [IMAGES, TOKENS], ids=["conv", "lstm"])
@pytest.mark.parametrize("optimizer, clip", [
    (Optimizer("sgd", 0.05), None),
    (Optimizer("sgd", 0.05, momentum=0.9, weight_decay=1e-3), None),
    (Optimizer("sgd", 0.5, momentum=0.9), 0.5),
    (Optimizer("sgd", 0.05, momentum=0.9, nesterov=True), None),
    (Optimizer("adadelta", 1.0, rho=0.95, eps=1e-6), None),
    (Optimizer("adam", 1e-2, eps=ADAM_EPS_WHERE_PLACEMENT_VANISHES), None),
], ids=["sgd", "momentum-decay", "momentum-clip", "nesterov", "adadelta", "adam"])
def test_learners_step_as_pytorch_does(tmp_path: Path, network: Network, optimizer: Optimizer,
                                       clip: float | None) -> None:
    if network is TOKENS and optimizer.weight_decay:
        pytest.skip("cntk refuses weight decay on a language model (its L2 weight is per token)")
    recipe = Recipe(optimizer, Init("glorot_uniform"), grad_clip_norm=clip)
    assert_steps_as_pytorch_does("cntk", tmp_path, network, recipe, OPTIMIZER_TOLERANCE)
