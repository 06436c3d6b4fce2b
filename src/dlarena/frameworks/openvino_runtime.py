"""OpenVINO (``openvino``): the spec's ONNX graph (onnx_graph, as ONNX Runtime's) read by OpenVINO's
ONNX frontend and compiled for its CPU plugin, run by an ``InferRequest``.

Only a worker process imports this module, after it has set thread limits and CPU affinity.
``Core.read_model`` takes the serialised ONNX model as bytes and ``Core.compile_model`` compiles it
for the CPU with one stream and ``INFERENCE_NUM_THREADS`` threads (the latency setting OpenVINO's
benchmark_app uses for one request). OpenVINO computes no gradients: the framework runs the ``infer``
scenario only. The kernel (kernel.py) supplies the starting weights, the batch and the runners; the
bindings into the ONNX initializers are onnx_graph's: a write marks the compiled model stale and it is
compiled again from the current values on first use (while the cell is built: the kernel loads the
weights and then places the batch, which compiles).

Precision: the CPU plugin's ``INFERENCE_PRECISION_HINT`` defaults to bf16 on a CPU with bf16
instructions (AVX-512 BF16 or AMX; measured by the lead: a 2e-3 difference from torch's logits), which
would time bf16 against everyone else's float32. Every compiled model is given f32 explicitly, the
hint is read back from the compiled model, and every op's runtime precision in the compiled graph is
checked: a float op that runs in a 16-bit type fails the cell instead of passing silently.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import openvino as ov

from dlarena.frameworks import kernel, onnx_graph
from dlarena.frameworks.base import Parity, Unsupported, require_check_precision
from dlarena.frameworks.onnx_graph import IR_VERSION, OPSET
from dlarena.spec import Workload

DEVICE = "CPU"
# The CPU plugin's name of float32 for INFERENCE_PRECISION_HINT (its default is bf16 where the CPU
# has bf16 instructions, see the module's docstring).
PRECISION_HINT = "f32"
# Runtime precisions that mean a float op was lowered below float32 (the compiled graph's
# ``runtimePrecision`` rt_info, per op).
REDUCED_PRECISIONS = frozenset({"bf16", "f16", "f8e4m3", "f8e5m2"})
# One stream (one request at a time, all threads on it): the latency configuration.
NUM_STREAMS = 1
# The worker sets the process's CPU affinity; OpenVINO's own pinning (on by default on Linux) would
# pin its threads to cores again. Off: the threads stay where the worker's affinity lets them run.
ENABLE_CPU_PINNING = False
# OpenVINO's switch for flushing subnormals (CPU_DENORMALS_OPTIMIZATION, default off): sets FTZ/DAZ
# in the threads that run the compiled model.
DENORMALS_PROPERTY = "CPU_DENORMALS_OPTIMIZATION"


def _compiled_precisions(compiled: Any) -> Counter[str]:
    """How many ops of the compiled graph run in each precision (its ``runtimePrecision`` rt_info)."""
    found: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "runtimePrecision" in info:
            found[str(info["runtimePrecision"].astype(str))] += 1
    return found


class Model(onnx_graph.OnnxModel):
    """The spec's network as an ONNX graph in NCHW (onnx_graph), compiled by OpenVINO for its CPU."""

    runtime = "OpenVINO"

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool,
                 *, core: Any, config: dict[str, Any]) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        self.core, self.config = core, config
        self._compiled: Any = None
        self._request: Any = None  # the request that infer_step reuses
        self._bound: Any = None  # the input tensor set on it

    def _model(self) -> Any:
        """The compiled model over the current values, compiled again after a write."""
        if self.stale or self._compiled is None:
            compiled = self.core.compile_model(self.core.read_model(self.graph.serialize()), DEVICE, self.config)
            hint = compiled.get_property("INFERENCE_PRECISION_HINT")
            reduced = {name: count for name, count in _compiled_precisions(compiled).items()
                       if name in REDUCED_PRECISIONS}
            if hint != ov.Type.f32 or reduced:
                raise Unsupported(f"OpenVINO compiled the model with inference precision {hint} and ops in {reduced}, "
                                  f"not float32 although {PRECISION_HINT} was asked")
            self._compiled, self.stale = compiled, False
            self._request, self._bound = compiled.create_infer_request(), None
        return self._compiled

    def device_batch(self, array: np.ndarray) -> Any:
        """An ``ov.Tensor`` over the array's memory (no copy). The model is compiled here if a write
        made it stale, so that a runner's compile happens while the cell is built."""
        self._model()
        return ov.Tensor(np.ascontiguousarray(array), shared_memory=True)

    def logits(self, inputs: Any) -> np.ndarray:
        request = self._model().create_infer_request()
        request.set_input_tensor(inputs)
        request.infer()
        return np.array(request.get_output_tensor().data)  # a copy: the request owns its output

    def infer_step(self, inputs: Any) -> Any:
        """``infer`` on a request whose input was set once: nothing per step but the run itself."""
        self._model()
        if inputs is not self._bound:
            self._request.set_input_tensor(inputs)
            self._bound = inputs
        self._request.infer()
        return self._request.get_output_tensor()

    def parity(self) -> Parity:
        compiled = self._model()
        details: dict[str, Any] = {
            "openvino": str(ov.__version__),
            "onnx_opset": OPSET,
            "onnx_ir_version": IR_VERSION,
            "inference_precision_hint": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "runtime_precisions": dict(_compiled_precisions(compiled)),
            "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
            "execution_mode_hint": str(compiled.get_property("EXECUTION_MODE_HINT")),
            "num_streams": int(compiled.get_property("NUM_STREAMS")),
            "enable_cpu_pinning": bool(compiled.get_property("ENABLE_CPU_PINNING")),
            "denormals_optimization": bool(compiled.get_property(DENORMALS_PROPERTY)),
            "execution_devices": list(compiled.get_property("EXECUTION_DEVICES")),
            "threads_source": "compile_model INFERENCE_NUM_THREADS",
        }
        return Parity(threads=int(compiled.get_property("INFERENCE_NUM_THREADS")), execution="openvino",
                      details=details)


class Backend(kernel.KernelBackend):
    """OpenVINO's CPU plugin over the spec's ONNX graph (``openvino``)."""

    name = "openvino"
    model_class = Model
    scenarios = ("infer",)

    def __init__(self, threads: int, **options: Any) -> None:
        super().__init__(threads, **options)
        self.core = ov.Core()
        self.flush = False  # flush subnormals to zero (flush_denormals), in every compiled model's config

    def version(self) -> str:
        return str(ov.__version__).split("-")[0]

    def config(self) -> dict[str, Any]:
        return {
            "INFERENCE_PRECISION_HINT": PRECISION_HINT,
            "INFERENCE_NUM_THREADS": self.threads,
            "NUM_STREAMS": NUM_STREAMS,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": ENABLE_CPU_PINNING,
            DENORMALS_PROPERTY: self.flush,
        }

    def build(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool) -> Model:
        return Model(workload, precision, self._device(device), batch_size, training, core=self.core,
                     config=self.config(), **self.options)

    def checker(self, workload: Workload, device: str, precision: str = "float32") -> kernel.KernelChecker:
        # Inference only: the float64 pass of verify exists for gradients, which OpenVINO lacks.
        require_check_precision(precision, "OpenVINO", ("float32",))
        return super().checker(workload, device, precision)

    def flush_denormals(self) -> str:
        # A property of each compiled model: set before the cell's model is compiled, as the worker does.
        self.flush = True
        return f"{DENORMALS_PROPERTY} = True"

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        """A one-node MatMul model compiled with the cell's config."""
        self._device(device)
        compiled = self.core.compile_model(self.core.read_model(onnx_graph.matmul_model(a, b)), DEVICE, self.config())
        request = compiled.create_infer_request()
        request.infer({"a": a, "b": b})
        return np.array(request.get_output_tensor().data)
