"""The spec's network as an ONNX graph, written directly with ``onnx.helper`` (no exporter in between):
shared by the frameworks that run ONNX models (ONNX Runtime, OpenVINO).

The weights are the graph's initializers. A runtime takes weights only inside the model it loads, so
``OnnxModel``'s bindings point into NumPy arrays kept here, one per initializer in ONNX's layout (a
binding is the initializer and an index into it: a recurrent layer's ``W`` and ``R`` have a leading
directions axis, its ``B`` holds the input and the recurrent bias): ``write`` stores into them and
marks the compiled model stale, and the subclass rebuilds it from ``SpecGraph.serialize`` on first
use. ``onnx.checker`` validates every serialised model with strict shape inference, which also proves
the declared output shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from dlarena.frameworks import kernel, layout
from dlarena.frameworks.base import Unsupported
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
# CPU and a CUDA kernel in onnxruntime 1.31, whose supported opsets go well beyond 21, and OpenVINO
# 2026.4's ONNX frontend reads opsets up to 23 (its documentation's supported-operations table).
OPSET = 21
IR_VERSION = 10
INPUT_NAME = "inputs"
OUTPUT_NAME = "logits"
# The checker runs batches of any size; a runner's batch is fixed, so every shape in its graph is
# static for the runtime's optimisers and memory planner.
SYMBOLIC_BATCH = "batch"
# Protobuf cannot serialise a message of 2 GiB or more (ONNX would need external data files); the
# largest catalogue network (OverFeat, 146 M parameters) is about 0.6 GiB.
PROTOBUF_LIMIT_BYTES = 2**31

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
        raise Unsupported(f"the ONNX graph writer has no translation for the layer type {type(layer).__name__}")

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

def new_model(name: str) -> onnx.ModelProto:
    model = onnx.ModelProto(ir_version=IR_VERSION, producer_name="dlarena")
    model.opset_import.append(helper.make_opsetid("", OPSET))
    model.graph.name = name
    return model


class SpecGraph:
    """One network's ONNX model with a fixed batch size (0: symbolic), its initializers' values and
    each canonical parameter's slot in them."""

    def __init__(self, network: Network, dtype: np.dtype[Any], batch_size: int) -> None:
        weight_bytes = sum(math.prod(spec.shape) for spec in parameter_specs(network)) * dtype.itemsize
        if weight_bytes >= PROTOBUF_LIMIT_BYTES:
            raise Unsupported(
                f"the ONNX model would hold {weight_bytes / 2**30:.1f} GiB of weights, over protobuf's 2 GiB; "
                "the ONNX backends keep weights inside the model"
            )
        self.proto = new_model("dlarena")
        graph = self.proto.graph
        builder = GraphBuilder(network, dtype, graph)
        out = builder.batch_major(builder.sequence(network.layers, Value(INPUT_NAME), network.input_shape, ""),
                                  "output")
        graph.node.append(helper.make_node("Identity", [out.name], [OUTPUT_NAME], name=OUTPUT_NAME))
        batch: int | str = batch_size or SYMBOLIC_BATCH
        element = helper.np_dtype_to_tensor_dtype(dtype)
        inputs = TensorProto.INT64 if network.input_kind == "tokens" else element
        graph.input.append(helper.make_tensor_value_info(INPUT_NAME, inputs, [batch, *network.input_shape]))
        graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, element, [batch, *network.output_shape]))
        self.values, self.handles = builder.values, builder.handles

    def serialize(self) -> bytes:
        """The model with the current values as initializers, checked with strict shape inference.

        Initializers are added to the model's graph in place and dropped again after serialising
        (the runtime holds its own copy): protobuf copies a message on every
        ``make_graph``/``make_model``, which cost seconds for the published FCNs."""
        initializers = self.proto.graph.initializer
        for name, value in self.values.items():
            tensor = initializers.add()
            tensor.name = name
            tensor.data_type = helper.np_dtype_to_tensor_dtype(value.dtype)
            tensor.dims.extend(value.shape)
            tensor.raw_data = value.tobytes()
        serialized = bytes(self.proto.SerializeToString())
        del initializers[:]
        onnx.checker.check_model(serialized, full_check=True)
        return serialized


def matmul_model(a: np.ndarray, b: np.ndarray) -> bytes:
    """A one-node MatMul model of two float32 inputs ``a`` and ``b`` (the subnormal probes)."""
    model = new_model("denormal_probe")
    model.graph.node.append(helper.make_node("MatMul", ["a", "b"], [OUTPUT_NAME]))
    model.graph.input.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape))
                             for name, value in (("a", a), ("b", b)))
    model.graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [a.shape[0], b.shape[1]]))
    return bytes(model.SerializeToString())


class OnnxModel(kernel.Model):
    """A network run from its ONNX graph, inference only. Dense kernels ``(in, out)`` and convolution
    kernels ``OIHW`` are canonical; recurrent kernels are ``(G*H, in)`` with ONNX's gate orders
    (LSTM i, o, f, c; GRU z, r, h). A subclass compiles ``self.graph.serialize()`` in its runtime,
    again after ``stale`` is set by a write."""

    conventions = kernel.Conventions(recurrent_kernel="out_in", lstm_gates=layout.LSTM_ONNX,
                                     gru_gates=layout.GRU_KERAS)
    runtime = "this runtime"  # its name in the messages of what it cannot do

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        self.graph = SpecGraph(self.network, self.dtype, batch_size)
        self.stale = True  # the compiled model (the subclass's) no longer holds the current values

    def bindings(self) -> list[kernel.Binding]:
        return self.bind(self.graph.handles)

    def read(self, handle: Slot) -> np.ndarray:
        name, index = handle
        return self.graph.values[name][index].copy()

    def write(self, handle: Slot, value: np.ndarray) -> None:
        name, index = handle
        self.graph.values[name][index] = value
        self.stale = True

    def gradients(self, inputs: Any, labels: Any) -> tuple[float, dict[str, np.ndarray]]:
        raise Unsupported(f"{self.runtime} computes no gradients")

    def train_step(self, inputs: Any, labels: Any) -> Any:
        raise Unsupported(f"{self.runtime} runs inference only; it has no 'train' scenario (no gradients, "
                          "no optimizers)")

    def trainable_params(self) -> int:
        """Parameters in the model (frozen zeros, running statistics and constants are not)."""
        return sum(int(self.graph.values[name][index].size) for name, index in self.graph.handles.values())
