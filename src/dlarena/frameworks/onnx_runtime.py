"""ONNX Runtime (``onnxruntime``): the network written as an ONNX graph, run by an ``InferenceSession``.

Only a worker process imports this module, after it has set thread limits and CPU affinity.
The ONNX graph is written directly from the spec with ``onnx.helper`` (no exporter in between), the
weights are its initializers, and ``onnx.checker`` validates it with strict shape inference. The
session runs on the CPU execution provider (or CUDA's) with every graph optimisation on (constant
folding, Conv+BatchNorm+ReLU and MatMul+Add fusions, layout transformations), the way ONNX Runtime's
performance guide recommends for inference. ONNX Runtime computes no gradients, so the framework runs
the ``infer`` scenario only. The kernel (kernel.py) supplies the starting weights, the batch, the
layouts and the runners.

ONNX Runtime takes weights only as initializers inside the model it loads, so the model's bindings
point into NumPy arrays this module keeps, one per initializer in ONNX's layout (a binding is the
initializer and an index into it: a recurrent layer's ``W`` and ``R`` have a leading directions axis,
its ``B`` holds the input and the recurrent bias): ``write`` stores into them and drops the session,
and the session is (re)built from them on first use. The kernel loads the weights and then places
the batch (``device_batch``), which builds the session: a runner's session is made while the cell
is built, as before, never in a timed step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from dlarena.frameworks import kernel, layout
from dlarena.frameworks.base import Parity, Unavailable, Unsupported, require_check_precision
from dlarena.spec import Network, Workload
from dlarena.spec.layers import (
    GRU,
    LSTM,
    Activation,
    AvgPool2D,
    BatchNorm,
    Concat,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    MaxPool2D,
    Residual,
    Shape,
    pair,
)
from dlarena.spec.weights import parameter_specs

# ONNX opset 21 with IR version 10 (both introduced by onnx 1.16): every operator used here has a
# CPU and a CUDA kernel in onnxruntime 1.31, whose supported opsets go well beyond 21.
OPSET = 21
IR_VERSION = 10

# The session option that flushes subnormal numbers to zero (ONNX Runtime's default is to keep them).
DENORMAL_AS_ZERO = "session.set_denormal_as_zero"
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
INPUT_NAME = "inputs"
OUTPUT_NAME = "logits"
# The checker runs batches of any size; a runner's batch is fixed, so every shape in its graph is
# static for ONNX Runtime's optimisers and memory planner.
SYMBOLIC_BATCH = "batch"
# Protobuf cannot serialise a message of 2 GiB or more (ONNX would need external data files); the
# largest catalogue network (OverFeat, 146 M parameters) is about 0.6 GiB.
PROTOBUF_LIMIT_BYTES = 2**31

# Spinning pool threads busy-wait for work between and after the parallel sections (ONNX Runtime's
# default); with one thread there is no pool and nothing spins. Measured on the shared 2-core
# machine at threads=2 (lstm32-small, batch 32): spinning on doubled the step time (21 vs 10 ms)
# because the spinning thread takes the core from the one doing the work, and cores_used never
# exceeded the thread count either way; off is the setting that stays fair when cores are contended.
ALLOW_SPINNING = "0"
# Errors only: ONNX Runtime's warnings (e.g. about unused initializers) would clutter a cell's stderr.
LOG_SEVERITY_ERROR = 3

_ACTIVATIONS: dict[str, str] = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}

# Where a canonical parameter lives: an initializer and the index of its part (``()``: all of it).
Slot = tuple[str, tuple[int | slice, ...]]


def _is_recurrent(layer: Layer | None) -> bool:
    return isinstance(layer, LSTM | GRU)


# --------------------------------------------------------------------------------------------------
# Spec -> ONNX graph


@dataclass(frozen=True)
class Value:
    """A tensor of the graph. ``time_major`` sequences are ``(T, N, F)`` (ONNX RNN layout 0)."""

    name: str
    time_major: bool = False


class GraphBuilder:
    """Writes the nodes of one network into ``graph``; its initializers' values go to ``values``
    (zeros until the kernel loads weights) and each canonical parameter's place to ``handles``."""

    def __init__(self, network: Network, dtype: np.dtype[Any], graph: onnx.GraphProto) -> None:
        self.graph, self.dtype = graph, dtype
        self.shapes = {spec.name: spec.shape for spec in parameter_specs(network)}
        self.values: dict[str, np.ndarray] = {}
        self.handles: dict[str, Slot] = {}
        self._names: set[str] = set()
        self._axes: dict[int, str] = {}

    def _unique(self, hint: str) -> str:
        name, index = hint, 1
        while name in self._names:
            index += 1
            name = f"{hint}_{index}"
        self._names.add(name)
        return name

    def constant(self, hint: str, array: np.ndarray) -> str:
        """An initializer (running statistics, axes, frozen zeros, or a parameter's storage)."""
        name = self._unique(hint)
        self.values[name] = array
        return name

    def parameter(self, canonical: str) -> str:
        """A canonical parameter stored whole in the canonical layout (kernels, biases, BN, tables)."""
        name = self.constant(canonical, np.zeros(self.shapes[canonical], self.dtype))
        self.handles[canonical] = (name, ())
        return name

    def node(self, op: str, inputs: list[str], hint: str, outputs: int = 1, **attributes: Any) -> list[str]:
        names = [self._unique(f"{hint}/{op}" if i == 0 else f"{hint}/{op}:{i}") for i in range(outputs)]
        self.graph.node.append(helper.make_node(op, inputs, names, name=names[0], **attributes))
        return names

    def op(self, op: str, inputs: list[str], hint: str, **attributes: Any) -> str:
        return self.node(op, inputs, hint, **attributes)[0]

    # ---------------------------------------------------------------------------------------------

    def batch_major(self, value: Value, hint: str) -> Value:
        if not value.time_major:
            return value
        return Value(self.op("Transpose", [value.name], f"{hint}/batch_major", perm=[1, 0, 2]))

    def time_major(self, value: Value, hint: str) -> Value:
        if value.time_major:
            return value
        return Value(self.op("Transpose", [value.name], f"{hint}/time_major", perm=[1, 0, 2]), time_major=True)

    def sequence(self, layers: tuple[Layer, ...], value: Value, shape: Shape, prefix: str) -> Value:
        for index, layer in enumerate(layers):
            # Recurrent layers want time-major sequences; knowing what follows lets an Embedding
            # produce them directly, and a recurrent layer hand batch-major ones to a Dense.
            following = next((nxt for nxt in layers[index + 1:] if not isinstance(nxt, Dropout)), None)
            value = self.layer(layer, value, shape, f"{prefix}{index}", following)
            shape = layer.out_shape(shape)
        return value

    def layer(self, layer: Layer, value: Value, shape: Shape, path: str, following: Layer | None) -> Value:
        """The graph of one spec layer whose per-sample input shape is ``shape``."""
        if isinstance(layer, Dropout):
            return value  # inference: the identity
        if isinstance(layer, Dense):
            return self._dense(layer, value, shape, path)
        if isinstance(layer, Activation):
            return Value(self.op(_ACTIVATIONS[layer.function], [value.name], path), value.time_major)
        if isinstance(layer, Embedding):
            return self._embedding(value, path, time_major=_is_recurrent(following))
        if isinstance(layer, LSTM | GRU):
            return self._recurrent(layer, value, path, _is_recurrent(following))
        x = self.batch_major(value, path).name
        if isinstance(layer, Conv2D):
            inputs = [x, self.parameter(f"{path}.kernel")]
            if layer.bias:
                inputs.append(self.parameter(f"{path}.bias"))
            (kh, kw), (ph, pw) = pair(layer.kernel), pair(layer.padding)
            return Value(self.op("Conv", inputs, path, kernel_shape=[kh, kw], strides=list(pair(layer.stride)),
                                 pads=[ph, pw, ph, pw]))
        if isinstance(layer, MaxPool2D | AvgPool2D):
            return Value(self._pool(layer, x, path))
        if isinstance(layer, GlobalAvgPool2D):
            pooled = self.op("GlobalAveragePool", [x], path)
            return Value(self.op("Flatten", [pooled], path, axis=1))
        if isinstance(layer, BatchNorm):
            channels = shape[0]
            inputs = [
                x, self.parameter(f"{path}.gamma"), self.parameter(f"{path}.beta"),
                self.constant(f"{path}.running_mean", np.zeros(channels, self.dtype)),
                self.constant(f"{path}.running_var", np.ones(channels, self.dtype)),
            ]
            return Value(self.op("BatchNormalization", inputs, path, epsilon=layer.eps))
        if isinstance(layer, Flatten):
            return Value(self.op("Flatten", [x], path, axis=1))  # row-major over (C, H, W): canonical
        if isinstance(layer, Residual):
            body = self.batch_major(self.sequence(layer.body, Value(x), shape, f"{path}.body."), path)
            short = self.batch_major(self.sequence(layer.shortcut, Value(x), shape, f"{path}.shortcut."), path)
            return Value(self.op("Add", [body.name, short.name], path))
        if isinstance(layer, Concat):
            outs = [
                self.batch_major(self.sequence(branch, Value(x), shape, f"{path}.branches.{index}."), path).name
                for index, branch in enumerate(layer.branches)
            ]
            return Value(self.op("Concat", outs, path, axis=1))
        raise Unsupported(f"the ONNX Runtime backend has no translation for the layer type {type(layer).__name__}")

    def _dense(self, layer: Dense, value: Value, shape: Shape, path: str) -> Value:
        kernel_name = self.parameter(f"{path}.kernel")
        bias = self.parameter(f"{path}.bias") if layer.bias else None
        if len(shape) == 1 and bias is not None:
            return Value(self.op("Gemm", [value.name, kernel_name, bias], path))
        # Sequences: MatMul over the last axis (either major order), then the bias broadcast.
        out = self.op("MatMul", [value.name, kernel_name], path)
        if bias is not None:
            out = self.op("Add", [out, bias], path)
        return Value(out, value.time_major)

    def _pool(self, layer: MaxPool2D | AvgPool2D, x: str, path: str) -> str:
        kernel_size = pair(layer.kernel)
        stride = pair(layer.stride if layer.stride is not None else layer.kernel)
        ph, pw = pair(layer.padding)
        if ph >= kernel_size[0] or pw >= kernel_size[1]:  # PoolAttributes refuses such a node at session creation
            raise Unsupported(
                f"ONNX pooling needs padding smaller than the kernel; {type(layer).__name__} has kernel "
                f"{layer.kernel} and padding {layer.padding}"
            )
        attributes: dict[str, Any] = {"kernel_shape": list(kernel_size), "strides": list(stride),
                                      "pads": [ph, pw, ph, pw]}
        if isinstance(layer, MaxPool2D):
            # ONNX max pooling takes the maximum over the window's cells inside the input: padding
            # never wins, as the spec's minus infinity.
            return self.op("MaxPool", [x], path, **attributes)
        return self.op("AveragePool", [x], path, count_include_pad=1, **attributes)

    def _embedding(self, value: Value, path: str, time_major: bool) -> Value:
        ids = value.name
        if time_major:
            # Transposing the (N, T) token ids is cheaper than transposing the (N, T, D) vectors.
            ids = self.op("Transpose", [ids], f"{path}/ids", perm=[1, 0])
        return Value(self.op("Gather", [self.parameter(f"{path}.table"), ids], path, axis=0), time_major)

    def _recurrent(self, layer: LSTM | GRU, value: Value, path: str, keep_time_major: bool) -> Value:
        """One ONNX LSTM or GRU node per stacked layer, time-major: ONNX Runtime's CPU kernels
        reject the batch-first ``layout=1``. ``W``, ``R`` are ``(1, G*H, n)`` (one direction) and
        ``B`` is ``(1, 2*G*H)``: the input bias, then the recurrent bias."""
        x = self.time_major(value, path).name
        lstm = isinstance(layer, LSTM)
        op = "LSTM" if lstm else "GRU"
        attributes: dict[str, Any] = {"hidden_size": layer.hidden}
        if not lstm:
            attributes["linear_before_reset"] = 1  # the spec's reset-after GRU
        rows = layer.gates * layer.hidden
        for k in range(layer.layers):
            sub = f"{path}.layer{k}"
            inputs = [x]
            for role, onnx_name in (("input_kernel", "W"), ("recurrent_kernel", "R")):
                columns = self.shapes[f"{sub}.{role}"][0]
                inputs.append(self.constant(f"{sub}.{onnx_name}", np.zeros((1, rows, columns), self.dtype)))
                self.handles[f"{sub}.{role}"] = (inputs[-1], (0,))
            # The spec's LSTM has one bias per gate, so the recurrent half of its B is a frozen zero.
            inputs.append(self.constant(f"{sub}.B", np.zeros((1, 2 * rows), self.dtype)))
            halves = [f"{sub}.bias"] if lstm else [f"{sub}.input_bias", f"{sub}.recurrent_bias"]
            for index, half in enumerate(halves):
                self.handles[half] = (inputs[-1], (0, slice(index * rows, (index + 1) * rows)))
            if k == layer.layers - 1 and not layer.return_sequences:
                # Y_h (1, N, H) is the last step's output; Y (T, 1, N, H) is left out.
                state = self._unique(f"{sub}/{op}:h")
                self.graph.node.append(helper.make_node(op, inputs, ["", state], name=state, **attributes))
                return Value(self.op("Squeeze", [state, self.axes(0)], sub))
            sequence = self.op(op, inputs, sub, **attributes)
            x = self.op("Squeeze", [sequence, self.axes(1)], sub)  # (T, 1, N, H) -> (T, N, H)
        out = Value(x, time_major=True)
        return out if keep_time_major else self.batch_major(out, path)

    def axes(self, axis: int) -> str:
        """A shared int64 constant ``[axis]`` for Squeeze."""
        if axis not in self._axes:
            self._axes[axis] = self.constant(f"axes_{axis}", np.array([axis], np.int64))
        return self._axes[axis]


def _new_model(name: str) -> onnx.ModelProto:
    model = onnx.ModelProto(ir_version=IR_VERSION, producer_name="dlarena")
    model.opset_import.append(helper.make_opsetid("", OPSET))
    model.graph.name = name
    return model


def _session(serialized: bytes, options: Any, device: str) -> Any:
    providers: list[Any] = [(CUDA_PROVIDER, {"device_id": 0}), CPU_PROVIDER] if device == "cuda" else [CPU_PROVIDER]
    session = ort.InferenceSession(serialized, sess_options=options, providers=providers)
    # A CUDA provider whose libraries fail to load falls back to the CPU with only a log line.
    if device == "cuda" and CUDA_PROVIDER not in session.get_providers():
        raise Unavailable(f"onnxruntime {ort.__version__} could not start its {CUDA_PROVIDER} (CUDA or cuDNN missing?)")
    return session


# --------------------------------------------------------------------------------------------------
# The kernel's Model


class Model(kernel.Model):
    """The spec's network as an ONNX graph in NCHW. Dense kernels ``(in, out)`` and convolution
    kernels ``OIHW`` are canonical; recurrent kernels are ``(G*H, in)`` with ONNX's gate orders
    (LSTM i, o, f, c; GRU z, r, h)."""

    conventions = kernel.Conventions(recurrent_kernel="out_in", lstm_gates=layout.LSTM_ONNX,
                                     gru_gates=layout.GRU_KERAS)

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool,
                 *, session_options: Any) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        network = self.network
        weight_bytes = sum(math.prod(spec.shape) for spec in parameter_specs(network)) * self.dtype.itemsize
        if weight_bytes >= PROTOBUF_LIMIT_BYTES:
            raise Unsupported(
                f"the ONNX model would hold {weight_bytes / 2**30:.1f} GiB of weights, over protobuf's 2 GiB; "
                "this backend keeps weights inside the model"
            )
        self.session_options = session_options
        self.proto = _new_model("dlarena")
        graph = self.proto.graph
        builder = GraphBuilder(network, self.dtype, graph)
        out = builder.batch_major(builder.sequence(network.layers, Value(INPUT_NAME), network.input_shape, ""),
                                  "output")
        graph.node.append(helper.make_node("Identity", [out.name], [OUTPUT_NAME], name=OUTPUT_NAME))
        batch: int | str = batch_size or SYMBOLIC_BATCH
        element = helper.np_dtype_to_tensor_dtype(self.dtype)
        inputs = TensorProto.INT64 if network.input_kind == "tokens" else element
        graph.input.append(helper.make_tensor_value_info(INPUT_NAME, inputs, [batch, *network.input_shape]))
        graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, element, [batch, *network.output_shape]))
        self.values, self.handles = builder.values, builder.handles
        self._live: Any = None  # the session over the current values; None after a write
        self._bound: Any = None  # the input that infer_step's IO binding holds
        self._io: Any = None
        self._output: Any = None
        self._run: Any = None

    def _session(self) -> Any:
        """The session over the current values, built after the last write: the model is serialised
        with the values as initializers (which are then dropped from it: the session holds its own
        copy) and checked with strict shape inference, which also proves the declared output shape.

        Initializers are added to the final model's graph in place: protobuf copies a message on every
        ``make_graph``/``make_model``, which cost seconds for the published FCNs."""
        if self._live is None:
            initializers = self.proto.graph.initializer
            for name, value in self.values.items():
                tensor = initializers.add()
                tensor.name = name
                tensor.data_type = helper.np_dtype_to_tensor_dtype(value.dtype)
                tensor.dims.extend(value.shape)
                tensor.raw_data = value.tobytes()
            serialized = self.proto.SerializeToString()
            del initializers[:]
            onnx.checker.check_model(serialized, full_check=True)
            self._live = _session(serialized, self.session_options, self.device)
        return self._live

    # ---- the kernel's contract

    def bindings(self) -> list[kernel.Binding]:
        return self.bind(self.handles)

    def read(self, handle: Slot) -> np.ndarray:
        name, index = handle
        return self.values[name][index].copy()

    def write(self, handle: Slot, value: np.ndarray) -> None:
        name, index = handle
        self.values[name][index] = value
        self._live = self._bound = None  # the next use builds a session over the new values

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
        if inputs is not self._bound:
            session = self._session()
            self._output = ort.OrtValue.ortvalue_from_shape_and_type(
                [inputs.shape()[0], *self.network.output_shape], self.dtype, self.device, 0)
            self._io = session.io_binding()
            self._io.bind_ortvalue_input(INPUT_NAME, inputs)
            self._io.bind_ortvalue_output(OUTPUT_NAME, self._output)
            self._run, self._bound = session.run_with_iobinding, inputs
        self._run(self._io)
        return self._output

    def gradients(self, inputs: Any, labels: Any) -> tuple[float, dict[str, np.ndarray]]:
        raise Unsupported("ONNX Runtime computes no gradients")

    def train_step(self, inputs: Any, labels: Any) -> Any:
        raise Unsupported("ONNX Runtime runs inference only; it has no 'train' scenario (no gradients, no optimizers)")

    def sync(self) -> None:
        # A CPU run is synchronous; a CUDA run synchronises its stream before it returns unless
        # told otherwise, and synchronize_outputs makes that explicit at no cost.
        if self.device == "cuda" and self._io is not None:
            self._io.synchronize_outputs()

    def trainable_params(self) -> int:
        """Parameters in the model (frozen zeros, running statistics and constants are not)."""
        return sum(int(self.values[name][index].size) for name, index in self.handles.values())

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
        model = _new_model("denormal_probe")
        model.graph.node.append(helper.make_node("MatMul", ["a", "b"], [OUTPUT_NAME]))
        model.graph.input.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape))
                                 for name, value in (("a", a), ("b", b)))
        model.graph.output.append(
            helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [a.shape[0], b.shape[1]]))
        session = _session(model.SerializeToString(), self.session_options(), self._device(device))
        (product,) = session.run([OUTPUT_NAME], {"a": a, "b": b})
        return np.asarray(product)
