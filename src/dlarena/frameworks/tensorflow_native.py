"""TensorFlow 2 without Keras: ``tf.Variable`` parameters, ``tf.nn`` ops and ``tf.function`` graphs
(``tensorflow``), or the same graphs compiled by XLA with ``jit_compile=True`` (``tensorflow-xla``).

Only a worker process imports this module, after it has set thread limits and CPU affinity. The
network is a tree of ``tf.Module`` objects built from the spec, the way TensorFlow's guides write a
model without Keras; the whole train step (forward, ``tf.GradientTape``, gradient clipping and the
update through TensorFlow's own training ops) is one ``tf.function`` with a fixed input signature, so
it is traced once and then runs as one graph (or one XLA executable) per call.

Images are channels-last (NHWC) inside: TensorFlow's CPU convolutions support no other layout. The
synthetic batch is transposed once at prepare time, the accuracy scenario's real batches as they are
fed, and canonical weights are converted with ``layout.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dlarena.frameworks import layout
from dlarena.frameworks.base import Parity, StepRequest, Unavailable, Unsupported, require, require_check_precision
from dlarena.spec import Init, Network, Optimizer, Recipe, Workload
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
from dlarena.spec.weights import ParamSpec, layer_params

# TensorFlow's C++ logging reads its level once, when the library loads: set it before the import so
# that INFO and WARNING lines (XLA service start-up, cluster compilation notices) stay off stderr.
# The oneDNN notice of tensorflow/core/util/port.cc is written before absl logging is initialised
# and ignores this level; only TF_ENABLE_ONEDNN_OPTS=0 silences it, which would change the kernels.
_LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
_ERRORS_ONLY = "2"
os.environ.setdefault(_LOG_LEVEL_VARIABLE, _ERRORS_ONLY)

import tensorflow as tf  # noqa: E402

DEVICES: tuple[str, ...] = ("cpu", "cuda")

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
XLA_FLAGS_VARIABLE = "TF_XLA_FLAGS"

Tensor = Any  # tf.Tensor: TensorFlow ships no type information
Variable = Any  # tf.Variable

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": tf.nn.relu, "sigmoid": tf.math.sigmoid, "tanh": tf.math.tanh,
}
_BIAS_ROLES = frozenset({"bias", "input_bias", "recurrent_bias"})


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


# --------------------------------------------------------------------------------------------------
# Parameters: created in canonical order, initialised per recipe, bound to their canonical names


def _unchanged(array: np.ndarray) -> np.ndarray:
    return array


@dataclass(frozen=True)
class Binding:
    """One canonical parameter: its TensorFlow variable and the layout conversions both ways."""

    name: str
    variable: Variable
    to_tf: Callable[[np.ndarray], np.ndarray]
    from_tf: Callable[[np.ndarray], np.ndarray]


def _fans(spec: ParamSpec) -> tuple[int, int]:
    """Fan-in and fan-out as PyTorch's initialisers count them for the canonical parameter.

    Convolutions: ``in*kh*kw`` and ``out*kh*kw``. Matrices stored ``(in, out)`` canonically (dense and
    recurrent kernels): rows and columns. The embedding table ``(vocab, dim)`` is stored the same way
    in PyTorch, which takes its second axis as the fan-in.
    """
    if len(spec.shape) == 4:
        receptive = spec.shape[2] * spec.shape[3]
        return spec.shape[1] * receptive, spec.shape[0] * receptive
    if spec.role == "table":
        return spec.shape[1], spec.shape[0]
    return spec.shape[0], spec.shape[1]


class Parameters:
    """Creates a network's variables in canonical order (the builder walks the spec as
    ``weights.walk`` does) and remembers how each maps to its canonical name and layout."""

    def __init__(self, init: Init, rng: Any, dtype: tf.DType) -> None:
        self.init = init
        self.rng = rng  # tf.random.Generator
        self.dtype = dtype
        self.bindings: list[Binding] = []

    def _initial(self, spec: ParamSpec, shape: Shape) -> Tensor:
        """Biases zero, batch norm gamma one and beta zero, the rest as the recipe says.

        ``framework_default`` is TensorFlow's own default: ``tf.compat.v1.get_variable`` initialises
        with ``glorot_uniform`` (and biases are zero), so that is what it means here.
        """
        init, dtype = self.init, self.dtype
        if spec.role == "gamma":
            return tf.ones(shape, dtype)
        if spec.role == "beta":
            return tf.zeros(shape, dtype)
        if init.name == "uniform":  # every parameter, biases too (TF's PTB and DLBench FCN models)
            return self.rng.uniform(shape, -init.scale, init.scale, dtype)
        if spec.role in _BIAS_ROLES:
            return tf.zeros(shape, dtype)
        fan_in, fan_out = _fans(spec)
        if init.name in ("glorot_uniform", "framework_default"):
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            return self.rng.uniform(shape, -limit, limit, dtype)
        if init.name == "he_normal":  # PyTorch's kaiming_normal_: not truncated, gain sqrt(2)
            return self.rng.normal(shape, stddev=math.sqrt(2.0 / fan_in), dtype=dtype)
        raise Unsupported(f"the TensorFlow backend does not know the initialisation {init.name!r}")

    def create(
        self,
        spec: ParamSpec,
        shape: Shape | None = None,
        to_tf: Callable[[np.ndarray], np.ndarray] = _unchanged,
        from_tf: Callable[[np.ndarray], np.ndarray] = _unchanged,
    ) -> Variable:
        """The variable for ``spec``, of TensorFlow ``shape`` (the canonical one unless given)."""
        tf_shape = spec.shape if shape is None else shape
        variable = tf.Variable(self._initial(spec, tf_shape), name=spec.name.replace(".", "_"))
        self.bindings.append(Binding(spec.name, variable, to_tf, from_tf))
        return variable


# --------------------------------------------------------------------------------------------------
# Layers as tf.Module objects; `training` is a Python bool, fixed when a step function is traced


class Module(tf.Module):  # type: ignore[misc]
    """A layer: ``module(x, training)`` maps a batch (channels-last images) to a batch."""

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        raise NotImplementedError


class SequenceModule(Module):
    def __init__(self, layers: Sequence[Module]) -> None:
        super().__init__()
        self.layers = list(layers)

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        for layer in self.layers:
            x = layer(x, training)
        return x


class ResidualModule(Module):
    """``body(x) + shortcut(x)``; no shortcut module means the identity."""

    def __init__(self, body: Module, shortcut: Module | None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        return self.body(x, training) + (self.shortcut(x, training) if self.shortcut is not None else x)


class ConcatModule(Module):
    """Branches over the same input, concatenated along the channel axis (last, channels-last)."""

    def __init__(self, branches: Sequence[Module]) -> None:
        super().__init__()
        self.branches = list(branches)

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        return tf.concat([branch(x, training) for branch in self.branches], axis=-1)


class DenseModule(Module):
    """Affine map over the last axis; a sequence is folded into the rows of one matrix product."""

    def __init__(self, kernel: Variable, bias: Variable | None) -> None:
        super().__init__()
        self.kernel = kernel
        self.bias = bias

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        inner = x.shape[1:-1]
        if inner:
            x = tf.reshape(x, [-1, x.shape[-1]])
        y = tf.matmul(x, self.kernel)
        if self.bias is not None:
            y = tf.nn.bias_add(y, self.bias)  # MatMul + BiasAdd: one fused oneDNN kernel after Grappler
        if inner:
            y = tf.reshape(y, [-1, *inner, y.shape[-1]])
        return y


def _same_matches(size: int, kernel: int, stride: int, padding: int) -> bool:
    """Whether TensorFlow's SAME padding gives exactly the windows of a symmetric ``padding``: the same
    output size and the same padding before the first window (what SAME adds after the last
    window is then exactly what those windows reach)."""
    out = (size + 2 * padding - kernel) // stride + 1
    same_out = -(-size // stride)
    same_total = max((same_out - 1) * stride + kernel - size, 0)
    return out == same_out and same_total // 2 == padding


def _window_padding(
    spatial: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[str, list[list[int]] | None]:
    """The padding argument for a windowed op, plus an explicit pad to apply first where needed.

    VALID without padding; SAME where it is the same windows; otherwise a pad, then VALID. The
    explicit ``paddings`` form of tf.nn.conv2d would also do, but it misses TensorFlow's oneDNN
    convolution: a pad followed by VALID measured 1.3-1.6x faster training steps on alexnet-small and
    karmanov-cnn-small, and SAME (where it applies) faster still.
    """
    if padding == (0, 0):
        return "VALID", None
    if all(_same_matches(*dims) for dims in zip(spatial, kernel, stride, padding, strict=True)):
        return "SAME", None
    ph, pw = padding
    return "VALID", [[0, 0], [ph, ph], [pw, pw], [0, 0]]


class ConvModule(Module):
    def __init__(self, kernel: Variable, bias: Variable | None, stride: tuple[int, int],
                 padding: tuple[str, list[list[int]] | None]) -> None:
        super().__init__()
        self.kernel = kernel
        self.bias = bias
        self.strides = [1, *stride, 1]
        self.padding, self.pad = padding

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        if self.pad is not None:
            x = tf.pad(x, self.pad)
        y = tf.nn.conv2d(x, self.kernel, strides=self.strides, padding=self.padding)
        return tf.nn.bias_add(y, self.bias) if self.bias is not None else y


class PoolModule(Module):
    """Max or average pooling. Padded positions count as minus infinity for max and as zeros for the
    average (``count_include_pad``): an explicit pad with that value, then VALID. Max pooling uses
    SAME instead where it gives the same windows, since TensorFlow's SAME max pool ignores padding;
    its SAME average pool excludes padding from the count, so average pooling always pads."""

    def __init__(self, is_max: bool, kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[str, list[list[int]] | None]) -> None:
        super().__init__()
        self.is_max = is_max
        self.ksize = [1, *kernel, 1]
        self.strides = [1, *stride, 1]
        self.padding, self.pad = padding

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        if self.pad is not None:
            x = tf.pad(x, self.pad, constant_values=-math.inf if self.is_max else 0.0)
        if self.is_max:
            return tf.nn.max_pool2d(x, ksize=self.ksize, strides=self.strides, padding=self.padding)
        return tf.nn.avg_pool2d(x, ksize=self.ksize, strides=self.strides, padding=self.padding)


class GlobalAvgPoolModule(Module):
    def __call__(self, x: Tensor, training: bool) -> Tensor:
        return tf.reduce_mean(x, axis=[1, 2])


class BatchNormModule(Module):
    """Batch norm over the last axis, in training with the batch statistics and running averages
    updated as PyTorch does: weight ``momentum`` on the new statistic, unbiased batch variance.

    Two forms, whichever measured faster (resnet50-small, batch 32): the FusedBatchNormV3 kernel in
    TensorFlow graphs (as fast as or faster than separate ops), and tf.nn.moments with
    tf.nn.batch_normalization under XLA, which fuses those element-wise ops itself and ran the train
    step 1.2-2x faster than with its expansion of the fused op. The fused op is called raw
    rather than through ``tf.compat.v1.nn.fused_batch_norm``, which raises epsilon to 1.001e-5 for
    cuDNN's sake; its ``exponential_avg_factor`` is PyTorch's momentum and the variance it returns for
    the running average is the unbiased one.
    """

    def __init__(self, gamma: Variable, beta: Variable, eps: float, momentum: float, fused: bool) -> None:
        super().__init__()
        self.gamma = gamma
        self.beta = beta
        self.eps = eps
        self.momentum = momentum
        self.fused = fused
        channels = gamma.shape[0]
        self.mean = tf.Variable(tf.zeros([channels], gamma.dtype), trainable=False, name="running_mean")
        self.variance = tf.Variable(tf.ones([channels], gamma.dtype), trainable=False, name="running_variance")

    def reset_running_stats(self) -> None:
        self.mean.assign(tf.zeros_like(self.mean))
        self.variance.assign(tf.ones_like(self.variance))

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        if not self.fused:
            return self._unfused(x, training)
        vector = x.shape.rank == 2
        x4 = tf.reshape(x, [-1, 1, 1, x.shape[-1]]) if vector else x
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x4, scale=self.gamma, offset=self.beta, mean=self.mean, variance=self.variance,
            epsilon=self.eps, exponential_avg_factor=self.momentum if training else 1.0,
            data_format="NHWC", is_training=training,
        )
        if training:
            self.mean.assign(mean)
            self.variance.assign(variance)
        return tf.reshape(y, [-1, x.shape[-1]]) if vector else y

    def _unfused(self, x: Tensor, training: bool) -> Tensor:
        if not training:
            return tf.nn.batch_normalization(x, self.mean, self.variance, self.beta, self.gamma, self.eps)
        axes = list(range(x.shape.rank - 1))
        mean, variance = tf.nn.moments(x, axes=axes)
        count = tf.cast(tf.size(x) // x.shape[-1], variance.dtype)
        momentum = self.momentum
        self.mean.assign((1.0 - momentum) * self.mean + momentum * tf.stop_gradient(mean))
        unbiased = tf.stop_gradient(variance) * count / (count - 1.0)
        self.variance.assign((1.0 - momentum) * self.variance + momentum * unbiased)
        return tf.nn.batch_normalization(x, mean, variance, self.beta, self.gamma, self.eps)


class ActivationModule(Module):
    def __init__(self, function: str) -> None:
        super().__init__()
        self.function = _ACTIVATIONS[function]

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        return self.function(x)


class DropoutModule(Module):
    """Inverted dropout in training, drawing from a seeded ``tf.random.Generator`` (whose state is a
    variable, so the mask changes every step and the op compiles under XLA)."""

    def __init__(self, rate: float, rng: Any) -> None:
        super().__init__()
        self.rate = rate
        self.rng = rng

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        if not training or self.rate == 0.0:
            return x
        return tf.nn.experimental.general_dropout(x, self.rate, uniform_sampler=self.rng.uniform)


class FlattenModule(Module):
    """Row-major flattening. Channels-last order when the next layer is a Dense whose kernel rows
    were permuted to match (layout.flattened_rows_channels_last); otherwise the feature map is put
    back in the canonical channels-first order first."""

    def __init__(self, channels_first: bool) -> None:
        super().__init__()
        self.channels_first = channels_first

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        if self.channels_first and x.shape.rank == 4:
            x = tf.transpose(x, [0, 3, 1, 2])
        return tf.reshape(x, [-1, math.prod(x.shape[1:])])


class EmbeddingModule(Module):
    def __init__(self, table: Variable) -> None:
        super().__init__()
        self.table = table

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        return tf.nn.embedding_lookup(self.table, x)


class RecurrentModule(Module):
    """Stacked LSTM or GRU, zero initial state, cells written out exactly as the spec's reference.

    Per layer, the input projection of every time step is one matrix product (time-major rows);
    only the recurrent product and the gate arithmetic run inside ``tf.scan``, a while loop in the
    graph that XLA compiles into one loop.
    """

    def __init__(self, is_lstm: bool, hidden: int, cells: Sequence[tuple[Variable, ...]],
                 return_sequences: bool) -> None:
        super().__init__()
        self.is_lstm = is_lstm
        self.hidden = hidden
        self.cells = list(cells)  # LSTM: (w_in, w_rec, bias); GRU: (w_in, w_rec, b_in, b_rec)
        self.return_sequences = return_sequences

    def _lstm_layer(self, projected: Tensor, zeros: Tensor, w_rec: Variable) -> Tensor:
        def step(state: tuple[Tensor, Tensor], x_t: Tensor) -> tuple[Tensor, Tensor]:
            h, c = state
            i, f, g, o = tf.split(x_t + tf.matmul(h, w_rec), 4, axis=1)
            c = tf.math.sigmoid(f) * c + tf.math.sigmoid(i) * tf.math.tanh(g)
            h = tf.math.sigmoid(o) * tf.math.tanh(c)
            return h, c

        hs, _ = tf.scan(step, projected, initializer=(zeros, zeros))
        return hs

    def _gru_layer(self, projected: Tensor, zeros: Tensor, w_rec: Variable, b_rec: Variable) -> Tensor:
        def step(h: Tensor, x_t: Tensor) -> Tensor:
            xr, xz, xn = tf.split(x_t, 3, axis=1)
            hr, hz, hn = tf.split(tf.nn.bias_add(tf.matmul(h, w_rec), b_rec), 3, axis=1)
            r, z = tf.math.sigmoid(xr + hr), tf.math.sigmoid(xz + hz)
            n = tf.math.tanh(xn + r * hn)
            return (1.0 - z) * n + z * h

        return tf.scan(step, projected, initializer=zeros)

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        steps = x.shape[1]
        seq = tf.transpose(x, [1, 0, 2])  # time-major: the scan walks the first axis
        zeros = tf.zeros([tf.shape(seq)[1], self.hidden], seq.dtype)
        for cell in self.cells:
            w_in, w_rec, b_in = cell[0], cell[1], cell[2]
            rows = tf.nn.bias_add(tf.matmul(tf.reshape(seq, [-1, seq.shape[-1]]), w_in), b_in)
            projected = tf.reshape(rows, [steps, -1, w_in.shape[1]])
            if self.is_lstm:
                seq = self._lstm_layer(projected, zeros, w_rec)
            else:
                seq = self._gru_layer(projected, zeros, w_rec, cell[3])
        if not self.return_sequences:
            return seq[-1]
        return tf.transpose(seq, [1, 0, 2])


# --------------------------------------------------------------------------------------------------
# Spec -> modules


# Layers that may sit between a Flatten and the Dense that reads it without caring about the order
# of the features (element-wise, no parameters).
_ORDER_FREE = (Activation, Dropout)


class Builder:
    """Builds the module tree of a network; its variables come out in canonical order."""

    def __init__(self, params: Parameters, dropout_rng: Any, fused_batch_norm: bool) -> None:
        self.params = params
        self.dropout_rng = dropout_rng
        self.fused_batch_norm = fused_batch_norm

    def sequence(self, layers: tuple[Layer, ...], shape: Shape, prefix: str) -> SequenceModule:
        modules: list[Module] = []
        rows_chw: Shape | None = None  # a Flatten left its features channels-last: the next Dense permutes
        for index, layer in enumerate(layers):
            path = f"{prefix}{index}"
            if isinstance(layer, Flatten):
                reader = next((later for later in layers[index + 1:] if not isinstance(later, _ORDER_FREE)), None)
                channels_last = len(shape) == 3 and isinstance(reader, Dense)
                modules.append(FlattenModule(channels_first=not channels_last))
                rows_chw = shape if channels_last else None
            elif isinstance(layer, Dense):
                modules.append(self.dense(layer, shape, path, rows_chw))
                rows_chw = None
            else:
                modules.append(self.layer(layer, shape, path))
            shape = layer.out_shape(shape)
        return SequenceModule(modules)

    def dense(self, layer: Dense, shape: Shape, path: str, rows_chw: Shape | None) -> DenseModule:
        specs = layer_params(path, layer, shape)
        if rows_chw is None:
            kernel = self.params.create(specs[0])
        else:
            chw = rows_chw
            kernel = self.params.create(
                specs[0],
                to_tf=lambda array: layout.flattened_rows_channels_last(array, chw),
                from_tf=lambda array: layout.flattened_rows_channels_last(array, chw, inverse=True),
            )
        bias = self.params.create(specs[1]) if layer.bias else None
        return DenseModule(kernel, bias)

    def layer(self, layer: Layer, shape: Shape, path: str) -> Module:
        """The module for one spec layer whose per-sample input shape (canonical) is ``shape``."""
        if isinstance(layer, Conv2D):
            specs = layer_params(path, layer, shape)
            out, n_in, kh, kw = specs[0].shape
            kernel = self.params.create(
                specs[0], shape=(kh, kw, n_in, out), to_tf=layout.conv_kernel_hwio,
                from_tf=lambda array: layout.conv_kernel_hwio(array, inverse=True),
            )
            bias = self.params.create(specs[1]) if layer.bias else None
            stride = _pair(layer.stride)
            padding = _window_padding((shape[1], shape[2]), (kh, kw), stride, _pair(layer.padding))
            return ConvModule(kernel, bias, stride, padding)
        if isinstance(layer, MaxPool2D | AvgPool2D):
            is_max, window = isinstance(layer, MaxPool2D), _pair(layer.kernel)
            stride = _pair(layer.stride if layer.stride is not None else layer.kernel)
            padding = _window_padding((shape[1], shape[2]), window, stride, _pair(layer.padding))
            if not is_max and padding[0] == "SAME":
                ph, pw = _pair(layer.padding)
                padding = ("VALID", [[0, 0], [ph, ph], [pw, pw], [0, 0]])
            return PoolModule(is_max, window, stride, padding)
        if isinstance(layer, GlobalAvgPool2D):
            return GlobalAvgPoolModule()
        if isinstance(layer, BatchNorm):
            gamma, beta = (self.params.create(spec) for spec in layer_params(path, layer, shape))
            return BatchNormModule(gamma, beta, layer.eps, layer.momentum, self.fused_batch_norm)
        if isinstance(layer, Activation):
            return ActivationModule(layer.function)
        if isinstance(layer, Dropout):
            return DropoutModule(layer.rate, self.dropout_rng)
        if isinstance(layer, Embedding):
            return EmbeddingModule(self.params.create(layer_params(path, layer, shape)[0]))
        if isinstance(layer, LSTM | GRU):
            variables = [self.params.create(spec) for spec in layer_params(path, layer, shape)]
            per_layer = len(variables) // layer.layers
            cells = [tuple(variables[k * per_layer:(k + 1) * per_layer]) for k in range(layer.layers)]
            return RecurrentModule(isinstance(layer, LSTM), layer.hidden, cells, layer.return_sequences)
        if isinstance(layer, Residual):
            body = self.sequence(layer.body, shape, f"{path}.body.")
            shortcut = self.sequence(layer.shortcut, shape, f"{path}.shortcut.") if layer.shortcut else None
            return ResidualModule(body, shortcut)
        if isinstance(layer, Concat):
            return ConcatModule([
                self.sequence(branch, shape, f"{path}.branches.{index}.")
                for index, branch in enumerate(layer.branches)
            ])
        if isinstance(layer, Dense | Flatten):  # reached from a Residual or Concat branch via sequence()
            raise AssertionError("Dense and Flatten are built by Builder.sequence")
        raise Unsupported(f"the TensorFlow backend has no translation for the layer type {type(layer).__name__}")


@dataclass
class Model:
    """The network's root module and its canonical parameter bindings."""

    root: SequenceModule
    bindings: list[Binding]

    @property
    def variables(self) -> list[Variable]:
        """The trainable variables in canonical order."""
        return [binding.variable for binding in self.bindings]

    def trainable_params(self) -> int:
        return sum(int(v.shape.num_elements()) for v in self.root.trainable_variables)

    def batch_norms(self) -> list[BatchNormModule]:
        return [m for m in self.root.submodules if isinstance(m, BatchNormModule)]


def build_model(
    network: Network, init: Init, init_rng: Any, dropout_rng: Any, xla: bool, dtype: tf.DType = tf.float32
) -> Model:
    """The network with every variable in ``dtype``. FusedBatchNormV3 has no float64 CPU kernel (float,
    half and bfloat16 only), so float64 takes the unfused form, the same function, as under XLA."""
    params = Parameters(init, init_rng, dtype)
    fused_batch_norm = not xla and dtype == tf.float32
    root = Builder(params, dropout_rng, fused_batch_norm).sequence(network.layers, network.input_shape, "")
    return Model(root, params.bindings)


# --------------------------------------------------------------------------------------------------
# Loss and optimizers


def make_loss(network: Network, recipe: Recipe) -> Callable[[Tensor, Tensor], Tensor]:
    """Softmax cross-entropy on logits, reduced as the recipe says (token labels work at any rank)."""
    sum_over_batch = recipe.loss_reduction == "sum_over_batch"

    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        if sum_over_batch:
            return tf.reduce_sum(losses) / tf.cast(tf.shape(logits)[0], losses.dtype)
        return tf.reduce_mean(losses)

    return loss


def _dense(gradient: Tensor) -> Tensor:
    """An embedding's gradient comes as IndexedSlices; PyTorch's (non-sparse) nn.Embedding has a dense
    one, and its optimizers decay every row's state, so the update here is dense too."""
    return tf.convert_to_tensor(gradient) if isinstance(gradient, tf.IndexedSlices) else gradient


class OptimizerModule(tf.Module):  # type: ignore[misc]
    """The recipe's optimizer with PyTorch's semantics, through TensorFlow's fused training ops.

    * SGD: ResourceApplyGradientDescent. With momentum: ResourceApplyMomentum, ``accum = m*accum + g;
      w -= lr*accum`` (Nesterov: ``w -= lr*g + lr*m*accum``), which is exactly PyTorch's SGD with
      dampening 0 (its buffer starts at the first gradient, the same as m*0 + g).
    * Adam: ResourceApplyAdam. TensorFlow adds epsilon to sqrt(v) *after* folding the bias
      corrections into the learning rate ("epsilon hat"); PyTorch adds it to sqrt(v / (1 - beta2^t)).
      Passing ``eps * sqrt(1 - beta2^t)`` as the op's epsilon makes the two identical.
    * Adadelta: ResourceApplyAdadelta has PyTorch's formula (epsilon inside both square roots).
    * RMSprop: TensorFlow's ResourceApplyRMSProp divides by ``sqrt(ms + eps)``, PyTorch by
      ``sqrt(ms) + eps``; the update is written with tf ops instead, as PyTorch computes it.

    Weight decay is PyTorch's coupled L2: ``g + wd*w`` inside the step (after any clipping). Every op
    used has an XLA kernel, so the whole update compiles with the step.
    """

    def __init__(self, spec: Optimizer, variables: list[Variable]) -> None:
        super().__init__()
        self.spec = spec
        self.targets = variables

        def slots(name: str) -> list[Variable]:
            return [tf.Variable(tf.zeros_like(v), trainable=False, name=f"{name}_{i}") for i, v in enumerate(variables)]

        self.first: list[Variable] = []
        self.second: list[Variable] = []
        if spec.name == "sgd" and spec.momentum:
            self.first = slots("momentum")
        elif spec.name == "adam":
            self.first, self.second = slots("m"), slots("v")
        elif spec.name == "adadelta":
            self.first, self.second = slots("accum"), slots("accum_update")
        elif spec.name == "rmsprop":
            self.first = slots("square_avg")
        elif spec.name != "sgd":
            raise Unsupported(f"the TensorFlow backend does not know the optimizer {spec.name!r}")
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")

    def apply(self, gradients: list[Tensor]) -> None:
        spec = self.spec
        if spec.weight_decay:
            gradients = [g + spec.weight_decay * v for g, v in zip(gradients, self.targets, strict=True)]
        if spec.name == "sgd":
            self._sgd(gradients)
        elif spec.name == "adam":
            step = tf.cast(self.iterations.assign_add(1), tf.float32)
            beta1_power, beta2_power = tf.pow(spec.beta1, step), tf.pow(spec.beta2, step)
            epsilon = spec.eps * tf.sqrt(1.0 - beta2_power)
            for v, m, s, g in zip(self.targets, self.first, self.second, gradients, strict=True):
                tf.raw_ops.ResourceApplyAdam(
                    var=v.handle, m=m.handle, v=s.handle, beta1_power=beta1_power, beta2_power=beta2_power,
                    lr=spec.lr, beta1=spec.beta1, beta2=spec.beta2, epsilon=epsilon, grad=g,
                )
        elif spec.name == "adadelta":
            for v, accum, update, g in zip(self.targets, self.first, self.second, gradients, strict=True):
                tf.raw_ops.ResourceApplyAdadelta(
                    var=v.handle, accum=accum.handle, accum_update=update.handle, lr=spec.lr, rho=spec.rho,
                    epsilon=spec.eps, grad=g,
                )
        else:  # rmsprop
            for v, square_avg, g in zip(self.targets, self.first, gradients, strict=True):
                mean_square = square_avg.assign(spec.rho * square_avg + (1.0 - spec.rho) * tf.square(g))
                v.assign_sub(spec.lr * g / (tf.sqrt(mean_square) + spec.eps))

    def _sgd(self, gradients: list[Tensor]) -> None:
        spec = self.spec
        if not spec.momentum:
            for v, g in zip(self.targets, gradients, strict=True):
                tf.raw_ops.ResourceApplyGradientDescent(var=v.handle, alpha=spec.lr, delta=g)
            return
        for v, accum, g in zip(self.targets, self.first, gradients, strict=True):
            tf.raw_ops.ResourceApplyMomentum(
                var=v.handle, accum=accum.handle, lr=spec.lr, grad=g, momentum=spec.momentum,
                use_nesterov=spec.nesterov,
            )


# --------------------------------------------------------------------------------------------------
# Runners


def _onednn_enabled() -> bool | None:
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a private module: absent from some builds
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def _no_sync() -> None:
    return None


class _Runner:
    """What train and infer runners share: the model, its batch, the device and the parity record."""

    def __init__(self, model: Model, inputs: Tensor, labels: Tensor, device: str, xla: bool) -> None:
        self.model = model
        self.inputs = inputs
        self.labels = labels
        self.device = device
        self.xla = xla
        # On the CPU a function call returns when its graph has run; a GPU's kernels may still be queued.
        self._sync: Callable[[], None] = tf.test.experimental.sync_devices if device == "cuda" else _no_sync
        self._image = inputs.shape.rank == 4

    def sync(self) -> None:
        self._sync()

    def trainable_params(self) -> int:
        return self.model.trainable_params()

    def parity(self) -> Parity:
        details: dict[str, Any] = {
            "tensorflow": tf.__version__,
            "jit_compile": self.xla,
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            # TensorFlow's oneDNN kernels serve graph execution; an XLA executable has its own code.
            "onednn_tf_kernels": _onednn_enabled(),
            ONEDNN_VARIABLE: os.environ.get(ONEDNN_VARIABLE),
            XLA_FLAGS_VARIABLE: os.environ.get(XLA_FLAGS_VARIABLE),
            "batch_norm": "tf.nn.moments + batch_normalization" if self.xla else "FusedBatchNormV3",
            "recurrent_loop": "tf.scan",
            "threads_from": "tf.config.threading.get_intra_op_parallelism_threads",
        }
        tf32 = None
        if self.device == "cuda":
            tf32 = bool(tf.config.experimental.is_tensor_float_32_execution_enabled())
            details["device_name"] = tf.config.experimental.get_device_details(
                tf.config.list_physical_devices("GPU")[0]).get("device_name")
        return Parity(
            threads=tf.config.threading.get_intra_op_parallelism_threads(),
            dtype=self.model.variables[0].dtype.name if self.model.variables else None,
            layout="NHWC" if self._image else None,
            execution="xla" if self.xla else "graph",
            tf32=tf32,
            cudnn_benchmark=None,
            details=details,
        )


class TrainRunner(_Runner):
    """One step is one call of the traced train function: forward, loss, gradients, clip, update."""

    def __init__(self, model: Model, inputs: Tensor, labels: Tensor, device: str, xla: bool,
                 recipe: Recipe, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__(model, inputs, labels, device, xla)
        variables = model.variables
        optimizer = OptimizerModule(recipe.optimizer, variables)
        clip_norm = recipe.grad_clip_norm
        root = model.root

        def train_step(x: Tensor, y: Tensor) -> Tensor:
            with tf.GradientTape() as tape:
                loss = loss_fn(root(x, True), y)
            gradients = [_dense(g) for g in tape.gradient(loss, variables)]
            if clip_norm is not None:
                # PyTorch's clip_grad_norm_ scales by clip/(norm + 1e-6), TensorFlow by clip/norm.
                gradients, _ = tf.clip_by_global_norm(gradients, clip_norm)
            optimizer.apply(gradients)
            return loss

        signature = [tf.TensorSpec(inputs.shape, inputs.dtype), tf.TensorSpec(labels.shape, labels.dtype)]
        function = tf.function(train_step, input_signature=signature, jit_compile=xla, autograph=False)
        # The concrete function skips tf.function's per-call argument matching.
        self._step = function.get_concrete_function()
        self.optimizer = optimizer
        self.loss: Tensor | None = None  # the last step's loss, kept without a copy to the host

    def step(self) -> None:
        self.loss = self._step(self.inputs, self.labels)


class InferRunner(_Runner):
    """One step is one call of the traced forward function in inference mode."""

    def __init__(self, model: Model, inputs: Tensor, labels: Tensor, device: str, xla: bool) -> None:
        super().__init__(model, inputs, labels, device, xla)
        root = model.root

        def infer_step(x: Tensor) -> Tensor:
            return root(x, False)

        signature = [tf.TensorSpec(inputs.shape, inputs.dtype)]
        function = tf.function(infer_step, input_signature=signature, jit_compile=xla, autograph=False)
        self._infer = function.get_concrete_function()
        self.output: Tensor | None = None  # the last step's logits

    def step(self) -> None:
        self.output = self._infer(self.inputs)


class Trainer(_Runner):
    """The train runner fed real batches (the accuracy scenario), predicting with an infer runner's
    forward over the same model; see base.Trainer. Both steps are the runners' traced functions,
    whose input signatures are the fixed batch shape, so new batches do not retrace."""

    def __init__(self, runner: TrainRunner, predictor: InferRunner, network: Network, device: str) -> None:
        super().__init__(runner.model, runner.inputs, runner.labels, runner.device, runner.xla)
        self.runner = runner
        self.predictor = predictor
        self.network = network
        self.tf_device = device  # "/CPU:0" or "/GPU:0": where the batches are put

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        load_canonical(self.model, weights)

    def train_step(self, inputs: np.ndarray, labels: np.ndarray) -> Tensor:
        with tf.device(self.tf_device):
            self.runner.inputs = tf_inputs(self.network, inputs)
            self.runner.labels = tf_labels(labels)
        self.runner.step()
        assert self.runner.loss is not None
        return self.runner.loss  # a tensor: float() reads it, waiting for the device only then

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        with tf.device(self.tf_device):
            self.predictor.inputs = tf_inputs(self.network, inputs)
        self.predictor.step()
        assert self.predictor.output is not None
        return np.asarray(self.predictor.output.numpy())


def synthetic_batch(network: Network, batch_size: int, rng: Any) -> tuple[Tensor, Tensor]:
    """Inputs and labels drawn once on the device; images transposed to NHWC here, not in the step."""
    shape = [batch_size, *network.input_shape]
    if network.input_kind == "tokens":
        inputs = rng.uniform(shape, 0, network.vocab, dtype=tf.int32)
    else:
        inputs = rng.normal(shape)
        if len(shape) == 4:
            inputs = tf.transpose(inputs, [0, 2, 3, 1])
    labels = rng.uniform([batch_size, *network.label_shape], 0, network.classes, dtype=tf.int32)
    return inputs, labels


# --------------------------------------------------------------------------------------------------
# Canonical arrays in (the Checker and the Trainer) and out (verification)


def load_canonical(model: Model, weights: dict[str, np.ndarray]) -> None:
    """Copy canonical weights in, converted to TensorFlow's layouts; batch norm's running
    statistics restart at mean 0, variance 1."""
    for binding in model.bindings:
        binding.variable.assign(np.ascontiguousarray(binding.to_tf(weights[binding.name])))
    for norm in model.batch_norms():
        norm.reset_running_stats()


def tf_inputs(network: Network, inputs: np.ndarray) -> Tensor:
    """A canonical batch as the network takes it: images channels-last, token ids int32 (the
    type the synthetic batch and the traced signatures have)."""
    if network.input_kind == "image":
        return tf.constant(layout.images_channels_last(inputs))
    return tf.constant(inputs.astype(np.int32) if network.input_kind == "tokens" else inputs)


def tf_labels(labels: np.ndarray) -> Tensor:
    return tf.constant(labels.astype(np.int32))


# The initial values a Checker's variables get before load_weights replaces them.
_CHECKER_SEED = 0


class Checker:
    """The network in inference mode with canonical weights; see base.Checker."""

    def __init__(self, workload: Workload, device: str, xla: bool, precision: str) -> None:
        self.network, self.recipe = workload.network, workload.recipe
        self.device = device
        dtype = tf.as_dtype(precision)
        with tf.device(device):
            init_rng, dropout_rng = tf.random.Generator.from_seed(_CHECKER_SEED).split(2)
            self.model = build_model(self.network, self.recipe.init, init_rng, dropout_rng, xla, dtype)
        root, variables, loss_fn = self.model.root, self.model.variables, make_loss(self.network, self.recipe)
        image = self.network.input_kind == "image"
        if image:
            channels, height, width = self.network.input_shape
            input_shape: Shape = (height, width, channels)
        else:
            input_shape = self.network.input_shape
        input_spec = tf.TensorSpec([None, *input_shape], tf.int32 if self.network.input_kind == "tokens" else dtype)
        label_spec = tf.TensorSpec([None, *self.network.label_shape], tf.int32)

        def forward(x: Tensor) -> Tensor:
            return root(x, False)

        def loss_and_gradients(x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
            with tf.GradientTape() as tape:
                loss = loss_fn(root(x, False), y)
            return loss, [_dense(g) for g in tape.gradient(loss, variables)]

        self._forward = tf.function(forward, input_signature=[input_spec], jit_compile=xla, autograph=False)
        self._gradients = tf.function(
            loss_and_gradients, input_signature=[input_spec, label_spec], jit_compile=xla, autograph=False
        )

    def trainable_params(self) -> int:
        return self.model.trainable_params()

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        load_canonical(self.model, weights)

    def export_weights(self) -> dict[str, np.ndarray]:
        return {b.name: np.array(b.from_tf(b.variable.numpy())) for b in self.model.bindings}

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        with tf.device(self.device):
            return np.asarray(self._forward(tf_inputs(self.network, inputs)).numpy())

    def loss_and_gradients(self, inputs: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        with tf.device(self.device):
            loss, gradients = self._gradients(tf_inputs(self.network, inputs), tf_labels(labels))
        grads = {
            binding.name: np.array(binding.from_tf(gradient.numpy()))
            for binding, gradient in zip(self.model.bindings, gradients, strict=True)
        }
        return float(loss.numpy()), grads


# --------------------------------------------------------------------------------------------------
# Backend


class Backend:
    """TensorFlow 2 graphs through ``tf.function`` (``tensorflow``), or compiled by XLA (``tensorflow-xla``)."""

    def __init__(self, threads: int, xla: bool = False) -> None:
        self.xla = xla
        self.name = "tensorflow-xla" if xla else "tensorflow"
        # Possible only before TensorFlow's runtime starts (its first op); later the pools stay as
        # they are, and the parity record reads back what they are.
        with contextlib.suppress(RuntimeError):
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        # Inter-op threads run independent graph nodes side by side, each parallelising over the
        # intra-op pool. Measured on a 2-core machine at threads=2, train steps at batch 32: an
        # inter-op pool of `threads` ran resnet50-small and googlenet-small 1.1-1.5x faster than a
        # pool of one (branches and independent gradient computations overlap), and fcn5-,
        # karmanov-cnn- and lstm32-small about as fast. This setting wins over the worker's
        # TF_NUM_INTEROP_THREADS=1; the worker's CPU affinity still keeps the cell on `threads` cores.
        with contextlib.suppress(RuntimeError):
            tf.config.threading.set_inter_op_parallelism_threads(threads)

    def version(self) -> str:
        return str(tf.__version__)

    def _device(self, name: str) -> str:
        if name == "cuda":
            if not tf.config.list_physical_devices("GPU"):
                raise Unavailable(f"TensorFlow {tf.__version__} sees no GPU")
            return "/GPU:0"
        if name == "cpu":
            return "/CPU:0"
        raise Unsupported(f"the TensorFlow backend runs on {' or '.join(DEVICES)}, not {name!r}")

    # No flush_denormals: TensorFlow has no switch; its kernels flush subnormals to zero in its own
    # threads, as every cell's probe shows.
    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        with tf.device(self._device(device)):
            product = tf.function(tf.linalg.matmul, jit_compile=self.xla)(tf.constant(a), tf.constant(b))
        result: np.ndarray = product.numpy()
        return result

    def checker(self, workload: Workload, device: str, precision: str = "float32") -> Checker:
        require_check_precision(precision, "TensorFlow")
        return Checker(workload, self._device(device), self.xla, precision)

    def prepare(self, request: StepRequest) -> TrainRunner | InferRunner:
        require(request, "TensorFlow")
        device = self._device(request.device)
        workload = request.workload
        network, recipe = workload.network, workload.recipe
        with tf.device(device):
            init_rng, dropout_rng, data_rng = tf.random.Generator.from_seed(request.seed).split(3)
            model = build_model(network, recipe.init, init_rng, dropout_rng, self.xla)
            inputs, labels = synthetic_batch(network, request.batch_size, data_rng)
            if request.scenario == "infer":
                return InferRunner(model, inputs, labels, request.device, self.xla)
            return TrainRunner(model, inputs, labels, request.device, self.xla, recipe, make_loss(network, recipe))

    def trainer(self, request: StepRequest) -> Trainer:
        runner = self.prepare(replace(request, scenario="train"))
        assert isinstance(runner, TrainRunner)
        device = self._device(request.device)
        with tf.device(device):
            # The inference-mode forward traced over the train runner's model and batch shape.
            predictor = InferRunner(runner.model, runner.inputs, runner.labels, request.device, self.xla)
        return Trainer(runner, predictor, request.workload.network, device)
