"""What a worker does to its own process before anything starts a thread pool or allocates much.

Shared by both workers (``dlarena.worker`` and ``dlarena_runner.job_worker``), so every framework,
whatever its interpreter, is measured under the same process rules. Python 3.6, stdlib only.
"""

import os
import sys
from typing import Any, Dict, List, Optional

# Variables read at import time by the thread pools of the BLAS and OpenMP runtimes that frameworks
# link against, and by TensorFlow. Setting them is necessary but not sufficient (see DEVELOPERS.md):
# each framework module also sets its own limit, and the parity record measures what was really used.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
)
# Inter-op pools run independent operations side by side. One thread is the safe default; a framework
# module that measured faster with a larger pool sets it itself (TensorFlow does), and the affinity
# below caps the cores the cell can use either way.
INTEROP_VARIABLES = ("TF_NUM_INTEROP_THREADS",)


# glibc's malloc serves a request above its mmap threshold with a fresh mmap (page faults and zeroing
# at every use) and raises that threshold as the program frees such blocks, so whether a framework's
# per-step buffers (gradients, activations: hundreds of KiB to MiBs) are mapped afresh every step
# depends on the process's allocation history. Measured here: torch fcn5-small training in fresh
# processes fell into a 1.2 ms and a 1.8 ms mode, with twice the page faults in the slow one; with
# fixed thresholds, six processes in a row ran within 3% of 1.15 ms. Setting them with mallopt (which
# also turns the dynamic adjustment off) starts every process of every framework from the same
# allocator rules. The mmap threshold is glibc's largest allowed on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX,
# 4 MiB * sizeof(long)); memory freed below the trim threshold stays with the process.
MALLOC_MMAP_THRESHOLD_BYTES = 32 << 20
MALLOC_TRIM_THRESHOLD_BYTES = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def fix_malloc_thresholds() -> Optional[Dict[str, int]]:
    """Fix glibc malloc's mmap and trim thresholds for this process; None where there is no glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to fix, and nothing claimed
        return None
    if mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES) != 1:
        return None
    if mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES) != 1:
        return None
    return {"mmap_threshold_bytes": MALLOC_MMAP_THRESHOLD_BYTES, "trim_threshold_bytes": MALLOC_TRIM_THRESHOLD_BYTES}


# prctl(2): ask the kernel to send us a signal when the process that started us dies.
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A worker whose orchestrator was killed must not go on measuring, unseen, on a shared machine."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return


def limit_threads(threads: int, first: int = 0) -> List[int]:
    """Pin this process to ``threads`` cores and tell the runtimes to use that many threads: the allowed
    cores from the ``first``-th on (a data-parallel replica's own, past those of the replicas before it)."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    for name in INTEROP_VARIABLES:
        os.environ[name] = "1"
    allowed = sorted(os.sched_getaffinity(0))
    cores = allowed[first:first + threads]
    os.sched_setaffinity(0, cores)
    return cores


# Set by the launcher for every worker in a managed environment (dlarena.environments.manage): its
# identity, stored with each result.
IDENTITY_VARIABLE = "DLARENA_ENVIRONMENT"


def environment_record() -> Dict[str, Any]:
    """The interpreter and NumPy the worker ran on, and the managed environment when it ran in one."""
    import platform

    import numpy as np

    return {"python": platform.python_version(), "numpy": np.__version__, "executable": sys.executable,
            "managed": os.environ.get(IDENTITY_VARIABLE)}
