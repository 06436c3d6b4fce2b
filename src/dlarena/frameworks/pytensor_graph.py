"""PyTensor 3 (Theano's successor, maintained by the PyMC project): the spec's network as one symbolic
graph, compiled by ``pytensor.function``.

The graph is symbolic_graph's, shared with the Theano module: PyTensor kept Theano's programming
model (shared variables, ``scan``, ``grad``, ``function(..., updates=...)``) and most of its tensor
names. What PyTensor changed is here: the activations and the softmax live in ``pytensor.tensor``
and ``pytensor.tensor.special`` (Theano's ``nnet`` module is gone), the dropout masks come from a shared
generator (``pytensor.tensor.random.shared_rng``, whose next state the train function stores), and
``scan`` returns its outputs alone with ``return_updates=False``. PyTensor removed Theano's 2-D
convolution (``nnet.conv2d``) and pooling (``signal.pool``) with the ``nnet`` module; its
``signal.convolve2d`` is SciPy's single-channel signal convolution, not a layer over channels, so
convolutional networks are unsupported.

Compilation: PyTensor 3's default mode compiles the graph with Numba (``mode="NUMBA"``, the numba
linker); its C linker (``"FAST_RUN"``, the C VM) is the one Theano had. The Backend's ``linker``
option chooses (``LINKER``, the default, is the one measured faster; see its comment). PyTensor is
configured before it is imported (``configure``): its compile directory (and Numba's cache inside it)
goes into the worker's private cache folder in a cold cell.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from dlarena.frameworks import kernel, symbolic_graph, theano_setup
from dlarena.frameworks.base import Parity, Unsupported
from dlarena.spec.layers import AvgPool2D, Conv2D, MaxPool2D

FLAGS_VARIABLE = "PYTENSOR_FLAGS"
# The worker's cold-cell cache folder (worker.PRIVATE_CACHE_VARIABLE, as theano_setup repeats it).
PRIVATE_CACHE_VARIABLE = theano_setup.PRIVATE_CACHE_VARIABLE
CACHE_SUBFOLDER = "pytensor"
# The compile modes of the two linkers: Numba (PyTensor 3's default) and the C VM (Theano's).
MODES = {"numba": "NUMBA", "c": "FAST_RUN"}
# Measured on this 2-core machine (busy), 1 thread, one core: fcn5-small at batch 64, a train step
# 20.7 ms with Numba against 28.8 ms with the C linker, an inference step 6.3 against 10.1 ms (the C
# linker's matrix products have no BLAS to link here: PyTensor finds none, and the wheels' OpenBLAS
# has prefixed symbols, scipy_sgemm_). Numba compiles far longer (fcn5-small's first train step
# 39 s against 3 s; lstm32-small's gradient function 474 s against 75 s, cold), which is first_step_s,
# not the step time. Numba is also PyTensor 3's own default.
LINKER = "numba"
CONVOLUTION_REMOVED = ("PyTensor 3 has no 2-D convolution or pooling over channels: Theano's nnet.conv2d and "
                       "signal.pool were removed with the nnet module")

_configured: dict[str, Any] | None = None


def configure() -> dict[str, Any]:
    """Set ``PYTENSOR_FLAGS`` for this process before ``import pytensor``; returns what was set.

    * ``base_compiledir``: in a cold cell, inside the worker's private cache folder (PyTensor's C
      modules and Numba's cache, ``<compiledir>/numba``, both live under it), so that nothing
      compiled by an earlier process is found; otherwise PyTensor's default ``~/.pytensor``.
    * ``blas__ldflags`` empty unless the environment says otherwise: there is no BLAS to link here
      (see ``LINKER``), and an empty value skips PyTensor's search and its warning at import.
    The recursion limit is raised as for Theano (theano_setup.RECURSION_LIMIT): PyTensor's grad walks
    the graph recursively too."""
    global _configured
    if _configured is not None:
        return _configured
    if "pytensor" in sys.modules:
        _configured = {"flags": os.environ.get(FLAGS_VARIABLE, ""), "late": True}
        return _configured
    flags = [item for item in os.environ.get(FLAGS_VARIABLE, "").split(",") if item.strip()]
    added: dict[str, str] = {}
    if not any(item.split("=", 1)[0].strip() == "blas__ldflags" for item in flags):
        added["blas__ldflags"] = ""
    private = os.environ.get(PRIVATE_CACHE_VARIABLE)
    if private:
        added["base_compiledir"] = os.path.join(private, CACHE_SUBFOLDER)
    text = ",".join([*flags, *(f"{key}={value}" for key, value in added.items())])
    os.environ[FLAGS_VARIABLE] = text
    sys.setrecursionlimit(max(sys.getrecursionlimit(), theano_setup.RECURSION_LIMIT))
    _configured = {"flags": text, "added": added, "compile_cache": "cold" if private else "shared"}
    return _configured


class Model(symbolic_graph.GraphModel):
    framework = "pytensor"

    def __init__(self, *args: Any, linker: str = LINKER, **options: Any) -> None:
        self.linker = linker
        super().__init__(*args, **options)

    def _library(self) -> tuple[Any, Any]:
        import pytensor
        import pytensor.tensor as pt
        from pytensor.tensor.random.variable import shared_rng

        # PyTensor 3's random API: a shared generator; each draw returns the next generator state,
        # which the next draw takes and the train function stores back (_random_updates).
        self.rng = shared_rng(seed=symbolic_graph.DROPOUT_SEED, name="dropout.rng")
        self.rng_state: Any = self.rng
        return pytensor, pt

    def _conv2d(self, layer: Conv2D, x: Any, kernel_value: Any) -> Any:
        raise Unsupported(CONVOLUTION_REMOVED)

    def _pool(self, layer: MaxPool2D | AvgPool2D, x: Any) -> Any:
        raise Unsupported(CONVOLUTION_REMOVED)

    def _relu(self, x: Any) -> Any:
        return self.T.maximum(x, self.c(0.0))

    def _sigmoid(self, x: Any) -> Any:
        return self.T.sigmoid(x)

    def _cross_entropy(self, logits: Any, labels: Any) -> Any:
        from pytensor.tensor.special import log_softmax

        log_probabilities = log_softmax(logits, axis=-1)  # type: ignore[no-untyped-call]
        return -log_probabilities[self.T.arange(logits.shape[0]), labels]

    def _dropout_mask(self, x: Any, keep: Any) -> Any:
        self.rng_state, mask = self.rng_state.binomial(n=1, p=keep, size=x.shape)
        return self.T.cast(mask, self.precision)

    def _random_updates(self) -> list[tuple[Any, Any]]:
        return [] if self.rng_state is self.rng else [(self.rng, self.rng_state)]

    def _scan(self, step: Any, **arguments: Any) -> Any:
        return self.lib.scan(step, return_updates=False, **arguments)

    def _compile(self, inputs: list[Any], outputs: Any, name: str, **arguments: Any) -> Any:
        return self.lib.function(inputs, outputs, name=name, mode=MODES[self.linker], **arguments)

    def parity(self) -> Parity:
        from pytensor.configdefaults import config

        threads, source = theano_setup.blas_threads()
        details = {
            "threads_source": source,
            "linker": self.linker,
            "mode": MODES[self.linker],
            "numba_fastmath": bool(config.numba__fastmath),
            "blas_ldflags": config.blas__ldflags,
            "compiledir": str(config.compiledir),
            "pytensor_flags": (_configured or {}).get("flags", ""),
            "compiledir_cache": (_configured or {}).get("compile_cache", ""),
            "compiled_functions": sorted(self.functions),
        }
        return Parity(threads=threads, execution=f"graph ({self.linker} linker)", details=details)


class Backend(kernel.KernelBackend):
    name = "pytensor"
    model_class = Model

    def __init__(self, threads: int, linker: str = LINKER) -> None:
        if linker not in MODES:
            raise ValueError(f"unknown PyTensor linker {linker!r}; choose one of {', '.join(MODES)}")
        super().__init__(threads, linker=linker)
        self.settings = configure()  # before PyTensor is imported
        if linker == "c":
            theano_setup.require_compiler()
        import pytensor  # noqa: F401  (imported here, after configure, so that the flags take effect)

    def version(self) -> str:
        import pytensor

        return str(pytensor.__version__)

    def flush_denormals(self) -> str:
        # As for Theano: PyTensor's compiled code (Numba's or C) runs in the calling thread, and its
        # matrix products are OpenBLAS's (through SciPy), in that thread at one thread.
        theano_setup.flush_denormals()
        return "MXCSR FTZ+DAZ in the calling thread (fesetenv), where PyTensor computes"

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        import pytensor.tensor as pt
        from pytensor.compile.maker import function

        self._device(device)
        left, right = pt.matrix("a", dtype=str(a.dtype)), pt.matrix("b", dtype=str(b.dtype))
        product = function([left, right], pt.dot(left, right),  # type: ignore[no-untyped-call]
                           mode=MODES[self.options["linker"]])
        return np.asarray(product(a, b))
