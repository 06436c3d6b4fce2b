"""Subnormal numbers: set a cell's mode, and measure whether the framework flushed them to zero.

Flush-to-zero is a per-thread CPU state (FTZ/DAZ in the MXCSR register on x86), which a framework
may set in some of its threads and not others, so it cannot be read from a setting: the worker asks
the framework for a matrix product of its own whose every exact output is subnormal, large enough
to be split over the process's threads, and counts the outputs that came back zero. All of them:
"flush"; none: "keep"; some: "mixed" (some threads flush, others not). On a GPU it is the device's
behaviour. Both workers run it (Python 3.6; NumPy imported where used). Each framework module
supplies only its two differences, on its ``Backend`` (or, on an old interpreter, as functions of
its module):

- ``denormal_product(a, b, device) -> np.ndarray``: ``a @ b`` by the framework's own ops on the
  cell's device, the way its steps run (graph, jit), as NumPy;
- optionally ``flush_denormals() -> str | None``: turn flush-to-zero on and say how (raise
  ``Unsupported`` where the machine lacks it); None, or no such method: the framework has no switch,
  and in ``flush`` mode its probe must show that it flushes already (TensorFlow, JAX), or the cell
  is ``unsupported``.
"""

from typing import Any, Dict, Optional, Tuple

from dlarena_runner.errors import Unsupported

# The probe: (ROWS x INNER) @ (INNER x COLUMNS) of LEFT and RIGHT. Each product LEFT * RIGHT = 1e-41
# and each output INNER * 1e-41 = 2.56e-39 lie below float32's smallest normal number (1.18e-38), and
# both inputs are normal, so flush-to-zero (not denormals-are-zero) decides: with it every output is
# 0. At 512 x 256 x 512 (67 million multiply-adds) both threads of a 2-thread process did part of
# the work in torch (MKL) and NumPy (OpenBLAS), measured here by each thread's CPU time, so a thread
# that does not flush shows as "mixed"; the product takes milliseconds, even on subnormals.
PROBE_ROWS, PROBE_INNER, PROBE_COLUMNS = 512, 256, 512
PROBE_LEFT, PROBE_RIGHT = 1e-20, 1e-21
PROBE_DESCRIPTION = (f"{PROBE_ROWS}x{PROBE_INNER} @ {PROBE_INNER}x{PROBE_COLUMNS} float32 of {PROBE_LEFT:g} and "
                     f"{PROBE_RIGHT:g} (exact outputs {PROBE_INNER * PROBE_LEFT * PROBE_RIGHT:.3g}, subnormal)")
MEASURED_MODES = ("flush", "keep", "mixed")


def probe_inputs() -> Tuple[Any, Any]:
    """The probe's two float32 matrices."""
    import numpy as np

    return (np.full((PROBE_ROWS, PROBE_INNER), PROBE_LEFT, dtype=np.float32),
            np.full((PROBE_INNER, PROBE_COLUMNS), PROBE_RIGHT, dtype=np.float32))


def classify(product: Any) -> Dict[str, Any]:
    """What a product of the probe's inputs says: the mode, and how many of its outputs were zero."""
    import numpy as np

    values = np.asarray(product)
    if values.shape != (PROBE_ROWS, PROBE_COLUMNS):
        raise ValueError(f"the subnormal probe's product has shape {values.shape}, not {(PROBE_ROWS, PROBE_COLUMNS)}")
    flushed = int(np.count_nonzero(values == 0))
    mode = "flush" if flushed == values.size else "keep" if flushed == 0 else "mixed"
    return {"measured": mode, "flushed_outputs": flushed, "outputs": int(values.size)}


# glibc's fenv_t on x86-64 (bits/fenv.h): the x87 environment (28 bytes) followed by SSE's MXCSR (a
# 32-bit word at byte 28). In MXCSR, bit 15 is flush-to-zero and bit 6 denormals-are-zero (Intel SDM
# vol. 1, 10.2.3).
_FENV_BYTES = 32
_MXCSR_OFFSET = 28
_MXCSR_FLUSH_BITS = (1 << 15) | (1 << 6)


def flush_calling_thread() -> str:
    """Flush-to-zero and denormals-are-zero in the calling thread's MXCSR, through glibc's fegetenv
    and fesetenv.

    A switch for frameworks that compute on the CPU in the threads of the process and have none of
    their own (Theano, Chainer, MXNet's NaiveEngine): threads started later inherit the state (POSIX:
    a new thread takes its creator's floating-point environment), threads already running do not,
    which the probe measures ("mixed"), so a cell is never called flushed when it was not."""
    import ctypes
    import ctypes.util
    import platform

    if platform.machine() != "x86_64":
        raise Unsupported(f"flush-to-zero through the MXCSR is an x86-64 feature; this machine is {platform.machine()}")
    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        environment = ctypes.create_string_buffer(_FENV_BYTES)
        if libm.fegetenv(environment) != 0:
            raise OSError("fegetenv failed")
        mxcsr = ctypes.c_uint32.from_buffer(environment, _MXCSR_OFFSET)
        mxcsr.value |= _MXCSR_FLUSH_BITS
        if libm.fesetenv(environment) != 0:
            raise OSError("fesetenv failed")
    except (OSError, AttributeError) as error:
        raise Unsupported(f"the C library could not turn flush-to-zero on: {error}") from None
    return "MXCSR flush-to-zero and denormals-are-zero set in the worker's thread (glibc fesetenv)"


def apply(backend: Any, setting: str) -> Dict[str, Any]:
    """Put the framework in the cell's mode, after it is loaded and before anything is built.

    Returns the start of the result's record: the setting, and the switch turned on (None: none)."""
    switch = getattr(backend, "flush_denormals", None)
    turned: Optional[str] = switch() if setting == "flush" and switch is not None else None
    return {"setting": setting, "switch": turned}


def probe(backend: Any, device: str, applied: Dict[str, Any]) -> Dict[str, Any]:
    """Measure the mode the framework computed in (``applied``: what ``apply`` returned), and hold a
    ``flush`` cell to it.

    Run after the cell's steps, so that it sees the threads as the steps left them and takes no
    one-off cost (a thread pool's start, a runtime's first op) away from the first step.
    """
    a, b = probe_inputs()
    record = dict(applied, probe=PROBE_DESCRIPTION)
    record.update(classify(backend.denormal_product(a, b, device)))
    if record["setting"] == "flush" and record["measured"] != "flush":
        how = f"with {record['switch']}" if record["switch"] else "it has no switch to do so"
        raise Unsupported(
            f"{backend.name} cannot flush subnormal numbers to zero on {device}: {how}, its own product still kept "
            f"{record['outputs'] - record['flushed_outputs']} of {record['outputs']} subnormal outputs"
        )
    return record
