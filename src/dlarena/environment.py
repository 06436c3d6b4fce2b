"""A snapshot of the machine and software a run measured on, read without importing a framework."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import dlarena
from dlarena.frameworks.registry import FRAMEWORKS


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The CPU's instructions for bfloat16 and float16 arithmetic (the flags /proc/cpuinfo names): without
# them a framework's bfloat16 runs on converted float32, so it may well be slower than float32.
LOW_PRECISION_FLAGS = ("avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16", "amx_tile")


def _low_precision_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in LOW_PRECISION_FLAGS if flag in present]
    except OSError:
        pass
    return []


def _memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _numpy_blas() -> str:
    """The BLAS NumPy was built against (frameworks report their own in each result's parity)."""
    import numpy as np

    try:
        config: Any = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except (TypeError, KeyError):  # NumPy < 1.25 has no dict mode
        return "unknown"


def code_version() -> str:
    """dlarena's version plus the git commit it runs from, when it runs from a checkout."""
    version = dlarena.__version__
    source = Path(dlarena.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--", "."],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{commit}{'.dirty' if dirty else ''}"


def framework_versions() -> dict[str, str]:
    """Every framework's distributions and versions; a managed environment's under its name (its torch
    1.10.2, which carries Caffe2, is not .venv's torch)."""
    versions: dict[str, str] = {}
    for info in FRAMEWORKS.values():
        for name, version in info.versions().items():
            own = info.environment is None or name.startswith("environment ")
            versions[name if own else f"{name} ({info.environment})"] = version
    return versions


def snapshot() -> dict[str, Any]:
    import numpy as np

    uname = platform.uname()
    return {
        "cpu_model": _cpu_model(),
        "cpu_low_precision": _low_precision_flags(),
        "cores": os.cpu_count() or 0,
        "cores_available": len(os.sched_getaffinity(0)),
        "memory_bytes": _memory_bytes(),
        "os": f"{uname.system} {uname.release}",
        "platform": platform.platform(),
        "machine": uname.machine,
        "hostname": uname.node,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": _numpy_blas(),
        "frameworks": framework_versions(),
        "dlarena": code_version(),
    }


def fingerprint(env: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:16]
