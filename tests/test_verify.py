"""`dlarena verify` end to end with the test-only fault frameworks: verdicts, storage, invalid timings,
one worker per framework and precision, the float32/float64 judgement, the machine lock, and verdicts
seen by runs in other databases."""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import Cli
from dlarena.orchestrate import verify as verification
from dlarena.orchestrate.lock import machine_lock
from dlarena.orchestrate.verify import (
    FLOAT32_KINK_MARGIN,
    FORWARD_TOLERANCE,
    GRADIENT32_TOLERANCE,
    GRADIENT64_TOLERANCE,
    PairCheck,
    _compare_gradients,
    _judge_network,
    _oracle,
    _Outcome,
    framework_bugs,
    verify,
    workload_names,
)
from dlarena.spec import reference
from dlarena.spec.catalogue import CATALOGUE, get_workload
from dlarena.spec.weights import canonical_batch, canonical_weights, parameter_specs
from dlarena.store.database import Store


def test_canonical_weights_cover_every_parameter_exactly_once() -> None:
    for workload in CATALOGUE.values():
        specs = parameter_specs(workload.network)
        assert sum(math.prod(spec.shape) for spec in specs) == workload.params, workload.name
        assert len({spec.name for spec in specs}) == len(specs)


def test_canonical_weights_and_batches_are_deterministic() -> None:
    network = CATALOGUE["karmanov-gru-small"].network
    first, second = canonical_weights(network, 3), canonical_weights(network, 3)
    assert all((first[name] == second[name]).all() for name in first)
    inputs, labels = canonical_batch(network, 4, 3)
    assert inputs.dtype.kind == "i" and inputs.max() < network.vocab and labels.max() < network.classes
    logits = reference.forward(network, first, inputs)
    assert logits.shape == (4, network.classes) and logits.dtype.name == "float64"


def test_small_names_map_to_published_and_back() -> None:
    assert workload_names(["fcn5", "lstm32-small"], full=False) == ["fcn5-small", "lstm32-small"]
    assert workload_names(["fcn5-small", "lstm32"], full=True) == ["fcn5", "lstm32"]


def test_branch_margin_is_the_nearest_relu_input_to_zero() -> None:
    """digits-mlp: Flatten, Dense, ReLU, Dense; its one kink is the hidden layer's pre-activation."""
    network = get_workload("digits-mlp").network
    weights = canonical_weights(network, 0)
    inputs, _ = canonical_batch(network, 4, 0)
    hidden = inputs.reshape(4, -1).astype(np.float64) @ weights["1.kernel"] + weights["1.bias"]
    margin = reference.branch_margin(network, weights, inputs)
    assert margin.where == "2 relu"
    assert margin.margin == pytest.approx(np.abs(hidden).min() / np.abs(hidden).max(), rel=1e-12)
    assert math.isinf(reference.branch_margin(get_workload("fcn5-small").network,
                                              canonical_weights(get_workload("fcn5-small").network, 0),
                                              canonical_batch(get_workload("fcn5-small").network, 2, 0)[0]).margin)


def test_wrong_numbers_are_a_mismatch_and_faults_keep_their_status() -> None:
    checks = {c.framework: c for c in verify(
        ["fault-none", "fault-wrong", "fault-raise", "fault-unsupported"], ["mnist-cnn-small"], 2, threads=1)}
    ok, wrong = checks["fault-none"], checks["fault-wrong"]
    assert ok.status == "ok" and ok.forward_error is not None and ok.forward_error < FORWARD_TOLERANCE
    assert ok.gradient_reference is not None and ok.gradient_reference.startswith("n/a")
    assert wrong.status == "mismatch" and "logits differ from the oracle" in wrong.message
    assert wrong.forward_error is not None and 0.005 < wrong.forward_error < 0.02
    assert checks["fault-raise"].status == "failed" and "injected failure" in checks["fault-raise"].message
    assert checks["fault-unsupported"].status == "unsupported"


THREE = ["mnist-cnn-small", "digits-mlp", "digits-cnn"]


def _float32(lines: list[str]) -> list[str]:
    return [line for line in lines if " float32: " in line]


def test_one_worker_checks_every_network_of_a_framework_and_precision() -> None:
    lines: list[str] = []
    checks = verify(["fault-none"], THREE, 2, threads=1, on_progress=lines.append)
    assert [c.status for c in checks] == ["ok", "ok", "ok"], [c.message for c in checks]
    # fault-none trains, so it has a float64 pass too (where it says float64 is unsupported).
    assert sorted(line.split(" in ")[0] for line in lines) == [
        "fault-none float32: 3 of 3 networks checked", "fault-none float64: 3 of 3 networks checked"], lines


def test_a_network_the_registry_says_a_framework_cannot_build_starts_no_worker() -> None:
    lines: list[str] = []
    checks = verify(["fault-none"], ["gpt2-124m-small", "fcn5-small"], 2, threads=1, on_progress=lines.append)
    assert [(c.workload, c.status) for c in checks] == [("gpt2-124m-small", "unsupported"), ("fcn5-small", "ok")]
    assert "does not build the transformer layers" in checks[0].message
    assert all(" 1 of 1 networks checked" in line for line in lines), lines  # the worker had fcn5-small alone


def test_workers_side_by_side_give_the_same_verdicts() -> None:
    frameworks = ["fault-none", "fault-wrong", "fault-raise"]
    one = verify(frameworks, THREE, 2, threads=1)
    two = verify(frameworks, THREE, 2, threads=1, jobs=2)
    assert [(c.framework, c.workload, c.status) for c in two] == [(c.framework, c.workload, c.status) for c in one]
    assert {c.status for c in two} == {"ok", "mismatch", "failed"}


def test_a_network_that_fails_leaves_the_others_of_its_worker_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLARENA_FAULT_ONLY", "digits-mlp")
    lines: list[str] = []
    checks = {c.workload: c for c in verify(["fault-raise"], THREE, 2, threads=1, on_progress=lines.append)}
    assert checks["digits-mlp"].status == "failed" and "injected failure" in checks["digits-mlp"].message
    assert checks["mnist-cnn-small"].status == "ok" and checks["digits-cnn"].status == "ok"
    assert len(_float32(lines)) == 1, lines


def test_a_network_that_kills_its_worker_loses_no_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """The crash is charged to the network being checked, with the worker's output; the networks
    after it get a fresh worker."""
    monkeypatch.setenv("DLARENA_FAULT_ONLY", "digits-mlp")
    lines: list[str] = []
    checks = {c.workload: c for c in verify(["fault-segfault"], THREE, 2, threads=1, on_progress=lines.append)}
    crashed = checks["digits-mlp"]
    assert crashed.status == "failed" and "SIGSEGV" in crashed.message
    assert "while checking digits-mlp" in crashed.message
    assert checks["mnist-cnn-small"].status == "ok" and checks["digits-cnn"].status == "ok"
    assert checks["digits-cnn"].forward_error is not None
    assert len(_float32(lines)) == 2 and _float32(lines)[1].startswith("fault-segfault float32: 1 of 1"), lines


def test_a_worker_that_cannot_start_marks_every_network() -> None:
    checks = verify(["fault-unavailable"], THREE, 2, threads=1)
    assert [c.status for c in checks] == ["unavailable"] * 3


# The float32/float64 judgement, on arrays written as a worker writes them: a reference framework
# with exact gradients, and a candidate whose float32 or float64 gradients are off by chosen amounts.

def _arrays(path: Path, oracle: verification._Oracle, precision: str, gradients: dict[str, np.ndarray]) -> Path:
    np.savez(path, logits=oracle.logits.astype(precision), loss=np.asarray(oracle.loss),
             **{f"grad/{name}": value.astype(precision) for name, value in gradients.items()})
    return path


def _judge(tmp_path: Path, margin: float, scale32: float, scale64: float | None) -> PairCheck:
    """The candidate's verdict on digits-mlp when its float32 gradient of one parameter is scaled by
    ``scale32`` and its float64 one by ``scale64`` (0: the float64 gradients are all zero; None: the
    candidate computes no float64, as Caffe and Caffe2 do not)."""
    oracle = dataclasses.replace(_oracle("digits-mlp", 4), margin=reference.BranchMargin(margin, "2 relu"))
    rng = np.random.default_rng(0)
    exact = {spec.name: rng.normal(size=spec.shape) for spec in parameter_specs(oracle.workload.network)}
    record = {"params": oracle.workload.params, "gradients": True, "roundtrip_differs": []}

    def outcome(name: str, precision: str, gradients: dict[str, np.ndarray]) -> _Outcome:
        path = _arrays(tmp_path / f"{name}-{precision}.npz", oracle, precision, gradients)
        return _Outcome("ok", "", record, path, "9.9")

    wrong32 = dict(exact, **{"1.bias": exact["1.bias"] * scale32})
    outcomes32 = {"reference": {"digits-mlp": outcome("reference", "float32", exact)},
                  "candidate": {"digits-mlp": outcome("candidate", "float32", wrong32)}}
    outcomes64 = {"reference": {"digits-mlp": outcome("reference", "float64", exact)}}
    if scale64 is None:
        outcomes64["candidate"] = {"digits-mlp": _Outcome("unsupported", "it computes in float32 only")}
    else:
        wrong64 = {name: value * scale64 for name, value in exact.items()} if scale64 == 0 else dict(
            exact, **{"1.bias": exact["1.bias"] * scale64})
        outcomes64["candidate"] = {"digits-mlp": outcome("candidate", "float64", wrong64)}
    first, candidate = _judge_network(oracle, ["reference", "candidate"], 4, outcomes32, outcomes64)
    assert first.status == "ok" and first.gradient_reference == (
        "itself (the reference)" if scale64 is not None else "n/a: no other framework to compare with")
    return candidate


WELL_DEFINED = 10 * FLOAT32_KINK_MARGIN
NOT_DEFINED = FLOAT32_KINK_MARGIN / 10
# Far beyond either gradient tolerance, as a wrong layout (or torch 2.13's zero conv gradients) gives.
WAY_OFF = 1.5
# Between the float64 and the float32 gradient tolerances: what only the float64 check can see.
SLIGHTLY_OFF = 1 + math.sqrt(GRADIENT64_TOLERANCE * GRADIENT32_TOLERANCE)


def test_a_float64_only_bug_leaves_a_verified_float32_computation_counted(tmp_path: Path) -> None:
    check = _judge(tmp_path, WELL_DEFINED, scale32=1.0, scale64=0.0)
    assert check.status == "ok" and check.float32_gradients == "verified"
    assert check.gradient_error is not None and check.gradient_error > GRADIENT32_TOLERANCE
    assert [bug["precision"] for bug in check.framework_bugs] == ["float64"]
    assert "float64 gradient" in check.message and "float32 verified" in check.message
    lines = framework_bugs([check])
    assert len(lines) == 1 and lines[0].startswith("candidate 9.9, float64: wrong numbers on digits-mlp;")
    # Even where the float32 gradient is not defined to its tolerance, agreeing with it is agreeing.
    assert _judge(tmp_path, NOT_DEFINED, scale32=1.0, scale64=0.0).status == "ok"


def test_a_float64_defect_float32_cannot_see_is_a_mismatch(tmp_path: Path) -> None:
    check = _judge(tmp_path, WELL_DEFINED, scale32=1.0, scale64=SLIGHTLY_OFF)
    assert check.status == "mismatch" and "float64 gradient of 1.bias" in check.message
    assert check.framework_bugs == []


def test_a_wrong_float32_gradient_is_a_mismatch_where_it_is_defined(tmp_path: Path) -> None:
    check = _judge(tmp_path, WELL_DEFINED, scale32=WAY_OFF, scale64=1.0)
    assert check.status == "mismatch" and "float32 gradient of 1.bias" in check.message
    assert check.gradient32_error is not None and check.gradient32_error > GRADIENT32_TOLERANCE


def test_where_the_float32_gradient_is_not_defined_float64_decides(tmp_path: Path) -> None:
    near_kink = _judge(tmp_path, NOT_DEFINED, scale32=WAY_OFF, scale64=1.0)
    assert near_kink.status == "ok" and near_kink.float32_gradients.startswith("not defined to float32 rounding")
    both_wrong = _judge(tmp_path, NOT_DEFINED, scale32=WAY_OFF, scale64=0.0)
    assert both_wrong.status == "mismatch" and both_wrong.framework_bugs == []


def test_without_float64_nothing_decides_and_the_verdict_says_the_gradients_are_unverified(tmp_path: Path) -> None:
    near_kink = _judge(tmp_path, NOT_DEFINED, scale32=WAY_OFF, scale64=None)
    assert near_kink.float32_gradients.startswith("unverified:") and "float32 only" in near_kink.float32_gradients
    assert "unverified" in near_kink.message
    # Where the gradient is defined, float32 alone judges it, float64 or not.
    assert _judge(tmp_path, WELL_DEFINED, scale32=1.0, scale64=None).float32_gradients == "verified"
    assert _judge(tmp_path, WELL_DEFINED, scale32=WAY_OFF, scale64=None).status == "mismatch"


def test_gradients_are_compared_parameter_by_parameter(tmp_path: Path) -> None:
    """One parameter off by ten times the tolerance is named; float64 rounding noise is not."""
    rng = np.random.default_rng(0)
    reference_grads = {"grad/0.kernel": rng.normal(size=(8, 4)), "grad/0.bias": rng.normal(size=4)}
    np.savez(tmp_path / "reference.npz", **reference_grads)
    noisy = {key: value * (1 + 4 * np.finfo(np.float64).eps) for key, value in reference_grads.items()}
    np.savez(tmp_path / "noisy.npz", **noisy)
    wrong = dict(noisy, **{"grad/0.bias": reference_grads["grad/0.bias"] * (1 + 10 * GRADIENT64_TOLERANCE)})
    np.savez(tmp_path / "wrong.npz", **wrong)
    np.savez(tmp_path / "missing.npz", **{"grad/0.kernel": reference_grads["grad/0.kernel"]})
    names = ["0.kernel", "0.bias"]

    def check(arrays: str) -> PairCheck:
        result = PairCheck("a", "w", 2, "ok", gradient_reference="b")
        _compare_gradients(result, tmp_path / arrays, tmp_path / "reference.npz", names)
        return result

    assert check("noisy.npz").problems == []
    flagged = check("wrong.npz")
    assert flagged.worst_parameter == "0.bias" and len(flagged.problems) == 1
    assert flagged.gradient_error is not None and flagged.gradient_error > 5 * GRADIENT64_TOLERANCE
    assert check("missing.npz").problems == ["no gradient for 0.bias"]


def test_cli_verify_exits_non_zero_and_marks_timings_invalid(cli: Cli, tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    run = cli("run", "--frameworks", "fault-none,fault-wrong", "--workloads", "mnist-cnn-small",
              "--scenarios", "infer", "--threads", "1", "--batch-sizes", "2", "--db", db)
    assert run.returncode == 0, run.stderr
    good = cli("verify", "--frameworks", "fault-none", "--workloads", "mnist-cnn", "--db", db)
    assert good.returncode == 0, good.stderr
    assert "| mnist-cnn-small | fault-none |" in good.stdout and "fault-none float32: 1 of 1" in good.stderr
    bad = cli("verify", "--frameworks", "fault-none,fault-wrong", "--workloads", "mnist-cnn", "--db", db)
    assert bad.returncode == 1
    assert "| mismatch |" in next(line for line in bad.stdout.splitlines() if "| fault-wrong |" in line)
    assert "Traceback" not in bad.stderr
    report = cli("report", "--db", db).stdout
    assert "*invalid: mismatch*" in report and "| fault-none | " in report
    rows = {row["framework"]: row for row in json.loads(cli("export", "--format", "json", "--db", db).stdout)}
    assert rows["fault-wrong"]["verification"] == "mismatch"
    assert rows["fault-none"]["verification"] == "verified"


def _verifications(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM verifications").fetchone()[0])


def test_verify_waits_for_a_measurement_in_progress(cli: Cli, tmp_path: Path) -> None:
    """verify starts no worker while another run holds the machine's measuring lock."""
    db = tmp_path / "v.db"
    args = ["verify", "--frameworks", "fault-none", "--workloads", "digits-mlp", "--db", str(db)]
    with machine_lock(tmp_path / "measuring.db") as held:
        held.announce("20260101-000000-beef")
        refused = cli(*args, "--no-wait")
        assert refused.returncode == 2 and "is measuring on this machine" in refused.stderr, refused.stderr
        assert not db.exists()
        waiting = subprocess.Popen([sys.executable, "-m", "dlarena.cli", *args], cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert waiting.stderr is not None
        line = waiting.stderr.readline()  # the waiting line, written before it waits
        assert "waiting" in line and "20260101-000000-beef" in line, line
        assert waiting.poll() is None and not db.exists()
    _, err = waiting.communicate(timeout=600)
    assert waiting.returncode == 0, err
    assert _verifications(db) == 1


def test_verdicts_are_seen_by_runs_in_other_databases(cli: Cli, tmp_path: Path) -> None:
    """Verified in one database, the same framework, version and code are verified in every other:
    a run measured before the verification (read through the machine's record), and one measured
    after it (which also copies the verdicts into its own database)."""
    measure = ["run", "--frameworks", "fault-none", "--workloads", "digits-mlp", "--scenarios", "infer",
               "--threads", "1", "--batch-sizes", "2"]

    def verification_of(db: Path) -> str:
        rows = json.loads(cli("export", "--format", "json", "--db", str(db)).stdout)
        return str(rows[0]["verification"])

    before = tmp_path / "before.db"
    assert cli(*measure, "--db", str(before)).returncode == 0
    assert verification_of(before) == "unverified"
    verified = cli("verify", "--frameworks", "fault-none", "--workloads", "digits-mlp", "--db",
                   str(tmp_path / "verify.db"))
    assert verified.returncode == 0, verified.stderr
    assert verification_of(before) == "verified"
    after = tmp_path / "after.db"
    assert cli(*measure, "--db", str(after)).returncode == 0
    assert _verifications(after) == 1
    record = tmp_path / "verdicts" / "verifications.db"  # conftest's private record
    record.unlink()
    assert verification_of(after) == "verified" and verification_of(before) == "unverified"


def test_the_demo_verifies_what_it_times() -> None:
    """`make demo` runs `dlarena verify` before the quick suite, into the same (default) database, and
    verify's default networks are every network the quick suite times."""
    from dlarena.api import _quick_workloads
    from dlarena.plan.suite import load_suite

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    commands = [line.strip().removeprefix("$(BIN)/") for line in recipe]
    verify_at = next(i for i, line in enumerate(commands) if line.startswith("dlarena verify"))
    run_at = next(i for i, line in enumerate(commands) if line.startswith("dlarena run"))
    assert verify_at < run_at
    assert "--db" not in commands[verify_at] and "--db" not in commands[run_at]
    assert "--frameworks" not in commands[verify_at] and "--workloads" not in commands[verify_at]
    timed = {w for sweep in load_suite("quick").sweeps for w in sweep.workloads}
    assert timed <= set(workload_names(_quick_workloads(), full=False))


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie is dead for our purposes
    except OSError:
        return False


# Bounds on waits for a state, generous for a loaded machine: a test waits for the state, not the time.
STATE_WAIT_S = 300.0


def test_ctrl_c_stops_every_verify_worker(tmp_path: Path) -> None:
    """verify runs workers side by side in threads; Ctrl-C, which reaches only the main thread, takes
    every worker down with its children, and verify ends at once."""
    import os
    import signal
    import time

    pidfile = tmp_path / "children.txt"
    env = {**os.environ, "DLARENA_FAULT_PIDFILE": str(pidfile)}
    process = subprocess.Popen(
        [sys.executable, "-m", "dlarena.cli", "verify", "--frameworks", "fault-hang,fault-none", "--workloads",
         "digits-mlp", "--db", str(tmp_path / "v.db")], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + STATE_WAIT_S
    while not (pidfile.exists() and pidfile.read_text().strip()):  # the hanging checker's child runs
        assert process.poll() is None and time.monotonic() < deadline, "the hang worker never started"
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=STATE_WAIT_S)
    assert process.returncode == 130 and "interrupted" in err, err
    children = [int(pid) for pid in pidfile.read_text().split()]
    while any(_alive(pid) for pid in children):
        assert time.monotonic() < deadline, f"a worker's child outlived verify: {children}"
        time.sleep(0.1)


def test_verdicts_count_only_for_the_code_and_framework_version_checked(tmp_path: Path) -> None:
    from dlarena.store import verdicts

    store = Store.open(tmp_path / "a.db")
    record = verdicts.open_record(create=True)
    assert record is not None
    try:
        verdicts.record([store, record], PairCheck("torch", "fcn5-small", 4, "ok", framework_version="2.0").as_dict(),
                        "1.0+gabc")
        record.record_verification(PairCheck("jax", "fcn5-small", 4, "mismatch", framework_version="0.4").as_dict(),
                                   "1.0+gabc")
        assert verdicts.statuses(store, "1.0+gdef") == {}  # other code: verifies nothing
        assert verdicts.statuses(store, "1.0+gabc") == {("torch", "fcn5-small", "2.0", "float32"): "ok",
                                                       ("jax", "fcn5-small", "0.4", "float32"): "mismatch"}
        other = Store.open(tmp_path / "b.db")
        assert verdicts.copy_into(other, "1.0+gabc", ["jax"]) == 1
        assert verdicts.copy_into(other, "1.0+gabc", ["jax"]) == 0  # copied once
        assert other.verification_statuses() == {("jax", "fcn5-small", "0.4", "float32"): "mismatch"}
        other.close()
    finally:
        store.close()
        record.close()


# bfloat16: the same judgement held to bfloat16's tolerances, with a floor that logits computed in a
# higher precision cannot reach, and the dtype the framework says its products ran in.

def _judge_bfloat16(tmp_path: Path, logits_error: float, matmul_dtype: str | None) -> PairCheck:
    """A candidate's bfloat16 verdict on gpt2-124m-small (no ReLU: its gradient is defined) whose logits
    are the oracle's plus noise of ``logits_error`` times their largest magnitude."""
    oracle = _oracle("gpt2-124m-small", 2)
    exact = {spec.name: np.random.default_rng(1).normal(size=spec.shape)
             for spec in parameter_specs(oracle.workload.network)}
    noise = np.random.default_rng(2).uniform(-1, 1, size=oracle.logits.shape)
    logits = oracle.logits + logits_error * np.abs(oracle.logits).max() * noise
    record = {"params": oracle.workload.params, "gradients": True, "roundtrip_differs": [],
              **({"matmul_dtype": matmul_dtype} if matmul_dtype else {})}
    path = tmp_path / "bf16.npz"
    np.savez(path, logits=logits.astype(np.float32), loss=np.asarray(oracle.loss),
             **{f"grad/{name}": value.astype(np.float32) for name, value in exact.items()})
    reference64 = _arrays(tmp_path / "ref64.npz", oracle, "float64", exact)
    outcomes32 = {"candidate": {oracle.workload.name: _Outcome("ok", "", record, path, "9.9")}}
    outcomes64 = {"candidate": {oracle.workload.name: _Outcome("ok", "", record, reference64, "9.9")}}
    (check,) = _judge_network(oracle, ["candidate"], 2, outcomes32, outcomes64, "bfloat16")
    return check


def test_bfloat16_logits_are_held_between_a_floor_and_a_ceiling(tmp_path: Path) -> None:
    from dlarena.orchestrate.verify import BF16_FORWARD_FLOOR, BF16_FORWARD_TOLERANCE

    typical = _judge_bfloat16(tmp_path, 2 * 2.0**-8, "bfloat16")  # two roundoffs, as torch's bf16 gives
    assert typical.status == "ok" and typical.precision == "bfloat16", typical.message
    assert BF16_FORWARD_FLOOR < (typical.forward_error or 0) < BF16_FORWARD_TOLERANCE
    too_far = _judge_bfloat16(tmp_path, 4 * BF16_FORWARD_TOLERANCE, "bfloat16")  # an 8-bit float, or a bug
    assert too_far.status == "mismatch" and "bfloat16 logits differ from the oracle" in too_far.message
    too_close = _judge_bfloat16(tmp_path, 1e-7, None)  # float32 rounding: it never computed in bfloat16
    assert too_close.status == "mismatch" and "computed in a higher precision" in too_close.message


def test_bfloat16_products_run_in_another_dtype_are_a_mismatch(tmp_path: Path) -> None:
    check = _judge_bfloat16(tmp_path, 2 * 2.0**-8, "float32")
    assert check.status == "mismatch" and "matrix products ran in float32, not bfloat16" in check.message


def test_verdicts_are_kept_per_precision(tmp_path: Path) -> None:
    from dlarena.report.annotate import annotate

    store = Store.open(tmp_path / "r.db")
    for precision, status in (("float32", "ok"), ("bfloat16", "mismatch")):
        check = PairCheck("torch", "gpt2-124m-small", 4, status, framework_version="2.13.0", precision=precision)
        store.record_verification(check.as_dict(), "v1")
    statuses = store.verification_statuses()
    assert statuses == {("torch", "gpt2-124m-small", "2.13.0", "float32"): "ok",
                        ("torch", "gpt2-124m-small", "2.13.0", "bfloat16"): "mismatch"}
    rows = [{"framework": "torch", "workload": "gpt2-124m", "framework_version": "2.13.0", "precision": precision,
             "threads": 1, "cores_used": None} for precision in ("float32", "bfloat16", "mixed-bf16")]
    annotate(rows, statuses)  # the published network takes its small twin's verdict, in its own precision
    assert [row["verification"] for row in rows] == ["verified", "mismatch", "unverified"]
