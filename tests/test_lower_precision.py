"""Every framework that declares bfloat16 passes `dlarena verify --precision bfloat16` on a transformer
and an LSTM: its logits and loss between the floor and the ceiling of bfloat16 rounding, its matrix
products read back as bfloat16, its gradients within bfloat16's tolerance of torch's float64 ones.

CI verifies TensorFlow (its own casts and layer norm in float32) and Keras on JAX (Keras' dtype
policies); torch and JAX are checked in-process by their backend tests; `make test-all` verifies every
framework that declares bfloat16.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Cli
from dlarena.frameworks.registry import FRAMEWORKS

# A transformer (attention, layer norm, GELU, the tied output) and a recurrent network.
NETWORKS = ("gpt2-124m-small", "lstm32-small")
IN_CI = ("tensorflow", "keras-jax")
DECLARING = [name for name, info in FRAMEWORKS.items() if "bfloat16" in info.precisions and name != "torch"]


@pytest.mark.parametrize("framework", [
    pytest.param(name, marks=[] if name in IN_CI else [pytest.mark.exhaustive]) for name in DECLARING])
def test_bfloat16_verifies_against_the_oracle(cli: Cli, tmp_path: Path, framework: str) -> None:
    if not FRAMEWORKS[framework].is_installed():
        pytest.skip(f"{framework} is not installed")
    result = cli("verify", "--frameworks", f"torch,{framework}", "--workloads", ",".join(NETWORKS),
                 "--precision", "bfloat16", "--quiet", "--no-wait", "--db", str(tmp_path / "verify.db"), timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for network in NETWORKS:
        row = next(line for line in result.stdout.splitlines() if line.startswith(f"| {network} | {framework} |"))
        assert "| ok |" in row, row
