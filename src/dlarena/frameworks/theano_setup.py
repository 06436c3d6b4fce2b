"""What the three Theano-based modules (theano, lasagne, keras2-theano) share: configuring Theano
before it is imported, checking that it can compile, Lasagne 0.1's removed-module shim, and the
record of Theano's configuration for the parity record.

Theano reads its configuration once, at import, from ``THEANO_FLAGS``: so ``configure`` must run
before the first ``import theano`` in the process (the Backend's ``__init__`` calls it; the worker
imports no framework before that).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import types
from typing import Any

from dlarena.frameworks.base import Unavailable, Unsupported

FLAGS_VARIABLE = "THEANO_FLAGS"
# The worker's cold-cell cache folder (worker.PRIVATE_CACHE_VARIABLE, repeated here so that this
# module imports nothing of the worker's): Theano's compile directory goes inside it.
PRIVATE_CACHE_VARIABLE = "DLARENA_COMPILE_CACHE_DIR"
CACHE_SUBFOLDER = "theano"

# theano.grad and Theano's graph optimizer walk the graph recursively, one frame per op: ResNet-50's
# small twin (about 200 ops deep, forward and backward) exceeded Python's default limit of 1000 in
# theano.grad (RecursionError, measured). Theano's FAQ answers that error with a higher limit.
RECURSION_LIMIT = 20000

_configured: dict[str, Any] | None = None
# What the parity record says of the compiled-module cache keys (_stable_cache_keys).
STABLE_CACHE_KEYS = "stable across processes (empty __props__ versioned; COp source SHA-256)"


def _flags(text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    return {key.strip(): value.strip() for key, value in (pair if len(pair) == 2 else (pair[0], "")
                                                          for pair in pairs)}


def configure(threads: int) -> dict[str, Any]:
    """Set ``THEANO_FLAGS`` for this process before ``import theano``; returns what was set.

    * The environment's flags stay (``blas.ldflags=,floatX=float32``: environments/__init__.py),
      except an empty ``blas.ldflags``: where SciPy's bundled OpenBLAS is there (``_blas_ldflags``),
      Theano's gemm/gemv ops link it, as Theano's documentation recommends, instead of calling
      NumPy's BLAS through the NumPy C API (measured on fcn5-small at 1 thread: a train step 1.6-2 ms
      instead of 14-20 ms; the same numbers in `dlarena verify`). Without it the empty flags remain.
    * ``base_compiledir``: in a cold cell, inside the worker's private cache folder, so that no module
      compiled by an earlier process is found; otherwise Theano's default ``~/.theano``, shared.
    * ``openmp=False``: Theano's OpenMP loops (CorrMM's loop over the batch, large elementwise ops)
      call BLAS from their threads, and without BLAS link flags Theano's BLAS is its NumPy-C-API
      fallback, which needs the GIL: with ``openmp`` on (Theano's default when OMP_NUM_THREADS > 1)
      the first convolution ends in "Fatal Python error: PyEval_SaveThread: the function must be
      called with the GIL held" (measured on karmanov-cnn-small at 2 threads). So Theano's own loops
      run in one thread, and ``threads`` reaches Theano through OpenBLAS, which does its matrix
      products (``OPENBLAS_NUM_THREADS``, set by the worker, read by SciPy's OpenBLAS and NumPy's):
      at 1 thread a Theano process has exactly one busy thread (measured: frameworks-install facts).
      With OpenMP off, Theano's compiled ops run in the calling thread (``flush_denormals`` relies
      on it). OpenMP stays off with BLAS linked too: one setting for every Theano cell.
    * Theano's compiled-module cache keys are made stable across processes (``_stable_cache_keys``),
      so that a warm compile directory is found again (fcn5-small's first train step with a warm
      directory: 11-15 s before, 2.7 s after, measured).

    Calling it again in the same process (a verify worker checks several networks) changes nothing.
    """
    global _configured
    if _configured is not None:
        return _configured
    if "theano" in sys.modules:  # too late to change anything: say what Theano runs with
        _configured = {"flags": os.environ.get(FLAGS_VARIABLE, ""), "late": True, "cache_keys": _stable_cache_keys()}
        return _configured
    flags = _flags(os.environ.get(FLAGS_VARIABLE, ""))
    added: dict[str, str] = {"openmp": "False"}
    blas, blas_source = _blas_ldflags()
    if blas and not flags.get("blas.ldflags"):  # link flags the environment gave stay as they are
        added["blas.ldflags"] = blas
    private = os.environ.get(PRIVATE_CACHE_VARIABLE)
    if private:
        added["base_compiledir"] = os.path.join(private, CACHE_SUBFOLDER)
    flags.update(added)
    text = ",".join(f"{key}={value}" for key, value in flags.items())
    os.environ[FLAGS_VARIABLE] = text
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
    _configured = {"flags": text, "added": added, "threads": threads, "compile_cache": "cold" if private else "shared",
                   "scan": _scan_loop(), "blas": blas_source, "cache_keys": _stable_cache_keys()}
    return _configured


def _stable_cache_keys() -> str:
    """Let Theano find its compiled modules again in a later process; only cache keys change.

    Two defects of Theano 1.0.5 on Python 3 made a warm compile directory useless for most ops
    (measured on fcn5-small: a warm first train step still compiled 4 modules, 11-15 s):

    * ``CLinker.cmodule_key_`` adds each op's ``__props__`` to the key's version list and treats
      any empty entry as "unversioned" (compiled anew in every process, never stored): so every op
      whose ``__props__`` is ``()`` (Dot22, the fused softmax cross-entropy and its gradient, ...)
      was recompiled in each process although its C code is versioned. ``_versioned`` recomputes
      the same version list with ``("__props__", *props)`` in place of the props tuple and keeps
      the key unversioned only where an op or type really is (an empty ``c_code_cache_version``).
    * ``COp.c_code_cache_version`` (the ops whose C code lives in files: DimShuffle on the CPU) puts
    ``hash(tuple(source texts))`` in the key, and Python 3 salts string hashes per process
    (PYTHONHASHSEED), so the key differs in every process and the module is compiled again each
    time, even with a warm compile directory (measured: DimShuffle recompiled in every fcn5-small
    run, about 4 s each). A SHA-256 of the same texts keeps what the key means (it changes when the
    C code does) and makes it reproducible. Only the cache key changes, never the compiled code.
    Imports Theano, so it runs after ``THEANO_FLAGS`` is set."""
    import hashlib

    from theano.gof import cc, op

    if getattr(op.COp.c_code_cache_version, "dlarena_stable", False):
        return STABLE_CACHE_KEYS
    key_of = cc.CLinker.cmodule_key_

    def cmodule_key_(self: Any, fgraph: Any, *args: Any, **kwargs: Any) -> Any:
        key = key_of(self, fgraph, *args, **kwargs)
        if key is None or key[0]:
            return key
        version: list[Any] = []
        for node in self.schedule(fgraph):  # the order cmodule_key_ walks, with the same entries
            if hasattr(node.op, "c_code_cache_version_apply"):
                version.append(node.op.c_code_cache_version_apply(node))
            if hasattr(node.op, "__props__"):
                version.append(("__props__", *node.op.__props__))
            version += [variable.type.c_code_cache_version() for variable in node.inputs + node.outputs]
        return (tuple(version), key[1]) if all(version) else key

    def c_code_cache_version(self: Any) -> tuple[Any, ...]:
        digest = hashlib.sha256("\0".join(self.func_codes).encode("utf-8")).hexdigest()
        version: tuple[Any, ...] = (int(digest[:16], 16),)
        if hasattr(self, "params_type"):
            version += (self.params_type.c_code_cache_version(),)
        return version

    c_code_cache_version.dlarena_stable = True  # type: ignore[attr-defined]
    op.COp.c_code_cache_version = c_code_cache_version
    cc.CLinker.cmodule_key_ = cmodule_key_
    return STABLE_CACHE_KEYS


# The BLAS that Theano's gemm/gemv ops link against. Without link flags Theano calls NumPy's BLAS
# through the NumPy C API; NumPy 1.23's wheel bundles an OpenBLAS with 64-bit integers and
# suffixed symbols (sgemm_64_), which Theano's C code cannot call, but SciPy's wheel bundles an
# OpenBLAS with the standard symbols (sgemm_), which Theano's documentation recommends linking.
_SCIPY_LIBS = "scipy.libs"
_OPENBLAS_PREFIX = "libopenblas"
_BLAS_SYMBOL = "sgemm_"


def _blas_ldflags() -> tuple[str | None, str]:
    """Link flags for SciPy's bundled OpenBLAS, found at run time (None where it is not there).

    ``-l:FILE`` names the versioned file as it is; Theano turns ``-LDIR`` into an rpath, so the
    compiled modules find the library wherever the environment is. No commas: THEANO_FLAGS
    separates its settings with them."""
    import ctypes
    import importlib.util

    spec = importlib.util.find_spec("scipy")
    if spec is None or spec.origin is None:
        return None, "NumPy's BLAS through the NumPy C API (no SciPy, so no OpenBLAS to link)"
    folder = os.path.join(os.path.dirname(os.path.dirname(spec.origin)), _SCIPY_LIBS)
    names = sorted(name for name in (os.listdir(folder) if os.path.isdir(folder) else ())
                   if name.startswith(_OPENBLAS_PREFIX) and ".so" in name)
    if not names:
        return None, f"NumPy's BLAS through the NumPy C API (no OpenBLAS in {folder})"
    try:
        # SciPy's LAPACK wrappers load the library with its libgfortran (no rpath of its own to find
        # it); Theano imports SciPy anyway (theano.tensor.slinalg), so this adds nothing to the process.
        importlib.import_module("scipy.linalg")

        if not hasattr(ctypes.CDLL(os.path.join(folder, names[0])), _BLAS_SYMBOL):
            return None, f"NumPy's BLAS through the NumPy C API ({names[0]} has no {_BLAS_SYMBOL})"
    except (ImportError, OSError) as error:
        return None, f"NumPy's BLAS through the NumPy C API ({names[0]} does not load: {error})"
    return f"-L{folder} -l:{names[0]}", f"SciPy's OpenBLAS {os.path.join(folder, names[0])}"


# Theano's scan runs its time loop in C from a Cython-generated file shipped with Theano 1.0.5
# (scan_module/c_code/scan_perform.c), compiled on first use. That file includes "longintrepr.h",
# which Python 3.11 moved to cpython/: the compile fails ("fatal error: longintrepr.h: No such file
# or directory") and Theano raises instead of falling back. Theano's own fallback, taken whenever
# that module cannot be imported, is the same loop in Python (Scan.execute) calling the compiled
# inner function once per step; a None in sys.modules makes the import fail, so scan takes it.
_SCAN_EXTENSION = "theano.scan_module.scan_perform_ext"
_SCAN_C_LOOP_PYTHON = (3, 11)  # first Python without a top-level longintrepr.h


def _scan_loop() -> str:
    if sys.version_info >= _SCAN_C_LOOP_PYTHON:
        sys.modules[_SCAN_EXTENSION] = None  # type: ignore[assignment]
        return "python loop (Scan.execute): Theano's Cython loop does not compile on Python 3.11+"
    return "cython loop (scan_perform)"


def require_compiler() -> None:
    """Theano compiles every op it runs to C (without a compiler even conv2d fails): say what is missing."""
    compiler = shutil.which("g++")
    if compiler is None:
        raise Unavailable("Theano compiles its ops with g++, and no g++ is on PATH (install g++)")
    include = sysconfig.get_paths().get("include", "")
    if not os.path.exists(os.path.join(include, "Python.h")):
        raise Unavailable(f"Theano compiles its ops against Python's headers, and {include}/Python.h "
                          "is missing (install the Python development headers)")


def install_downsample_shim() -> None:
    """Register ``theano.tensor.signal.downsample`` for Lasagne 0.1.

    Lasagne 0.1 (the last release, 2015) does ``from theano.tensor.signal import downsample`` and
    calls ``downsample.max_pool_2d``; Theano 0.9 renamed that module to ``pool`` (``pool_2d``, the
    same op with the same ``ds``/``ignore_border``/``st``/``padding``/``mode`` arguments, deprecated
    names still accepted) and Theano 1.0 removed the old name. The shim is that module under its old
    name, so Lasagne's own pooling code runs unchanged on Theano 1.0."""
    if "theano.tensor.signal.downsample" in sys.modules:
        return
    import theano.tensor.signal
    from theano.tensor.signal import pool

    shim = types.ModuleType("theano.tensor.signal.downsample")
    shim.max_pool_2d = pool.pool_2d  # type: ignore[attr-defined]
    shim.__doc__ = "Lasagne 0.1's name for theano.tensor.signal.pool (registered by dlarena)"
    sys.modules[shim.__name__] = shim
    theano.tensor.signal.downsample = shim


# x86's MXCSR register (Intel SDM vol. 1, 10.2.3): bit 15 flush-to-zero (FTZ), bit 6
# denormals-are-zero (DAZ), the two bits torch.set_flush_denormal sets. glibc's x86-64 fenv_t
# (<bits/fenv.h>: the x87 environment, 28 bytes, then ``unsigned int __mxcsr``) holds it at byte 28.
MXCSR_FTZ, MXCSR_DAZ = 1 << 15, 1 << 6
FENV_MXCSR_OFFSET, FENV_SIZE = 28, 32
_X86_64 = ("x86_64", "AMD64")


def flush_denormals() -> str:
    """Flush subnormal numbers to zero in the calling thread: set FTZ and DAZ in its MXCSR.

    Theano has no switch of its own, but it computes on the CPU only in the calling thread: its
    compiled ops run in the thread that calls the function (``configure`` turns Theano's OpenMP
    off), and its matrix products are OpenBLAS's, which at one thread runs in the calling thread
    too. So setting the CPU's flush mode in that thread is what flushing means for Theano, as it is
    for torch.set_flush_denormal. Where OpenBLAS has worker threads (more than one thread), they
    may keep their own mode (measured here at 2 threads: the probe flushed all outputs); the cell's
    probe (dlarena_runner/denormals.py, a product by Theano's own compiled function) measures what the
    steps ran with and refuses a flush cell that came out "mixed".
    glibc's ``fegetenv``/``fesetenv`` through ctypes read and write the register: no compiler."""
    import ctypes
    import ctypes.util
    import platform

    if platform.machine() not in _X86_64:
        raise Unsupported(f"flushing subnormals sets x86's MXCSR, and this CPU is {platform.machine()}")
    name = ctypes.util.find_library("m")
    if name is None:
        raise Unsupported("flushing subnormals calls libm's fegetenv/fesetenv, and no libm was found")
    libm = ctypes.CDLL(name)
    environment = ctypes.create_string_buffer(FENV_SIZE)
    if libm.fegetenv(environment) != 0:
        raise Unsupported("libm's fegetenv failed, so the flush-to-zero mode cannot be set")
    mxcsr = ctypes.c_uint32.from_buffer(environment, FENV_MXCSR_OFFSET)
    mxcsr.value |= MXCSR_FTZ | MXCSR_DAZ
    if libm.fesetenv(environment) != 0:
        raise Unsupported("libm's fesetenv failed, so the flush-to-zero mode cannot be set")
    return "MXCSR FTZ+DAZ in the calling thread (fesetenv), where Theano computes"


def config_record() -> dict[str, Any]:
    """Theano's configuration as it runs (read back from ``theano.config``), for the parity record."""
    import theano

    config = theano.config
    return {
        "theano_floatX": config.floatX,
        "theano_openmp": bool(config.openmp),
        "theano_blas_ldflags": config.blas.ldflags,
        "theano_mode": str(config.mode),
        "theano_linker": str(config.linker),
        "theano_cxx": config.cxx,
        "theano_compiledir": config.compiledir,
        "theano_flags": (_configured or {}).get("flags", os.environ.get(FLAGS_VARIABLE, "")),
        "theano_blas": (_configured or {}).get("blas", ""),
        "theano_cache_keys": (_configured or {}).get("cache_keys", ""),
    }


def blas_threads() -> tuple[int | None, str]:
    """The thread count of the BLAS that Theano's dot products run on (SciPy's OpenBLAS where
    ``configure`` linked it, else NumPy's), read back by threadpoolctl where it is installed (the
    largest over the OpenBLAS libraries loaded); else the variable the worker set."""
    try:
        from threadpoolctl import threadpool_info  # type: ignore[import-untyped]
    except ImportError:
        value = os.environ.get("OPENBLAS_NUM_THREADS")
        return (int(value) if value and value.isdigit() else None), "OPENBLAS_NUM_THREADS"
    pools = [pool for pool in threadpool_info() if pool.get("internal_api") == "openblas"]
    if not pools:
        return None, "threadpoolctl (no OpenBLAS loaded)"
    return max(int(pool["num_threads"]) for pool in pools), "threadpoolctl openblas num_threads"


def theano_version() -> str:
    import theano

    return str(theano.__version__)


__all__ = ["blas_threads", "config_record", "configure", "flush_denormals", "install_downsample_shim",
           "require_compiler", "theano_version"]
