"""`dlarena capabilities`: every probe asked in a real worker process of the test-only fault frameworks
(frameworks/fault.py, probes/fault_probes.py), whose `fault-wrong` answers are deliberately wrong: each
probe must fail on it with its own sentence, pass on `fault-none`, and never leave a pair blank.
The problems' references are checked against independent derivations. No deep learning framework.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import Cli
from dlarena import api
from dlarena.errors import DlarenaError
from dlarena.probes import checks
from dlarena.probes.registry import HOST, PROBES
from dlarena.report.capabilities import matrix
from dlarena.store.database import Store
from stored_runs import verified

pytestmark = pytest.mark.xdist_group("capabilities")
WORKER_PROBES = [name for name, probe in PROBES.items() if probe.where != HOST and name != "thread-limit"]
# What each probe's failure says on fault-wrong: the check that caught it.
WRONG_ANSWERS = {
    "custom-layer": "the gradient differs from the NumPy float64 reference by",
    "higher-order": "the Hessian-vector product differs from the NumPy float64 reference by",
    "dynamic-loop": "eager: from start 0 the loop ran 12 steps, the reference 13",
    "variable-length": "the final hidden states differs from the NumPy float64 reference by",
    "export-onnx": "digits-mlp: the export-onnx artefact's output differs from the framework's own by",
    "save-load": "digits-mlp: the save-load artefact's output differs from the framework's own by",
    "aot-export": "digits-mlp: the aot-export artefact's output differs from the framework's own by",
    "mobile": "digits-mlp: the mobile artefact's output differs from the framework's own by",
    "cold-start": "digits-mlp: the cold-started model's output differs from the framework's own by",
    "multi-device": "two halves: the gradients differs from the NumPy float64 reference by",
}


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, object]]:
    db = tmp_path_factory.mktemp("capabilities") / "results.db"
    found = api.capabilities(frameworks=["fault-none", "fault-wrong", "fault-raise", "fault-unsupported"],
                             probes=WORKER_PROBES, db=db)
    return {(answer["framework"], answer["probe"]): answer for answer in found}


def test_every_probe_has_a_wrong_answer_that_fails_it() -> None:
    assert sorted(WRONG_ANSWERS) == sorted(WORKER_PROBES)


@pytest.mark.parametrize("probe", WORKER_PROBES)
def test_a_right_answer_passes_and_a_wrong_one_fails_with_its_reason(
        answers: dict[tuple[str, str], dict[str, object]], probe: str) -> None:
    right, wrong = answers[("fault-none", probe)], answers[("fault-wrong", probe)]
    assert right["outcome"] == "pass", right
    assert PROBES[probe].figure in right["figures"]  # type: ignore[operator]
    assert wrong["outcome"] == "fail" and WRONG_ANSWERS[probe] in str(wrong["message"]), wrong
    assert wrong["framework_version"] and wrong["command"]  # the worker ran, and can be run again by hand


def test_a_framework_that_raises_or_cannot_express_a_probe_says_so(
        answers: dict[tuple[str, str], dict[str, object]]) -> None:
    raised = answers[("fault-raise", "custom-layer")]
    assert raised["outcome"] == "fail"
    assert raised["message"] == "RuntimeError: injected failure while answering the probe"
    unsupported = answers[("fault-unsupported", "higher-order")]
    assert unsupported["outcome"] == "unsupported" and "cannot express" in str(unsupported["message"])


def test_the_matrix_has_no_blank(answers: dict[tuple[str, str], dict[str, object]]) -> None:
    lines = matrix(list(answers.values()))
    body = [line for line in lines if line.startswith("| fault-")]
    assert len(body) == 4 and all("|  |" not in line for line in body)
    assert body[0].count("pass (") == len(WORKER_PROBES)


def test_a_crashed_worker_is_the_probes_failure(db_path: Path) -> None:
    (answer,) = api.capabilities(frameworks=["fault-segfault"], probes=["custom-layer"], db=db_path)
    assert answer["outcome"] == "fail" and "SIGSEGV" in answer["message"] and answer["stderr_tail"] is not None
    store = Store.open(db_path, create=False)
    try:
        (stored,) = store.probe_answers()
    finally:
        store.close()
    assert (stored["framework"], stored["outcome"]) == ("fault-segfault", "fail")


def test_thread_limit_fails_a_framework_that_keeps_two_cores_busy(db_path: Path) -> None:
    found = {answer["framework"]: answer for answer in api.capabilities(
        frameworks=["fault-none", "fault-threads"], probes=["thread-limit"], db=db_path)}
    assert found["fault-none"]["outcome"] == "pass", found["fault-none"]
    assert found["fault-threads"]["outcome"] == "fail", found["fault-threads"]
    assert "of its threads computing or waiting for a core at once" in found["fault-threads"]["message"]


def test_networks_reads_the_verdicts_of_verify(db_path: Path) -> None:
    from dlarena.environment import code_version

    (missing,) = api.capabilities(frameworks=["fault-none"], probes=["networks"], db=db_path)
    assert missing["outcome"] == "unavailable" and "dlarena verify --frameworks fault-none" in missing["message"]
    store = Store.open(db_path)
    for workload, status in (("fcn5-small", "ok"), ("lstm32-small", "ok"), ("resnet50-small", "mismatch")):
        verified(store, "fault-none", workload, status, code_version())
    store.close()
    (answer,) = api.capabilities(frameworks=["fault-none"], probes=["networks"], db=db_path)
    assert answer["outcome"] == "pass"
    assert {key: answer["figures"][key] for key in ("verified", "checked", "rnn", "residual")} == {
        "verified": 2, "checked": 3, "rnn": 1, "residual": 0}


def test_bad_names_are_one_sentence(cli: Cli, db_path: Path) -> None:
    done = cli("capabilities", "--probes", "custom-layr", "--db", str(db_path))
    assert done.returncode == 2 and "custom-layer" in done.stderr and "Traceback" not in done.stderr
    assert not db_path.exists()
    with pytest.raises(DlarenaError, match="unknown framework"):
        api.capabilities(frameworks=["nope"], db=db_path)


def test_capabilities_on_the_command_line_prints_the_matrix_and_json(cli: Cli, db_path: Path) -> None:
    done = cli("capabilities", "--frameworks", "fault-none", "--probes", "custom-layer,higher-order",
               "--db", str(db_path))
    assert done.returncode == 0, done.stderr
    assert "| fault-none | pass (" in done.stdout and "fault-none custom-layer: pass" in done.stderr
    done = cli("capabilities", "--frameworks", "fault-none", "--probes", "custom-layer", "--json", "--db",
               str(db_path))
    (answer,) = json.loads(done.stdout)
    assert answer["outcome"] == "pass" and answer["figures"]["gradient_error"] < checks.TOLERANCE


# --- the problems' references, derived another way ------------------------------------------------


def test_the_activations_reference_gradient_is_its_derivative() -> None:
    problem = checks.custom_layer_problem()
    x = problem.x.astype(np.float64)
    s = 1.0 / (1.0 + np.exp(-checks.ALPHA * x))
    np.testing.assert_allclose(problem.reference_gradient(), problem.weights * (s + checks.ALPHA * x * s * (1 - s)),
                               rtol=1e-7, atol=1e-9)


def test_the_hvp_reference_is_the_hessian_times_v() -> None:
    """The full Hessian by differences of the gradient, column by column, times v."""
    problem = checks.hessian_problem()
    flat = np.concatenate([p.ravel() for p in problem.params]).astype(np.float64)
    shapes = [p.shape for p in problem.params]

    def gradient(vector: np.ndarray) -> np.ndarray:
        parts, start = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            parts.append(vector[start:start + size].reshape(shape))
            start += size
        return np.concatenate([g.ravel() for g in problem.loss_gradient(tuple(parts))])

    h = 1e-5
    hessian = np.stack([(gradient(flat + h * e) - gradient(flat - h * e)) / (2 * h) for e in np.eye(len(flat))])
    v = np.concatenate([p.ravel() for p in problem.vector])
    np.testing.assert_allclose(np.concatenate([r.ravel() for r in problem.reference_hvp()]), hessian @ v,
                               rtol=1e-6, atol=1e-8)


def test_the_loop_counts_differ_with_the_start_and_padding_matters() -> None:
    loop = checks.loop_problem()
    assert len({steps for steps, _ in loop.reference()}) == len(checks.LOOP_START_NORMS)
    sequences = checks.sequence_problem()
    padded = checks.SequenceProblem(sequences.inputs, np.full_like(sequences.lengths, sequences.inputs.shape[1]),
                                    sequences.input_kernel, sequences.recurrent_kernel, sequences.bias)
    assert checks.relative_error(padded.reference(), sequences.reference()) > 100 * checks.TOLERANCE


def test_cold_start_is_the_fresh_processs_whole_time_and_its_parts(
        answers: dict[tuple[str, str], dict[str, object]]) -> None:
    figures = answers[("fault-none", "cold-start")]["figures"]
    assert isinstance(figures, dict)
    parts = [figures[name] for name in ("interpreter_s", "import_s", "load_s", "first_call_s")]
    assert all(part >= 0 for part in parts) and sum(parts) <= figures["cold_start_s"], figures


def test_every_real_framework_states_its_languages_and_a_licence_its_wheel_agrees_with() -> None:
    from importlib import metadata

    from dlarena.frameworks.registry import FRAMEWORKS
    from dlarena.probes.stated import STATED

    real = {name for name in FRAMEWORKS if not name.startswith("fault-")}
    assert real <= set(STATED), real - set(STATED)
    checked = 0
    for entry in STATED.values():
        assert entry.languages and entry.source.startswith("https://") and entry.checked
        try:
            found = metadata.metadata(entry.distribution)
        except metadata.PackageNotFoundError:
            continue
        if not found["Version"].startswith(entry.release):  # Keras 3 installed, the entry states Keras 2.3
            continue
        said = " ".join([found.get("License-Expression") or "", found.get("License") or "",
                         *(found.get_all("Classifier") or [])])
        assert _licence_words(entry.licence) & _licence_words(said), (entry.project, entry.licence, said)
        checked += 1
    assert checked or not any(FRAMEWORKS[name].is_installed() for name in real)


def _licence_words(text: str) -> set[str]:
    """A licence's family as metadata spells it in any of its forms: Apache-2.0, "Apache 2.0",
    "Apache Software License"; BSD-3-Clause, "BSD License"; MIT, "MIT License"."""
    lowered = text.lower()
    return {family for family in ("apache", "bsd", "mit") if family in lowered.replace("submit", "")}


def test_the_matrix_marks_the_stated_columns_as_stated() -> None:
    lines = matrix([{"framework": "onnxruntime", "probe": "save-load", "outcome": "pass", "message": "",
                     "figures": {"load_s": 0.01}}])
    assert lines[0] == "| framework | save-load | languages (stated) | licence (stated) |"
    assert "| onnxruntime | pass (0.01) | Python, C, C++, C#, Java, JavaScript, Objective-C | MIT |" in lines
    assert any(line.startswith("Columns marked *stated* are not measured") and "microsoft/onnxruntime" in line
               for line in lines)
