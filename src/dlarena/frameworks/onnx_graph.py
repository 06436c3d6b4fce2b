"""The spec's network as an ONNX graph, written directly with ``onnx.helper`` (no exporter in between):
shared by the frameworks that run ONNX models (ONNX Runtime, OpenVINO).

The weights are the graph's initializers. A runtime takes weights only inside the model it loads, so
``OnnxModel``'s bindings point into NumPy arrays kept here, one per initializer in ONNX's layout (a
binding is the initializer and an index into it: a recurrent layer's ``W`` and ``R`` have a leading
directions axis, its ``B`` holds the input and the recurrent bias): ``write`` stores into them and
marks the compiled model stale, and the subclass rebuilds it from ``SpecGraph.serialize`` on first
use. ``onnx.checker`` validates every serialised model with strict shape inference, which also proves
the declared output shape. A tied output reads its Embedding's initializer: one initializer, one
binding, two readers.
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
    LayerNorm,
    MaxPool2D,
    MultiHeadSelfAttention,
    PositionEmbedding,
    Residual,
    SelectToken,
    Shape,
    TiedOutput,
    TokenTypeEmbedding,
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

# Each spec activation as an ONNX op and its attributes. Gelu (opset 20) names its form: "none" is the
# exact erf GELU, "tanh" GPT-2's approximation (layers.ACTIVATIONS); the two must not be swapped.
_ACTIVATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "relu": ("Relu", {}), "sigmoid": ("Sigmoid", {}), "tanh": ("Tanh", {}),
    "gelu": ("Gelu", {"approximate": "none"}), "gelu_tanh": ("Gelu", {"approximate": "tanh"}),
}
# ONNX Runtime's contributed operators (com.microsoft.Attention), version 1 of their domain.
CONTRIB_DOMAIN = "com.microsoft"
CONTRIB_VERSION = 1
# Reshape's "copy this dimension from the input" (ONNX Reshape with allowzero=0, the default).
KEEP_DIM = 0

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
    (zeros until the kernel loads weights) and each canonical parameter's place to ``handles``.
    ``fused_attention``: self-attention as ONNX Runtime's ``com.microsoft.Attention`` instead of
    standard ops; ``domains`` holds the operator domains besides ONNX's that the graph uses, with
    their versions, for the model's opset imports."""

    def __init__(self, network: Network, dtype: np.dtype[Any], graph: onnx.GraphProto,
                 fused_attention: bool = False) -> None:
        self.graph, self.dtype, self.fused_attention = graph, dtype, fused_attention
        self.domains: dict[str, int] = {}
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
            return Value(self._activation(layer, value.name, path), value.time_major)
        if isinstance(layer, LayerNorm):
            # Over the last axis, whichever major order: one fused LayerNormalization (opset 17).
            inputs = [value.name, self.parameter(f"{path}.gamma"), self.parameter(f"{path}.beta")]
            return Value(self.op("LayerNormalization", inputs, path, axis=-1, epsilon=layer.eps), value.time_major)
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
        if isinstance(layer, PositionEmbedding):
            return Value(self._position_add(x, shape, path))
        if isinstance(layer, TokenTypeEmbedding):
            ids = self.constant(f"{path}.type_ids", np.array(layer.type_ids(shape[0]), np.int64))
            types = self.op("Gather", [self.parameter(f"{path}.table"), ids], path, axis=0)  # (T, D), folded
            return Value(self.op("Add", [x, types], path))
        if isinstance(layer, MultiHeadSelfAttention):
            return Value(self._self_attention(layer, x, shape, path))
        if isinstance(layer, SelectToken):
            index = self.constant(f"{path}.index", np.array(layer.index, np.int64))  # a scalar: drops the axis
            return Value(self.op("Gather", [x, index], path, axis=1))
        if isinstance(layer, TiedOutput):
            return Value(self._tied_output(layer, x, path))
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

    def _activation(self, layer: Activation, x: str, path: str) -> str:
        if layer.function not in _ACTIVATIONS:
            raise Unsupported(f"the ONNX graph writer has no translation for the activation {layer.function!r}")
        op, attributes = _ACTIVATIONS[layer.function]
        return self.op(op, [x], path, **attributes)

    def _position_add(self, x: str, shape: Shape, path: str) -> str:
        """Adds the table's first ``T`` rows. The Slice of an initializer by constants is folded by the
        runtime, so a step adds a ``(T, D)`` constant, while the whole table stays the parameter."""
        first, steps = self.axes(0), self.constant(f"{path}.steps", np.array([shape[0]], np.int64))
        rows = self.op("Slice", [self.parameter(f"{path}.table"), first, steps, self.axes(0)], path)  # [0, T) of axis 0
        return self.op("Add", [x, rows], path)

    def _self_attention(self, layer: MultiHeadSelfAttention, x: str, shape: Shape, path: str) -> str:
        """Self-attention, then the output projection (a MatMul and its bias, fused by the runtime)."""
        if self.fused_attention:
            mixed = self._fused_attention(layer, x, shape, path)
        else:
            mixed = self._standard_attention(layer, x, shape, path)
        out = self.op("MatMul", [mixed, self.parameter(f"{path}.out_kernel")], f"{path}/out")
        return self.op("Add", [out, self.parameter(f"{path}.out_bias")], f"{path}/out")

    def _fused_attention(self, layer: MultiHeadSelfAttention, x: str, shape: Shape, path: str) -> str:
        """ONNX Runtime's fused ``com.microsoft.Attention``, what its transformer optimiser writes for
        BERT and GPT-2: the q, k, v projection and the attention in one kernel. Its ``weights``
        ``(D, 3D)`` and ``bias`` ``(3D,)`` are the canonical ``qkv_kernel`` and ``qkv_bias`` as they
        are (blocks q, k, v, head by head in each); ``scale`` is the spec's; ``unidirectional`` is the
        causal mask, which masks as exactly as the spec's minus infinity on ONNX Runtime 1.31's CPU
        (measured: a future step whose score beats the past ones by 1e18 still gets probability 0,
        where an additive -10000 mask would let it win). ONNX's checker has no schema for the op, so
        its strict shape inference stops there; ONNX Runtime, which has one, infers past it."""
        self.domains[CONTRIB_DOMAIN] = CONTRIB_VERSION
        inputs = [x, self.parameter(f"{path}.qkv_kernel"), self.parameter(f"{path}.qkv_bias")]
        return self.op("Attention", inputs, path, domain=CONTRIB_DOMAIN, num_heads=layer.heads,
                       unidirectional=int(layer.causal), scale=1.0 / math.sqrt(shape[-1] // layer.heads))

    def _standard_attention(self, layer: MultiHeadSelfAttention, x: str, shape: Shape, path: str) -> str:
        """Scaled dot-product attention in standard ops, as exporters write it (the torch exporter's
        ``scaled_dot_product_attention``): one fused q, k, v MatMul split in three, each reshaped to
        ``(N, heads, T, D/heads)`` (k transposed for the scores), ``softmax(q k^T * scale + mask) v``,
        and the heads merged back. The causal mask is a constant ``(T, T)`` of 0 on and below the
        diagonal and -inf above: exactly the spec's, and never a whole row of -inf (the diagonal
        stays), so the softmax is defined."""
        steps, width = shape
        size = width // layer.heads
        qkv = self.op("Add", [self.op("MatMul", [x, self.parameter(f"{path}.qkv_kernel")], f"{path}/qkv"),
                              self.parameter(f"{path}.qkv_bias")], f"{path}/qkv")
        q, k, v = self.node("Split", [qkv], f"{path}/qkv", outputs=3, axis=-1, num_outputs=3)
        split = self.constant(f"{path}.heads_shape", np.array([KEEP_DIM, KEEP_DIM, layer.heads, size], np.int64))

        def heads(part: str, name: str, perm: list[int]) -> str:  # (N, T, D) -> (N, T, heads, D/heads), permuted
            reshaped = self.op("Reshape", [part, split], f"{path}/{name}")
            return self.op("Transpose", [reshaped], f"{path}/{name}", perm=perm)

        q, k, v = heads(q, "q", [0, 2, 1, 3]), heads(k, "k", [0, 2, 3, 1]), heads(v, "v", [0, 2, 1, 3])  # k: k^T
        scale = self.constant(f"{path}.scale", np.array(1.0 / math.sqrt(size), self.dtype))
        scores = self.op("Mul", [self.op("MatMul", [q, k], f"{path}/scores"), scale], f"{path}/scores")
        if layer.causal:
            mask = np.triu(np.full((steps, steps), -np.inf, self.dtype), k=1)
            scores = self.op("Add", [scores, self.constant(f"{path}.causal_mask", mask)], f"{path}/scores")
        probabilities = self.op("Softmax", [scores], path, axis=-1)
        mixed = self.op("Transpose", [self.op("MatMul", [probabilities, v], f"{path}/mix")], f"{path}/mix",
                        perm=[0, 2, 1, 3])
        return self.op("Reshape", [mixed, self.constant(f"{path}.merged_shape",
                                                        np.array([KEEP_DIM, KEEP_DIM, width], np.int64))], path)

    def _tied_output(self, layer: TiedOutput, x: str, path: str) -> str:
        """``x @ table^T`` through the tied Embedding's own initializer (one initializer, read by its
        Gather and here): a Transpose the runtime folds into a constant, and a MatMul."""
        tied = self.handles.get(f"{layer.tied_to}.table")
        if tied is None:
            raise Unsupported(f"the ONNX graph writer builds a tied output only after its Embedding {layer.tied_to!r}")
        table = self.op("Transpose", [tied[0]], f"{path}/table", perm=[1, 0])
        return self.op("MatMul", [x, table], path)

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
        """A shared int64 constant ``[axis]`` (Squeeze's axes; Slice's axes and its start 0)."""
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
    each canonical parameter's slot in them (``fused_attention``: see GraphBuilder)."""

    def __init__(self, network: Network, dtype: np.dtype[Any], batch_size: int, fused_attention: bool = False) -> None:
        weight_bytes = sum(math.prod(spec.shape) for spec in parameter_specs(network)) * dtype.itemsize
        if weight_bytes >= PROTOBUF_LIMIT_BYTES:
            raise Unsupported(
                f"the ONNX model would hold {weight_bytes / 2**30:.1f} GiB of weights, over protobuf's 2 GiB; "
                "the ONNX backends keep weights inside the model"
            )
        self.proto = new_model("dlarena")
        graph = self.proto.graph
        builder = GraphBuilder(network, dtype, graph, fused_attention)
        out = builder.batch_major(builder.sequence(network.layers, Value(INPUT_NAME), network.input_shape, ""),
                                  "output")
        for domain, version in builder.domains.items():
            self.proto.opset_import.append(helper.make_opsetid(domain, version))
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
    again after ``stale`` is set by a write. ``fused_attention``: whether the runtime takes
    ``com.microsoft.Attention`` (GraphBuilder)."""

    conventions = kernel.Conventions(recurrent_kernel="out_in", lstm_gates=layout.LSTM_ONNX,
                                     gru_gates=layout.GRU_KERAS)
    runtime = "this runtime"  # its name in the messages of what it cannot do
    fused_attention = False

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        self.graph = SpecGraph(self.network, self.dtype, batch_size, self.fused_attention)
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
