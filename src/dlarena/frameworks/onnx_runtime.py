"""ONNX Runtime (``onnxruntime``): the network exported to ONNX, run by an ``InferenceSession``.

Only a worker process imports this module, after it has set thread limits and CPU affinity.
The ONNX graph is written directly from the spec with ``onnx.helper`` (no exporter in between), the
canonical weights become its initializers, and ``onnx.checker`` validates it with strict shape
inference. The session runs on the CPU execution provider with every graph optimisation on
(constant folding, Conv+BatchNorm+ReLU and MatMul+Add fusions, layout transformations), the way
ONNX Runtime's performance guide recommends for inference. ONNX Runtime computes no gradients, so
the framework runs the ``infer`` scenario only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dlarena.frameworks.base import Parity, StepRequest, Unavailable, Unsupported, require, require_check_precision
from dlarena.frameworks.layout import GRU_CANONICAL, GRU_KERAS, LSTM_CANONICAL, LSTM_ONNX, reorder_gates
from dlarena.spec import Network, Recipe, Workload
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
)
from dlarena.spec.weights import ParamSpec, parameter_specs

DEVICES: tuple[str, ...] = ("cpu", "cuda")
SCENARIOS: tuple[str, ...] = ("infer",)

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
_BIAS_ROLES = frozenset({"bias", "input_bias", "recurrent_bias"})
_NUMPY_TO_ONNX: dict[type[np.generic], int] = {np.float32: TensorProto.FLOAT, np.int64: TensorProto.INT64}


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


def _is_recurrent(layer: Layer | None) -> bool:
    return isinstance(layer, LSTM | GRU)


# --------------------------------------------------------------------------------------------------
# Spec -> ONNX graph

ToCanonical = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Binding:
    """Where a canonical parameter lives in the ONNX model: a function of its initializers."""

    name: str
    to_canonical: ToCanonical


def _initializer_value(initializer: str) -> ToCanonical:
    def read(arrays: dict[str, np.ndarray]) -> np.ndarray:
        return arrays[initializer]

    return read


def _recurrent_kernel_value(initializer: str, onnx_gates: str, canonical_gates: str) -> ToCanonical:
    """ONNX ``W``/``R`` ``[1, G*H, n]`` (ONNX gate order) -> canonical ``(n, G*H)``."""
    def read(arrays: dict[str, np.ndarray]) -> np.ndarray:
        return reorder_gates(arrays[initializer][0].T, onnx_gates, canonical_gates)

    return read


def _recurrent_bias_value(initializer: str, half: int, onnx_gates: str, canonical_gates: str) -> ToCanonical:
    """Half ``half`` of ONNX ``B`` ``[1, 2*G*H]`` (input bias, recurrent bias) -> canonical ``(G*H,)``."""
    def read(arrays: dict[str, np.ndarray]) -> np.ndarray:
        size = arrays[initializer].shape[1] // 2
        return reorder_gates(arrays[initializer][0, half * size:(half + 1) * size], onnx_gates, canonical_gates)

    return read


@dataclass(frozen=True)
class Value:
    """A tensor of the graph. ``time_major`` sequences are ``(T, N, F)`` (ONNX RNN layout 0)."""

    name: str
    time_major: bool = False


class GraphBuilder:
    """Writes the nodes and initializers for one network and its weights into ``graph`` in place.

    Large initializers are appended to the graph of the final model directly: protobuf copies a
    message on every ``make_graph``/``make_model``, which cost seconds for the published FCNs.
    """

    def __init__(self, weights: dict[str, np.ndarray], graph: onnx.GraphProto) -> None:
        self.weights = weights
        self.graph = graph
        self.bindings: list[Binding] = []
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
        """An initializer that holds no parameter (running statistics, axes, frozen zeros)."""
        name = self._unique(hint)
        array = np.ascontiguousarray(array)
        tensor = self.graph.initializer.add()
        tensor.name = name
        tensor.data_type = _NUMPY_TO_ONNX[array.dtype.type]
        tensor.dims.extend(array.shape)
        tensor.raw_data = array.tobytes()
        return name

    def parameter(self, canonical: str) -> str:
        """A canonical parameter stored as it is (dense and conv kernels, biases, BN, tables)."""
        name = self.constant(canonical, self.weights[canonical])
        self.bindings.append(Binding(canonical, _initializer_value(name)))
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
            (kh, kw), (ph, pw) = _pair(layer.kernel), _pair(layer.padding)
            return Value(self.op(
                "Conv", inputs, path, kernel_shape=[kh, kw], strides=list(_pair(layer.stride)),
                pads=[ph, pw, ph, pw],
            ))
        if isinstance(layer, MaxPool2D | AvgPool2D):
            return Value(self._pool(layer, x, path))
        if isinstance(layer, GlobalAvgPool2D):
            pooled = self.op("GlobalAveragePool", [x], path)
            return Value(self.op("Flatten", [pooled], path, axis=1))
        if isinstance(layer, BatchNorm):
            channels = shape[0]
            inputs = [
                x, self.parameter(f"{path}.gamma"), self.parameter(f"{path}.beta"),
                self.constant(f"{path}.running_mean", np.zeros(channels, np.float32)),
                self.constant(f"{path}.running_var", np.ones(channels, np.float32)),
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
        kernel = self.parameter(f"{path}.kernel")
        bias = self.parameter(f"{path}.bias") if layer.bias else None
        if len(shape) == 1 and bias is not None:
            return Value(self.op("Gemm", [value.name, kernel, bias], path))
        # Sequences: MatMul over the last axis (either major order), then the bias broadcast.
        out = self.op("MatMul", [value.name, kernel], path)
        if bias is not None:
            out = self.op("Add", [out, bias], path)
        return Value(out, value.time_major)

    def _pool(self, layer: MaxPool2D | AvgPool2D, x: str, path: str) -> str:
        kernel = _pair(layer.kernel)
        stride = _pair(layer.stride if layer.stride is not None else layer.kernel)
        ph, pw = _pair(layer.padding)
        if ph >= kernel[0] or pw >= kernel[1]:  # PoolAttributes refuses such a node at session creation
            raise Unsupported(
                f"ONNX pooling needs padding smaller than the kernel; {type(layer).__name__} has kernel "
                f"{layer.kernel} and padding {layer.padding}"
            )
        attributes: dict[str, Any] = {"kernel_shape": list(kernel), "strides": list(stride), "pads": [ph, pw, ph, pw]}
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
        reject the batch-first ``layout=1``."""
        x = self.time_major(value, path).name
        lstm = isinstance(layer, LSTM)
        op = "LSTM" if lstm else "GRU"
        onnx_gates = LSTM_ONNX if lstm else GRU_KERAS  # ONNX GRU gates are z, r, h
        canonical_gates = LSTM_CANONICAL if lstm else GRU_CANONICAL
        attributes: dict[str, Any] = {"hidden_size": layer.hidden}
        if not lstm:
            attributes["linear_before_reset"] = 1  # the spec's reset-after GRU
        for k in range(layer.layers):
            sub = f"{path}.layer{k}"
            inputs = [x]
            for role, onnx_name in (("input_kernel", "W"), ("recurrent_kernel", "R")):
                canonical = f"{sub}.{role}"
                kernel = reorder_gates(self.weights[canonical], canonical_gates, onnx_gates).T[None]
                inputs.append(self.constant(f"{sub}.{onnx_name}", kernel))
                read = _recurrent_kernel_value(inputs[-1], onnx_gates, canonical_gates)
                self.bindings.append(Binding(canonical, read))
            # ONNX's B is (input bias, recurrent bias); the spec's LSTM has one bias per gate, so
            # its recurrent half is a frozen zero.
            halves = [f"{sub}.bias", None] if lstm else [f"{sub}.input_bias", f"{sub}.recurrent_bias"]
            parts = [
                reorder_gates(self.weights[half], canonical_gates, onnx_gates) if half is not None
                else np.zeros(layer.gates * layer.hidden, np.float32)
                for half in halves
            ]
            inputs.append(self.constant(f"{sub}.B", np.concatenate(parts)[None]))
            for index, half in enumerate(halves):
                if half is not None:
                    read = _recurrent_bias_value(inputs[-1], index, onnx_gates, canonical_gates)
                    self.bindings.append(Binding(half, read))
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


@dataclass(frozen=True)
class Exported:
    """An ONNX model, its serialised form (what sessions load) and where its parameters are."""

    model: onnx.ModelProto
    serialized: bytes
    bindings: list[Binding]


def build_model(network: Network, weights: dict[str, np.ndarray], batch: int | str) -> Exported:
    """The network as a validated ONNX model mapping ``inputs`` to ``logits``."""
    total_bytes = sum(value.nbytes for value in weights.values())
    if total_bytes >= PROTOBUF_LIMIT_BYTES:
        raise Unsupported(
            f"the ONNX model would hold {total_bytes / 2**30:.1f} GiB of weights, over protobuf's 2 GiB; "
            "this backend keeps weights inside the model"
        )
    model = onnx.ModelProto()
    model.ir_version = IR_VERSION
    model.producer_name = "dlarena"
    model.opset_import.append(helper.make_opsetid("", OPSET))
    graph = model.graph
    graph.name = "dlarena"
    builder = GraphBuilder(weights, graph)
    out = builder.sequence(network.layers, Value(INPUT_NAME), network.input_shape, "")
    out = builder.batch_major(out, "output")
    graph.node.append(helper.make_node("Identity", [out.name], [OUTPUT_NAME], name=OUTPUT_NAME))
    input_type = TensorProto.INT64 if network.input_kind == "tokens" else TensorProto.FLOAT
    graph.input.append(helper.make_tensor_value_info(INPUT_NAME, input_type, [batch, *network.input_shape]))
    graph.output.append(
        helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, *network.output_shape])
    )
    serialized = model.SerializeToString()
    # Strict shape inference also proves that the declared output shape is the one computed.
    onnx.checker.check_model(serialized, full_check=True)
    return Exported(model, serialized, builder.bindings)


def read_weights(exported: Exported) -> dict[str, np.ndarray]:
    """The canonical weights, read back from the model's initializers."""
    arrays = {tensor.name: numpy_helper.to_array(tensor) for tensor in exported.model.graph.initializer}
    return {binding.name: np.array(binding.to_canonical(arrays), dtype=np.float32) for binding in exported.bindings}


def count_params(exported: Exported) -> int:
    """Parameters in the model (frozen zeros, running statistics and constants are not)."""
    return sum(value.size for value in read_weights(exported).values())


# --------------------------------------------------------------------------------------------------
# Initialisation and data


def _fans(spec: ParamSpec) -> tuple[int, int]:
    """Fan-in and fan-out as PyTorch computes them for the same tensor."""
    shape = spec.shape
    if spec.role == "kernel" and len(shape) == 4:
        receptive = shape[2] * shape[3]
        return shape[1] * receptive, shape[0] * receptive
    if spec.role == "table":
        return shape[1], shape[0]  # torch's (vocab, dim) weight reads as (out, in)
    return shape[0], shape[1]  # dense (in, out), recurrent (in, G*H)


def initial_weights(network: Network, recipe: Recipe, seed: int) -> dict[str, np.ndarray]:
    """Canonical weights drawn as the recipe says: the same distributions as the torch backend.

    Batch norm starts at gamma 1, beta 0; ``uniform`` covers every other parameter, biases included;
    ``glorot_uniform`` and ``he_normal`` (fan-in, ReLU gain) draw kernels and tables and zero the
    biases. ONNX has no initialisers of its own, so ``framework_default`` draws Glorot-uniform kernels.
    """
    rng = np.random.default_rng(seed)
    init = recipe.init

    def uniform(limit: float, shape: Shape) -> np.ndarray:
        # Drawn in float32 directly: float64 draws and a cast take seconds for the published FCNs.
        value = rng.random(shape, dtype=np.float32)
        value *= np.float32(2 * limit)
        value -= np.float32(limit)
        return value

    weights: dict[str, np.ndarray] = {}
    for spec in parameter_specs(network):
        if spec.role == "gamma":
            value = np.ones(spec.shape, np.float32)
        elif spec.role == "beta":
            value = np.zeros(spec.shape, np.float32)
        elif init.name == "uniform":
            value = uniform(init.scale, spec.shape)
        elif spec.role in _BIAS_ROLES:
            value = np.zeros(spec.shape, np.float32)
        elif init.name == "he_normal":
            value = rng.standard_normal(spec.shape, dtype=np.float32)
            value *= np.float32(math.sqrt(2.0 / _fans(spec)[0]))
        elif init.name in ("glorot_uniform", "framework_default"):
            fan_in, fan_out = _fans(spec)
            value = uniform(math.sqrt(6.0 / (fan_in + fan_out)), spec.shape)
        else:
            raise Unsupported(f"the ONNX Runtime backend does not know the initialisation {init.name!r}")
        weights[spec.name] = value
    return weights


def synthetic_inputs(network: Network, batch_size: int, seed: int) -> np.ndarray:
    """Inputs made once from a seeded generator (inference needs no labels)."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, *network.input_shape)
    if network.input_kind == "tokens":
        return rng.integers(0, network.vocab, shape, dtype=np.int64)
    return rng.standard_normal(shape, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Sessions


@dataclass(frozen=True)
class Device:
    name: str  # "cpu" or "cuda"
    providers: list[Any]  # for InferenceSession: names or (name, options)
    ort_device: str  # OrtValue device type
    device_id: int = 0


def _session(exported: Exported, options: Any, device: Device) -> Any:
    session = ort.InferenceSession(exported.serialized, sess_options=options, providers=device.providers)
    # A CUDA provider whose libraries fail to load falls back to the CPU with only a log line.
    if device.name == "cuda" and CUDA_PROVIDER not in session.get_providers():
        raise Unavailable(f"onnxruntime {ort.__version__} could not start its {CUDA_PROVIDER} (CUDA or cuDNN missing?)")
    return session


# --------------------------------------------------------------------------------------------------
# Runner


class InferRunner:
    """One step is ``run_with_iobinding`` on pre-bound input and output buffers.

    Binding both ends once leaves nothing per step but the run itself: no wrapping of the NumPy
    input, no output allocation, no conversion back to NumPy (on the GPU, no host copies).
    """

    def __init__(
        self, session: Any, exported: Exported, inputs: np.ndarray, output_shape: tuple[int, ...], device: Device
    ) -> None:
        self.session = session
        self.exported = exported
        self.device = device
        self._image = inputs.ndim == 4
        self.inputs = ort.OrtValue.ortvalue_from_numpy(inputs, device.ort_device, device.device_id)
        self.output = ort.OrtValue.ortvalue_from_shape_and_type(
            list(output_shape), np.float32, device.ort_device, device.device_id
        )
        self.io = session.io_binding()
        self.io.bind_ortvalue_input(INPUT_NAME, self.inputs)
        self.io.bind_ortvalue_output(OUTPUT_NAME, self.output)
        self._run = session.run_with_iobinding

    def step(self) -> None:
        self._run(self.io)

    def sync(self) -> None:
        # A CPU run is synchronous; a CUDA run synchronises its stream before it returns unless
        # told otherwise, and synchronize_outputs makes that explicit at no cost.
        if self.device.name == "cuda":
            self.io.synchronize_outputs()

    def trainable_params(self) -> int:
        return count_params(self.exported)

    def parity(self) -> Parity:
        options = self.session.get_session_options()
        details: dict[str, Any] = {
            "providers": list(self.session.get_providers()),
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
        if self.device.name == "cuda":
            # Left at the provider's defaults (TF32 on, exhaustive cuDNN algorithm search) and read back.
            cuda: dict[str, str] = dict(self.session.get_provider_options().get(CUDA_PROVIDER, {}))
            details["cuda_provider_options"] = cuda
            tf32 = cuda["use_tf32"] == "1" if "use_tf32" in cuda else None
            search = cuda.get("cudnn_conv_algo_search")
            cudnn_benchmark = search == "EXHAUSTIVE" if search is not None else None
        return Parity(
            threads=int(options.intra_op_num_threads),
            dtype="float32",
            layout="NCHW" if self._image else None,
            execution="onnxruntime",
            tf32=tf32,
            cudnn_benchmark=cudnn_benchmark,
            details=details,
        )


# --------------------------------------------------------------------------------------------------
# Verification: canonical weights in and out


class Checker:
    """The network as an ONNX model with canonical weights; see base.Checker.

    Weights live in the model's initializers, so loading builds a new model and session, and
    exporting reads the initializers back into the canonical layouts.
    """

    def __init__(self, workload: Workload, options: Any, device: Device) -> None:
        self.network, self.recipe = workload.network, workload.recipe
        self.options = options
        self.device = device
        self._build(initial_weights(self.network, self.recipe, seed=0))

    def _build(self, weights: dict[str, np.ndarray]) -> None:
        self.exported = build_model(self.network, weights, SYMBOLIC_BATCH)
        self.session = _session(self.exported, self.options, self.device)

    def trainable_params(self) -> int:
        return count_params(self.exported)

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        self._build({name: np.asarray(value, np.float32) for name, value in weights.items()})

    def export_weights(self) -> dict[str, np.ndarray]:
        return read_weights(self.exported)

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        dtype = np.int64 if self.network.input_kind == "tokens" else np.float32
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(inputs, dtype=dtype)})
        return np.asarray(logits, dtype=np.float32)

    def loss_and_gradients(self, inputs: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        raise Unsupported("ONNX Runtime computes no gradients")


# --------------------------------------------------------------------------------------------------
# Backend


class Backend:
    """ONNX Runtime's InferenceSession over a graph built from the spec (``onnxruntime``)."""

    name = "onnxruntime"

    def __init__(self, threads: int) -> None:
        self.threads = threads
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

    def flush_denormals(self) -> str:
        # Each session's thread pool takes it from its options; the calling thread only from the
        # process's first session (measured here: a later session's setting left it as the first
        # one's), so it must be set before the cell's session is made, as the worker does.
        self.flush = True
        return f"{DENORMAL_AS_ZERO} = 1"

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        """A one-node MatMul graph in a session with the cell's options, after the cell's session."""
        where = self._device(device)
        model = onnx.ModelProto(ir_version=IR_VERSION, producer_name="dlarena")
        model.opset_import.append(helper.make_opsetid("", OPSET))
        model.graph.name = "denormal_probe"
        model.graph.node.append(helper.make_node("MatMul", ["a", "b"], [OUTPUT_NAME]))
        model.graph.input.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape))
                                 for name, value in (("a", a), ("b", b)))
        model.graph.output.append(
            helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [a.shape[0], b.shape[1]]))
        session = _session(Exported(model, model.SerializeToString(), []), self.session_options(), where)
        (product,) = session.run([OUTPUT_NAME], {"a": a, "b": b})
        return np.asarray(product)

    def _device(self, name: str) -> Device:
        if name == "cuda":
            if CUDA_PROVIDER not in ort.get_available_providers():
                raise Unavailable(f"this onnxruntime {ort.__version__} has no {CUDA_PROVIDER}")
            return Device("cuda", [(CUDA_PROVIDER, {"device_id": 0}), CPU_PROVIDER], "cuda")
        if name == "cpu":
            return Device("cpu", [CPU_PROVIDER], "cpu")
        raise Unsupported(f"the ONNX Runtime backend runs on {' or '.join(DEVICES)}, not {name!r}")

    def checker(self, workload: Workload, device: str, precision: str = "float32") -> Checker:
        # Inference only: the float64 pass of verify exists for gradients, which ONNX Runtime lacks.
        require_check_precision(precision, "ONNX Runtime", ("float32",))
        return Checker(workload, self.session_options(), self._device(device))

    def prepare(self, request: StepRequest) -> InferRunner:
        if request.scenario not in SCENARIOS:
            raise Unsupported(
                f"ONNX Runtime runs inference only; it has no {request.scenario!r} scenario (no gradients, "
                "no optimizers)"
            )
        require(request, "ONNX Runtime", scenarios=SCENARIOS)
        device = self._device(request.device)
        network = request.workload.network
        weights = initial_weights(network, request.workload.recipe, request.seed)
        exported = build_model(network, weights, request.batch_size)
        session = _session(exported, self.session_options(), device)
        inputs = synthetic_inputs(network, request.batch_size, request.seed)
        return InferRunner(
            session, exported, inputs, (request.batch_size, *network.output_shape), device
        )
