"""ONNX Runtime (``onnxruntime``): the network written as an ONNX graph, run by an ``InferenceSession``.

Only a worker process imports this module, after it has set thread limits and CPU affinity.
The ONNX graph is written directly from the spec with ``onnx.helper`` (no exporter in between), the
weights are its initializers, and ``onnx.checker`` validates it with strict shape inference. The
session runs on the CPU execution provider (or CUDA's) with every graph optimisation on (constant
folding, Conv+BatchNorm+ReLU and MatMul+Add fusions, layout transformations), the way ONNX Runtime's
performance guide recommends for inference; self-attention is its fused ``com.microsoft.Attention``
kernel, as ONNX Runtime's transformer optimiser writes it (onnx_graph). ONNX Runtime computes no
gradients, so the framework runs the ``infer`` scenario only. The kernel (kernel.py) supplies the
starting weights, the batch, the layouts and the runners.

The graph and the weights' bindings are onnx_graph's (shared with OpenVINO): ``write`` marks the
session stale, and the session is (re)built from the current values on first use. The kernel loads
the weights and then places the batch (``device_batch``), which builds the session: a runner's
session is made while the cell is built, never in a timed step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from dlarena.frameworks import kernel, onnx_graph
from dlarena.frameworks.base import Parity, Unavailable, require_check_precision
from dlarena.frameworks.onnx_graph import INPUT_NAME, IR_VERSION, OPSET, OUTPUT_NAME
from dlarena.spec import Workload

# The session option that flushes subnormal numbers to zero (ONNX Runtime's default is to keep them).
DENORMAL_AS_ZERO = "session.set_denormal_as_zero"
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"

# Spinning pool threads busy-wait for work between and after the parallel sections (ONNX Runtime's
# default); with one thread there is no pool and nothing spins. Measured on the shared 2-core
# machine at threads=2 (lstm32-small, batch 32): spinning on doubled the step time (21 vs 10 ms)
# because the spinning thread takes the core from the one doing the work, and cores_used never
# exceeded the thread count either way; off is the setting that stays fair when cores are contended.
ALLOW_SPINNING = "0"
# Errors only: ONNX Runtime's warnings (e.g. about unused initializers) would clutter a cell's stderr.
LOG_SEVERITY_ERROR = 3


def _session(serialized: bytes, options: Any, device: str) -> Any:
    providers: list[Any] = [(CUDA_PROVIDER, {"device_id": 0}), CPU_PROVIDER] if device == "cuda" else [CPU_PROVIDER]
    session = ort.InferenceSession(serialized, sess_options=options, providers=providers)
    # A CUDA provider whose libraries fail to load falls back to the CPU with only a log line.
    if device == "cuda" and CUDA_PROVIDER not in session.get_providers():
        raise Unavailable(f"onnxruntime {ort.__version__} could not start its {CUDA_PROVIDER} (CUDA or cuDNN missing?)")
    return session


# --------------------------------------------------------------------------------------------------
# The kernel's Model


class Model(onnx_graph.OnnxModel):
    """The spec's network as an ONNX graph in NCHW (onnx_graph), run by an InferenceSession."""

    runtime = "ONNX Runtime"
    # Self-attention as ONNX Runtime's own fused com.microsoft.Attention (onnx_graph): its in-session
    # AttentionFusion matches only the legacy BERT export (three q, k, v MatMuls, a mask input, the
    # pre-opset-17 LayerNormalization), so the standard-op form would run unfused.
    fused_attention = True

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool,
                 *, session_options: Any) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        self.session_options = session_options
        self._live: Any = None  # the session over the current values
        self._bound: Any = None  # the input that infer_step's IO binding holds
        self._io: Any = None
        self._output: Any = None
        self._run: Any = None

    def _session(self) -> Any:
        """The session over the current values, built after the last write (onnx_graph.SpecGraph.serialize)."""
        if self.stale or self._live is None:
            self._live = _session(self.graph.serialize(), self.session_options, self.device)
            self.stale, self._bound = False, None
        return self._live

    # ---- the kernel's contract

    def device_batch(self, array: np.ndarray) -> Any:
        """An OrtValue on the session's device. The session is built here if a write made it stale:
        the kernel places the batch right after loading the weights, so the runner's session is
        made while the cell is built, and a device ONNX Runtime cannot start is found before a step."""
        self._session()
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def logits(self, inputs: Any) -> np.ndarray:
        session = self._session()
        io = session.io_binding()
        io.bind_ortvalue_input(INPUT_NAME, inputs)
        io.bind_output(OUTPUT_NAME, "cpu")
        session.run_with_iobinding(io)
        return np.asarray(io.copy_outputs_to_cpu()[0])

    def infer_step(self, inputs: Any) -> Any:
        """``run_with_iobinding`` on input and output buffers bound once: nothing per step but the run
        itself (no wrapping of the NumPy input, no output allocation, no conversion back to NumPy; on
        the GPU, no host copies)."""
        if self.stale or inputs is not self._bound:
            session = self._session()
            self._output = ort.OrtValue.ortvalue_from_shape_and_type(
                [inputs.shape()[0], *self.network.output_shape], self.dtype, self.device, 0)
            self._io = session.io_binding()
            self._io.bind_ortvalue_input(INPUT_NAME, inputs)
            self._io.bind_ortvalue_output(OUTPUT_NAME, self._output)
            self._run, self._bound = session.run_with_iobinding, inputs
        self._run(self._io)
        return self._output

    def sync(self) -> None:
        # A CPU run is synchronous; a CUDA run synchronises its stream before it returns unless
        # told otherwise, and synchronize_outputs makes that explicit at no cost.
        if self.device == "cuda" and self._io is not None:
            self._io.synchronize_outputs()

    def parity(self) -> Parity:
        session = self._session()
        options = session.get_session_options()
        details: dict[str, Any] = {
            "providers": list(session.get_providers()),
            "onnxruntime": str(ort.__version__),
            "onnx": str(onnx.__version__),
            "opset": OPSET,
            "ir_version": IR_VERSION,
            "graph_optimization_level": str(options.graph_optimization_level).rpartition(".")[2],
            "execution_mode": str(options.execution_mode).rpartition(".")[2],
            "inter_op_threads": int(options.inter_op_num_threads),
            "intra_op_spinning": options.get_session_config_entry("session.intra_op.allow_spinning"),
            "threads_source": "SessionOptions.intra_op_num_threads",
            "io_binding": True,
        }
        tf32 = cudnn_benchmark = None
        if self.device == "cuda":
            # Left at the provider's defaults (TF32 on, exhaustive cuDNN algorithm search) and read back.
            cuda: dict[str, str] = dict(session.get_provider_options().get(CUDA_PROVIDER, {}))
            details["cuda_provider_options"] = cuda
            tf32 = cuda["use_tf32"] == "1" if "use_tf32" in cuda else None
            search = cuda.get("cudnn_conv_algo_search")
            cudnn_benchmark = search == "EXHAUSTIVE" if search is not None else None
        return Parity(threads=int(options.intra_op_num_threads), execution="onnxruntime", tf32=tf32,
                      cudnn_benchmark=cudnn_benchmark, details=details)


# --------------------------------------------------------------------------------------------------
# Backend


class Backend(kernel.KernelBackend):
    """ONNX Runtime's InferenceSession over a graph built from the spec (``onnxruntime``)."""

    name = "onnxruntime"
    model_class = Model
    devices = ("cpu", "cuda")
    scenarios = ("infer",)

    def __init__(self, threads: int, **options: Any) -> None:
        super().__init__(threads, **options)
        self.flush = False  # flush subnormals to zero (flush_denormals), in every session's options
        ort.set_default_logger_severity(LOG_SEVERITY_ERROR)

    def version(self) -> str:
        return str(ort.__version__)

    def session_options(self) -> Any:
        """Per-session thread pools of exactly ``threads`` threads (the caller's thread included)."""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = LOG_SEVERITY_ERROR
        options.add_session_config_entry("session.intra_op.allow_spinning", ALLOW_SPINNING)
        options.add_session_config_entry("session.inter_op.allow_spinning", ALLOW_SPINNING)
        if self.flush:
            options.add_session_config_entry(DENORMAL_AS_ZERO, "1")
        return options

    def build(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool) -> Model:
        return Model(workload, precision, self._device(device), batch_size, training,
                     session_options=self.session_options(), **self.options)

    def _device(self, device: str) -> str:
        if device == "cuda" and CUDA_PROVIDER not in ort.get_available_providers():
            raise Unavailable(f"this onnxruntime {ort.__version__} has no {CUDA_PROVIDER}")
        return super()._device(device)

    def checker(self, workload: Workload, device: str, precision: str = "float32") -> kernel.KernelChecker:
        # Inference only: the float64 pass of verify exists for gradients, which ONNX Runtime lacks.
        require_check_precision(precision, "ONNX Runtime", ("float32",))
        return super().checker(workload, device, precision)

    def flush_denormals(self) -> str:
        # Each session's thread pool takes it from its options; the calling thread only from the
        # process's first session (measured here: a later session's setting left it as the first
        # one's), so it must be set before the cell's session is made, as the worker does.
        self.flush = True
        return f"{DENORMAL_AS_ZERO} = 1"

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        """A one-node MatMul graph in a session with the cell's options, after the cell's session."""
        session = _session(onnx_graph.matmul_model(a, b), self.session_options(), self._device(device))
        (product,) = session.run([OUTPUT_NAME], {"a": a, "b": b})
        return np.asarray(product)
