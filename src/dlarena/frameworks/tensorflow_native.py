"""TensorFlow 2 without Keras: ``tf.Variable`` parameters, ``tf.nn`` ops and ``tf.function`` graphs
(``tensorflow``), or the same graphs compiled by XLA with ``jit_compile=True`` (``tensorflow-xla``).

Only a worker process imports this module, after it has set thread limits and CPU affinity. The
network is a tree of ``tf.Module`` objects built from the spec, the way TensorFlow's guides write a
model without Keras; the whole train step (forward, ``tf.GradientTape``, gradient clipping and the
update through TensorFlow's own training ops) is one ``tf.function`` with a fixed input signature,
traced once per batch shape (the timed one when the model is built) and called as a concrete
function, so it runs as one graph (or one XLA executable) per call.

Images are channels-last (NHWC) inside: TensorFlow's CPU convolutions support no other layout. The
kernel (kernel.py) supplies the starting weights, the batch (transposed once, not in the step), the
layout conversions and the runners.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dlarena.frameworks import kernel
from dlarena.frameworks.base import Parity, StepRequest, Unavailable, Unsupported
from dlarena.frameworks.precision import widened
from dlarena.frameworks.registry import BFLOAT16_PRECISIONS
from dlarena.spec import Workload
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
from dlarena.spec.reference import GELU_TANH_CUBIC, GELU_TANH_SCALE
from dlarena.spec.weights import layer_params

# TensorFlow's C++ logging reads its level once, when the library loads: set it before the import so
# that INFO and WARNING lines (XLA service start-up, cluster compilation notices) stay off stderr.
# The oneDNN notice of tensorflow/core/util/port.cc is written before absl logging is initialised
# and ignores this level; only TF_ENABLE_ONEDNN_OPTS=0 silences it, which would change the kernels.
_LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
_ERRORS_ONLY = "2"
os.environ.setdefault(_LOG_LEVEL_VARIABLE, _ERRORS_ONLY)

import tensorflow as tf  # noqa: E402

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
XLA_FLAGS_VARIABLE = "TF_XLA_FLAGS"
_TF_DEVICES = {"cpu": "/CPU:0", "cuda": "/GPU:0"}

Tensor = Any  # tf.Tensor: TensorFlow ships no type information
Variable = Any  # tf.Variable

# recipe optimizer -> TensorFlow's fused training op (tf.raw_ops) and its keywords; RMSprop is
# written with tf ops (OptimizerModule says why). Weight decay is applied to the gradient first;
# AdamW's decoupled decay (TensorFlow has no AdamW training op) shrinks the variable before Adam's op.
SPELLING: kernel.OptimizerSpelling = {
    "sgd": ("ResourceApplyGradientDescent", {"lr": "alpha", "weight_decay": "weight_decay"}),
    "sgd_momentum": ("ResourceApplyMomentum", {"lr": "lr", "momentum": "momentum", "nesterov": "use_nesterov",
                                               "weight_decay": "weight_decay"}),
    "adam": ("ResourceApplyAdam", {"lr": "lr", "beta1": "beta1", "beta2": "beta2", "eps": "epsilon",
                                   "weight_decay": "weight_decay"}),
    "adamw": ("ResourceApplyAdam", {"lr": "lr", "beta1": "beta1", "beta2": "beta2", "eps": "epsilon",
                                    "weight_decay": "decoupled_weight_decay"}),
    "adadelta": ("ResourceApplyAdadelta", {"lr": "lr", "rho": "rho", "eps": "epsilon", "weight_decay": "weight_decay"}),
    "rmsprop": ("RMSprop", {"lr": "lr", "rho": "rho", "eps": "eps", "weight_decay": "weight_decay"}),
}
# Each op's state variables (its keywords), one set per parameter, and the keyword of the gradient.
_SLOTS: dict[str, tuple[str, ...]] = {
    "ResourceApplyGradientDescent": (), "ResourceApplyMomentum": ("accum",), "ResourceApplyAdam": ("m", "v"),
    "ResourceApplyAdadelta": ("accum", "accum_update"), "RMSprop": ("square_avg",),
}
_GRADIENT_KEYWORD = {"ResourceApplyGradientDescent": "delta"}


# GELU as tf.nn.gelu computes it, op for op (the same graph in float32), but with its constants in
# the input's precision: tf.nn.gelu casts the Python floats 1/sqrt(2) and 0.044715 to float32 before
# casting them to the input's type, which put float64 GELUs 1e-9 (relative) off the spec.
# The spec's constants (spec/reference.py), so that the oracle and both TensorFlow modules share them.
_GELU_INV_SQRT2 = math.sqrt(0.5)


def gelu(x: Tensor) -> Tensor:
    """The exact GELU, ``x * Phi(x)``, through erfc as tf.nn.gelu writes it: ``0.5 x erfc(-x / sqrt 2)``."""
    return 0.5 * x * tf.math.erfc(-x * _GELU_INV_SQRT2)


def gelu_tanh(x: Tensor) -> Tensor:
    """GPT-2's tanh approximation, ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return 0.5 * x * (1.0 + tf.math.tanh(GELU_TANH_SCALE * (x + GELU_TANH_CUBIC * tf.math.pow(x, 3))))


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": tf.nn.relu, "sigmoid": tf.math.sigmoid, "tanh": tf.math.tanh, "gelu": gelu, "gelu_tanh": gelu_tanh,
}
# The graph ops that are a network's matrix products: their operands' dtype is what the products ran in.
_PRODUCT_OPS = frozenset({"MatMul", "BatchMatMulV2", "BatchMatMulV3", "Conv2D", "Einsum"})


def _like(variable: Variable | Tensor, x: Tensor) -> Tensor:
    """A parameter in the activations' dtype: as it is, or cast to bfloat16 under mixed-bf16 (what
    Keras' autocast variables do: the cast is in the graph, its gradient reaches the float32 variable)."""
    return variable if variable.dtype == x.dtype else tf.cast(variable, x.dtype)


def _wide(dtype: Any) -> Any:
    """Where a 16-bit computation keeps float32: normalisation statistics, softmax and the loss (as
    PyTorch's bfloat16 kernels and Keras' mixed policy do); other dtypes as they are."""
    return tf.float32 if dtype.size < 4 else dtype


# Layers between a Flatten and the Dense that reads it that leave the order of the features as it is
# (kernel.layout_plan skips the same ones).
_ORDER_KEEPING = (Activation, Dropout, Flatten)


# --------------------------------------------------------------------------------------------------
# Layers as tf.Module objects; `training` is a Python bool, fixed when a step function is traced


class Module(tf.Module):  # type: ignore[misc]
    """A layer: ``module(x, training)`` maps a batch (channels-last images) to a batch."""

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        raise NotImplementedError


class FunctionModule(Module):
    """A layer without parameters that is one function in both modes (activations, global pooling)."""

    def __init__(self, function: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.function = function

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        return self.function(x)


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
        y = tf.matmul(x, _like(self.kernel, x))
        if self.bias is not None:
            y = tf.nn.bias_add(y, _like(self.bias, y))  # MatMul + BiasAdd: one fused oneDNN kernel after Grappler
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


Padding = tuple[str, list[list[int]] | None]


def _window_padding(
    spatial: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
    same_allowed: bool = True,
) -> Padding:
    """The padding argument for a windowed op, plus an explicit pad to apply first where needed.

    VALID without padding; SAME where it is the same windows; otherwise a pad, then VALID. The
    explicit ``paddings`` form of tf.nn.conv2d would also do, but it misses TensorFlow's oneDNN
    convolution: a pad followed by VALID measured 1.3-1.6x faster training steps on alexnet-small and
    karmanov-cnn-small, and SAME (where it applies) faster still.
    """
    if padding == (0, 0):
        return "VALID", None
    if same_allowed and all(_same_matches(*dims) for dims in zip(spatial, kernel, stride, padding, strict=True)):
        return "SAME", None
    ph, pw = padding
    return "VALID", [[0, 0], [ph, ph], [pw, pw], [0, 0]]


class ConvModule(Module):
    def __init__(self, kernel: Variable, bias: Variable | None, stride: tuple[int, int], padding: Padding) -> None:
        super().__init__()
        self.kernel = kernel
        self.bias = bias
        self.strides = [1, *stride, 1]
        self.padding, self.pad = padding

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        if self.pad is not None:
            x = tf.pad(x, self.pad)
        y = tf.nn.conv2d(x, _like(self.kernel, x), strides=self.strides, padding=self.padding)
        return tf.nn.bias_add(y, _like(self.bias, y)) if self.bias is not None else y


class PoolModule(Module):
    """Max or average pooling. Padded positions count as minus infinity for max and as zeros for the
    average (``count_include_pad``): an explicit pad with that value, then VALID. Max pooling uses
    SAME instead where it gives the same windows, since TensorFlow's SAME max pool ignores padding;
    its SAME average pool excludes padding from the count, so average pooling always pads."""

    def __init__(self, is_max: bool, kernel: tuple[int, int], stride: tuple[int, int], padding: Padding) -> None:
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
        # A bfloat16 batch is normalised in float32 (_wide), the statistics kept in the variables' dtype.
        wide = _wide(x.dtype)
        xw, gamma, beta = tf.cast(x, wide), tf.cast(self.gamma, wide), tf.cast(self.beta, wide)
        if not training:
            return tf.cast(tf.nn.batch_normalization(xw, tf.cast(self.mean, wide), tf.cast(self.variance, wide),
                                                     beta, gamma, self.eps), x.dtype)
        axes = list(range(x.shape.rank - 1))
        mean, variance = tf.nn.moments(xw, axes=axes)
        count = tf.cast(tf.size(x) // x.shape[-1], variance.dtype)
        momentum = self.momentum
        running_mean, running_variance = tf.cast(self.mean, wide), tf.cast(self.variance, wide)
        self.mean.assign(tf.cast((1.0 - momentum) * running_mean + momentum * tf.stop_gradient(mean), self.mean.dtype))
        unbiased = tf.stop_gradient(variance) * count / (count - 1.0)
        self.variance.assign(tf.cast((1.0 - momentum) * running_variance + momentum * unbiased, self.variance.dtype))
        return tf.cast(tf.nn.batch_normalization(xw, mean, variance, beta, gamma, self.eps), x.dtype)


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
    """Row-major flattening. Channels-last order when the Dense that reads it has its kernel rows
    permuted to match (kernel.layout_plan); otherwise the feature map is put back in the canonical
    channels-first order first."""

    def __init__(self, channels_first: bool) -> None:
        super().__init__()
        self.channels_first = channels_first

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        if self.channels_first and x.shape.rank == 4:
            x = tf.transpose(x, [0, 3, 1, 2])
        return tf.reshape(x, [-1, math.prod(x.shape[1:])])


class EmbeddingModule(Module):
    """A table lookup, the rows cast to the compute dtype (under mixed-bf16 the table is float32)."""

    def __init__(self, table: Variable, compute: Any) -> None:
        super().__init__()
        self.table = table
        self.compute = compute

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        rows = tf.nn.embedding_lookup(self.table, x)
        return rows if rows.dtype == self.compute else tf.cast(rows, self.compute)


class LayerNormModule(Module):
    """Layer norm over the last axis: tf.nn.moments (the biased variance) and tf.nn.batch_normalization,
    as Keras 2's (unfused) LayerNormalization writes it. TensorFlow has no layer-norm op of its own:
    in graphs these are separate element-wise kernels, which XLA fuses."""

    def __init__(self, gamma: Variable, beta: Variable, eps: float) -> None:
        super().__init__()
        self.gamma = gamma
        self.beta = beta
        self.eps = eps

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        # A bfloat16 sequence is normalised in float32 (_wide), as PyTorch's and Flax's layer norms do.
        wide = _wide(x.dtype)
        xw = tf.cast(x, wide)
        mean, variance = tf.nn.moments(xw, axes=[-1], keepdims=True)
        normalised = tf.nn.batch_normalization(xw, mean, variance, tf.cast(self.beta, wide),
                                               tf.cast(self.gamma, wide), self.eps)
        return tf.cast(normalised, x.dtype)


class PositionModule(Module):
    """Adds the first ``T`` rows of a learned ``(positions, D)`` table, one per step (GPT-2's ``wpe``)."""

    def __init__(self, table: Variable) -> None:
        super().__init__()
        self.table = table

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        return x + _like(self.table[: x.shape[1]], x)


class TokenTypeModule(Module):
    """Adds BERT's token-type embedding of the spec's types, fixed by position (layers.TokenTypeEmbedding)."""

    def __init__(self, table: Variable, type_ids: list[int]) -> None:
        super().__init__()
        self.table = table
        self.type_ids = np.asarray(type_ids, np.int32)  # an array: tf.Module would wrap a list for tracking

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        return x + _like(tf.nn.embedding_lookup(self.table, tf.constant(self.type_ids)), x)


class SelfAttentionModule(Module):
    """Multi-head self-attention as Keras' MultiHeadAttention writes it on TensorFlow: projections,
    batched matrix products and tf.nn.softmax. tf.nn has no fused attention op, so the graph is this op
    sequence (XLA fuses its element-wise parts).

    One fused q/k/v projection, as the canonical ``qkv_kernel`` lays them out; q is scaled by
    1/sqrt(D/heads) before its product with k (Keras' order: T*D multiplications, not heads*T*T).
    The causal mask sets future steps' scores to minus infinity, so their probabilities are exactly 0.
    """

    def __init__(self, qkv: DenseModule, out: DenseModule, heads: int, causal: bool, dropout: DropoutModule) -> None:
        super().__init__()
        self.qkv = qkv
        self.out = out
        self.heads = heads
        self.causal = causal
        self.dropout = dropout

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        steps, width = x.shape[1], x.shape[2]
        size = width // self.heads
        # (N, T, 3D) -> (3, N, heads, T, D/heads): the q, k and v blocks, each split into heads.
        blocks = tf.transpose(tf.reshape(self.qkv(x, training), [-1, steps, 3, self.heads, size]), [2, 0, 3, 1, 4])
        q, k, v = tf.unstack(blocks)
        scores = tf.matmul(q * (1.0 / math.sqrt(size)), k, transpose_b=True)
        if self.causal:
            allowed = tf.constant(np.tril(np.ones((steps, steps), dtype=bool)))
            scores = tf.where(allowed, scores, tf.constant(-math.inf, scores.dtype))
        # The softmax in float32 for bfloat16 scores (_wide), as torch's and JAX's attention kernels compute it.
        probabilities = self.dropout(tf.cast(tf.nn.softmax(tf.cast(scores, _wide(scores.dtype))), scores.dtype),
                                     training)
        mixed = tf.transpose(tf.matmul(probabilities, v), [0, 2, 1, 3])  # heads back in order, step by step
        return self.out(tf.reshape(mixed, [-1, steps, width]), training)


class TokenModule(Module):
    """One step of a sequence, ``(N, T, D) -> (N, D)`` (BERT's pooler reads the first)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        return x[:, self.index]


class TiedOutputModule(Module):
    """Logits through the token embedding's own variable, transposed (GPT-2's tied ``lm_head``): one
    variable read twice, whose gradient GradientTape sums over both uses."""

    def __init__(self, table: Variable) -> None:
        super().__init__()
        self.table = table

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        steps, width = x.shape[1], x.shape[2]
        logits = tf.matmul(tf.reshape(x, [-1, width]), _like(self.table, x), transpose_b=True)
        return tf.reshape(logits, [-1, steps, self.table.shape[0]])


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

    def _lstm_layer(self, projected: Tensor, zeros: Tensor, w_rec: Tensor) -> Tensor:
        def step(state: tuple[Tensor, Tensor], x_t: Tensor) -> tuple[Tensor, Tensor]:
            h, c = state
            i, f, g, o = tf.split(x_t + tf.matmul(h, w_rec), 4, axis=1)
            c = tf.math.sigmoid(f) * c + tf.math.sigmoid(i) * tf.math.tanh(g)
            h = tf.math.sigmoid(o) * tf.math.tanh(c)
            return h, c

        hs, _ = tf.scan(step, projected, initializer=(zeros, zeros))
        return hs

    def _gru_layer(self, projected: Tensor, zeros: Tensor, w_rec: Tensor, b_rec: Tensor) -> Tensor:
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
            w_in, w_rec, b_in = (_like(variable, seq) for variable in cell[:3])
            rows = tf.nn.bias_add(tf.matmul(tf.reshape(seq, [-1, seq.shape[-1]]), w_in), b_in)
            projected = tf.reshape(rows, [steps, -1, w_in.shape[1]])
            if self.is_lstm:
                seq = self._lstm_layer(projected, zeros, w_rec)
            else:
                seq = self._gru_layer(projected, zeros, w_rec, _like(cell[3], seq))
        if not self.return_sequences:
            return seq[-1]
        return tf.transpose(seq, [1, 0, 2])


# --------------------------------------------------------------------------------------------------
# Spec -> modules


def _global_average(x: Tensor) -> Tensor:
    return tf.reduce_mean(x, axis=[1, 2])


class Builder:
    """Builds the module tree of a network; every canonical parameter becomes a variable in the
    framework's layout (zeros: the kernel loads the starting weights), in canonical order."""

    def __init__(self, plan: dict[str, kernel.ParamLayout], dtype: Any, compute: Any, dropout_rng: Any,
                 fused_batch_norm: bool) -> None:
        self.plan = plan
        self.dtype = dtype  # the variables' (a tf.DType)
        self.compute = compute  # the activations' and matrix products' (differs under mixed-bf16)
        self.dropout_rng = dropout_rng
        self.fused_batch_norm = fused_batch_norm
        self.handles: dict[str, Variable] = {}
        self.norms: list[BatchNormModule] = []

    def variables(self, path: str, layer: Layer, shape: Shape) -> list[Variable]:
        """The variables of one leaf layer, shaped as the plan lays out its canonical parameters."""
        created = []
        for spec in layer_params(path, layer, shape):
            zeros = self.plan[spec.name].to_framework(np.zeros(spec.shape))
            self.handles[spec.name] = tf.Variable(tf.zeros(zeros.shape, self.dtype), name=spec.name.replace(".", "_"))
            created.append(self.handles[spec.name])
        return created

    def sequence(self, layers: tuple[Layer, ...], shape: Shape, prefix: str) -> SequenceModule:
        modules = []
        for index, layer in enumerate(layers):
            if isinstance(layer, Flatten):
                modules.append(FlattenModule(channels_first=not self._rows_permuted(layers, index, prefix)))
            else:
                modules.append(self.layer(layer, shape, f"{prefix}{index}"))
            shape = layer.out_shape(shape)
        return SequenceModule(modules)

    def _rows_permuted(self, layers: tuple[Layer, ...], index: int, prefix: str) -> bool:
        """Whether the Dense that reads the Flatten at ``index`` takes its features channels-last."""
        for later, layer in enumerate(layers[index + 1:], index + 1):
            if not isinstance(layer, _ORDER_KEEPING):
                entry = self.plan.get(f"{prefix}{later}.kernel")
                return isinstance(layer, Dense) and entry is not None and entry.rows_chw is not None
        return False

    def layer(self, layer: Layer, shape: Shape, path: str) -> Module:
        """The module for one spec layer whose per-sample input shape (canonical) is ``shape``."""
        if isinstance(layer, Dense):
            kernel_variable, *bias = self.variables(path, layer, shape)
            return DenseModule(kernel_variable, bias[0] if bias else None)
        if isinstance(layer, Conv2D):
            kernel_variable, *bias = self.variables(path, layer, shape)
            stride = pair(layer.stride)
            padding = _window_padding((shape[1], shape[2]), pair(layer.kernel), stride, pair(layer.padding))
            return ConvModule(kernel_variable, bias[0] if bias else None, stride, padding)
        if isinstance(layer, MaxPool2D | AvgPool2D):
            is_max, window = isinstance(layer, MaxPool2D), pair(layer.kernel)
            stride = pair(layer.stride if layer.stride is not None else layer.kernel)
            padding = _window_padding((shape[1], shape[2]), window, stride, pair(layer.padding), same_allowed=is_max)
            return PoolModule(is_max, window, stride, padding)
        if isinstance(layer, GlobalAvgPool2D):
            return FunctionModule(_global_average)
        if isinstance(layer, BatchNorm):
            gamma, beta = self.variables(path, layer, shape)
            norm = BatchNormModule(gamma, beta, layer.eps, layer.momentum, self.fused_batch_norm)
            self.norms.append(norm)
            return norm
        if isinstance(layer, Activation):
            if layer.function not in _ACTIVATIONS:
                raise Unsupported(f"the TensorFlow backend has no activation {layer.function!r}")
            return FunctionModule(_ACTIVATIONS[layer.function])
        if isinstance(layer, Dropout):
            return DropoutModule(layer.rate, self.dropout_rng)
        if isinstance(layer, Embedding):
            return EmbeddingModule(self.variables(path, layer, shape)[0], self.compute)
        if isinstance(layer, LayerNorm):
            gamma, beta = self.variables(path, layer, shape)
            return LayerNormModule(gamma, beta, layer.eps)
        if isinstance(layer, PositionEmbedding):
            return PositionModule(self.variables(path, layer, shape)[0])
        if isinstance(layer, TokenTypeEmbedding):
            return TokenTypeModule(self.variables(path, layer, shape)[0], layer.type_ids(shape[0]))
        if isinstance(layer, MultiHeadSelfAttention):
            qkv_kernel, qkv_bias, out_kernel, out_bias = self.variables(path, layer, shape)
            return SelfAttentionModule(DenseModule(qkv_kernel, qkv_bias), DenseModule(out_kernel, out_bias),
                                       layer.heads, layer.causal, DropoutModule(layer.dropout, self.dropout_rng))
        if isinstance(layer, SelectToken):
            return TokenModule(layer.index)
        if isinstance(layer, TiedOutput):
            # Network checked that ``tied_to`` is a top-level Embedding, built (and its table made) earlier.
            return TiedOutputModule(self.handles[f"{layer.tied_to}.table"])
        if isinstance(layer, LSTM | GRU):
            variables = self.variables(path, layer, shape)
            per_layer = len(variables) // layer.layers
            cells = [tuple(variables[k * per_layer:(k + 1) * per_layer]) for k in range(layer.layers)]
            return RecurrentModule(isinstance(layer, LSTM), layer.hidden, cells, layer.return_sequences)
        if isinstance(layer, Residual):
            body = self.sequence(layer.body, shape, f"{path}.body.")
            shortcut = self.sequence(layer.shortcut, shape, f"{path}.shortcut.") if layer.shortcut else None
            return ResidualModule(body, shortcut)
        if isinstance(layer, Concat):
            return ConcatModule([self.sequence(branch, shape, f"{path}.branches.{index}.")
                                 for index, branch in enumerate(layer.branches)])
        raise Unsupported(f"the TensorFlow backend has no translation for the layer type {type(layer).__name__}")


# --------------------------------------------------------------------------------------------------
# The optimizer


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
    * AdamW: TensorFlow has no training op with decoupled decay, so the variable is first shrunk,
      ``w -= lr*wd*w`` (PyTorch's AdamW, and Keras' AdamW the same way), then ResourceApplyAdam as above;
      the variable's ops run in program order within the step's graph.
    * Adadelta: ResourceApplyAdadelta has PyTorch's formula (epsilon inside both square roots).
    * RMSprop: TensorFlow's ResourceApplyRMSProp divides by ``sqrt(ms + eps)``, PyTorch by
      ``sqrt(ms) + eps``; the update is written with tf ops instead, as PyTorch computes it.

    Weight decay is PyTorch's coupled L2: ``g + wd*w`` inside the step (after any clipping). Every op
    used has an XLA kernel, so the whole update compiles with the step.
    """

    def __init__(self, op: str, arguments: dict[str, Any], variables: list[Variable]) -> None:
        super().__init__()
        self.op = op
        self.weight_decay = arguments.pop("weight_decay", 0.0)
        self.decoupled_weight_decay = arguments.pop("decoupled_weight_decay", 0.0)
        self.arguments = arguments
        self.targets = variables
        self.slots = [{slot: tf.Variable(tf.zeros_like(v), trainable=False, name=f"{slot}_{i}") for slot in _SLOTS[op]}
                      for i, v in enumerate(variables)]
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")

    def apply(self, gradients: list[Tensor]) -> None:
        if self.targets and self.targets[0].dtype.size < 4:
            self._apply_in_float32(gradients)
            return
        if self.weight_decay:
            gradients = [g + self.weight_decay * v for g, v in zip(gradients, self.targets, strict=True)]
        arguments = dict(self.arguments)
        if self.op == "ResourceApplyAdam":
            step = tf.cast(self.iterations.assign_add(1), self.targets[0].dtype)
            arguments["beta1_power"] = tf.pow(arguments["beta1"], step)
            arguments["beta2_power"] = tf.pow(arguments["beta2"], step)
            arguments["epsilon"] = arguments["epsilon"] * tf.sqrt(1.0 - arguments["beta2_power"])
        for v, g, slots in zip(self.targets, gradients, self.slots, strict=True):
            if self.decoupled_weight_decay:
                v.assign(v * (1.0 - arguments["lr"] * self.decoupled_weight_decay))
            if self.op == "RMSprop":
                rho = arguments["rho"]
                mean_square = slots["square_avg"].assign(rho * slots["square_avg"] + (1.0 - rho) * tf.square(g))
                v.assign_sub(arguments["lr"] * g / (tf.sqrt(mean_square) + arguments["eps"]))
            else:
                getattr(tf.raw_ops, self.op)(var=v.handle, **{_GRADIENT_KEYWORD.get(self.op, "grad"): g},
                                             **{name: slot.handle for name, slot in slots.items()}, **arguments)

    def _apply_in_float32(self, gradients: list[Tensor]) -> None:
        """The same rules for bfloat16 variables, each element computed in float32 from the bfloat16
        variable and state and rounded back, as PyTorch's optimizers step bfloat16 parameters.

        TensorFlow's fused training ops compute in the variable's own dtype, scalars included: in
        bfloat16 (8 significant bits) Adam's beta2 = 0.999 rounds to 1, its second moment never grows
        and the first update divides by zero (measured: gpt2-124m-small's loss 6.8 became 5.9e5 in
        three steps). So these are written with tf ops, as PyTorch writes each rule."""
        a = self.arguments
        step = tf.cast(self.iterations.assign_add(1), tf.float32)
        for v, g, slots in zip(self.targets, gradients, self.slots, strict=True):
            w, g = tf.cast(v, tf.float32), tf.cast(g, tf.float32)
            state = {name: tf.cast(slot, tf.float32) for name, slot in slots.items()}
            if self.weight_decay:
                g = g + self.weight_decay * w
            if self.decoupled_weight_decay:
                w = w * (1.0 - a["lr"] * self.decoupled_weight_decay)
            if self.op == "ResourceApplyGradientDescent":
                w = w - a["alpha"] * g
            elif self.op == "ResourceApplyMomentum":
                state["accum"] = a["momentum"] * state["accum"] + g
                direction = g + a["momentum"] * state["accum"] if a.get("use_nesterov") else state["accum"]
                w = w - a["lr"] * direction
            elif self.op == "ResourceApplyAdam":
                state["m"] = a["beta1"] * state["m"] + (1.0 - a["beta1"]) * g
                state["v"] = a["beta2"] * state["v"] + (1.0 - a["beta2"]) * tf.square(g)
                m_hat = state["m"] / (1.0 - tf.pow(a["beta1"], step))
                v_hat = state["v"] / (1.0 - tf.pow(a["beta2"], step))
                w = w - a["lr"] * m_hat / (tf.sqrt(v_hat) + a["epsilon"])
            elif self.op == "ResourceApplyAdadelta":
                state["accum"] = a["rho"] * state["accum"] + (1.0 - a["rho"]) * tf.square(g)
                update = tf.sqrt(state["accum_update"] + a["epsilon"]) / tf.sqrt(state["accum"] + a["epsilon"]) * g
                state["accum_update"] = a["rho"] * state["accum_update"] + (1.0 - a["rho"]) * tf.square(update)
                w = w - a["lr"] * update
            else:  # RMSprop
                state["square_avg"] = a["rho"] * state["square_avg"] + (1.0 - a["rho"]) * tf.square(g)
                w = w - a["lr"] * g / (tf.sqrt(state["square_avg"]) + a["eps"])
            for name, slot in slots.items():
                slot.assign(tf.cast(state[name], slot.dtype))
            v.assign(tf.cast(w, v.dtype))


# --------------------------------------------------------------------------------------------------
# The kernel's Model


def _onednn_enabled() -> bool | None:
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a private module: absent from some builds
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def _host(value: Tensor) -> np.ndarray:
    return widened(value.numpy())


class Model(kernel.Model):
    """The spec's network as a ``tf.Module`` tree, channels-last, kernels HWIO; Dense and recurrent
    kernels (in, out) with the canonical gate orders, as the cells above compute them."""

    conventions = kernel.Conventions(channels_last=True, conv_kernel="hwio")

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool,
                 xla: bool = False, seed: int = 0) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        self.xla = xla
        self.where = _TF_DEVICES[device]
        plan = kernel.layout_plan(self.network, self.conventions)
        self.names = list(plan)
        # FusedBatchNormV3 has no float64 CPU kernel (float, half and bfloat16 only), so float64 takes
        # the unfused form, the same function, as under XLA.
        fused = not xla and precision == "float32"
        # bfloat16: variables and activations in bfloat16; mixed-bf16: float32 variables, each cast
        # to bfloat16 where a layer uses it (_like), as Keras' mixed policy does without Keras.
        self.weights_dtype = tf.as_dtype(self.precision_info.weights)
        self.compute_dtype = tf.as_dtype(self.precision_info.compute)
        with tf.device(self.where):
            # Dropout's masks are drawn from the cell's seed; nothing else here is random.
            builder = Builder(plan, self.weights_dtype, self.compute_dtype, tf.random.Generator.from_seed(seed), fused)
            self.root = builder.sequence(self.network.layers, self.network.input_shape, "")
            self.handles, self.norms = builder.handles, builder.norms
            self.variables = [self.handles[name] for name in self.names]
            if training:
                name, arguments = kernel.optimizer_arguments(self.recipe.optimizer, SPELLING, self._framework)
                self.optimizer = OptimizerModule(name, arguments, self.variables)
        self._functions: dict[tuple[Any, ...], Any] = {}
        if batch_size:
            # Trace the timed step now, while the model is built, not in the first timed step (the
            # accuracy scenario's trainer also predicts with the inference function).
            input_shape = kernel.batch_to_framework(np.empty((1, *self.network.input_shape)), self.conventions).shape
            tokens = self.network.input_kind == "tokens"
            inputs = tf.TensorSpec((batch_size, *input_shape[1:]), tf.int32 if tokens else self.weights_dtype)
            labels = tf.TensorSpec((batch_size, *self.network.label_shape), tf.int32)
            self._trace("infer", [inputs])
            if training:
                self._trace("train", [inputs, labels])

    def _product_dtypes(self) -> set[str]:
        """The operand dtypes of the matrix products in the traced forward graphs (inference, or the
        gradients' forward): what the products ran in, read from the program, not the setting."""
        found: set[str] = set()
        for (kind, *_), concrete in self._functions.items():
            if kind != "train":
                found.update(op.inputs[0].dtype.name for op in concrete.graph.get_operations()
                             if op.type in _PRODUCT_OPS)
        return found

    @property
    def _framework(self) -> str:
        return "tensorflow-xla" if self.xla else "tensorflow"

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Summed softmax cross-entropy over every label position, divided by ``kernel.loss_divisor``
        (every signature has a fixed batch size); bfloat16 logits widened to float32 first, as
        torch.autocast and Keras' mixed policy compute a loss."""
        logits = tf.cast(logits, _wide(logits.dtype))
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        return tf.reduce_sum(losses) / kernel.loss_divisor(self.network, self.recipe, labels.shape[0])

    def _entry(self, x: Tensor) -> Tensor:
        """The input as the first layer takes it: floating inputs in the compute dtype, token ids as they are."""
        return tf.cast(x, self.compute_dtype) if x.dtype.is_floating else x

    def _train(self, x: Tensor, y: Tensor) -> Tensor:
        with tf.GradientTape() as tape:
            loss = self._loss(self.root(self._entry(x), True), y)
        gradients = [_dense(g) for g in tape.gradient(loss, self.variables)]
        if self.recipe.grad_clip_norm is not None:
            # PyTorch's clip_grad_norm_ scales by clip/(norm + 1e-6), TensorFlow by clip/norm.
            gradients, _ = tf.clip_by_global_norm(gradients, self.recipe.grad_clip_norm)
        self.optimizer.apply(gradients)
        return loss

    def _infer(self, x: Tensor) -> Tensor:
        return self.root(self._entry(x), False)

    def _loss_and_gradients(self, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        with tf.GradientTape() as tape:
            loss = self._loss(self.root(self._entry(x), False), y)
        return loss, [_dense(g) for g in tape.gradient(loss, self.variables)]

    def _trace(self, kind: str, specs: list[Any]) -> Any:
        """The function of ``kind`` traced for these input specs, kept as a concrete function: calling
        it skips tf.function's per-call argument matching."""
        body = {"train": self._train, "infer": self._infer, "gradients": self._loss_and_gradients}[kind]
        function = tf.function(body, input_signature=specs, jit_compile=self.xla, autograph=False)
        with tf.device(self.where):
            concrete = self._functions[(kind, *(spec.shape for spec in specs))] = function.get_concrete_function()
        return concrete

    def _call(self, kind: str, *tensors: Tensor) -> Any:
        # Keyed by shapes alone (a few microseconds a step): device_batch fixes the dtypes.
        function = self._functions.get((kind, *(t.shape for t in tensors)))
        if function is None:
            function = self._trace(kind, [tf.TensorSpec(t.shape, t.dtype) for t in tensors])
        return function(*tensors)

    # ---- the kernel's contract

    def bindings(self) -> list[kernel.Binding]:
        return self.bind(self.handles)

    def read(self, handle: Variable) -> np.ndarray:
        return _host(handle)  # a copy: the read may share the variable's buffer

    def write(self, handle: Variable, value: np.ndarray) -> None:
        handle.assign(tf.cast(value, handle.dtype))  # bfloat16 comes as float32: NumPy has none

    def device_batch(self, array: np.ndarray) -> Tensor:
        """Token ids and labels as int32 (the type of the traced signatures), values in the weights' dtype."""
        with tf.device(self.where):
            if np.issubdtype(array.dtype, np.integer):
                return tf.constant(np.asarray(array, np.int32))
            return tf.cast(tf.constant(np.asarray(array, self.dtype)), self.weights_dtype)

    def reset_statistics(self) -> None:
        for norm in self.norms:
            norm.reset_running_stats()

    def logits(self, inputs: Tensor) -> np.ndarray:
        return _host(self._call("infer", inputs))

    def infer_step(self, inputs: Tensor) -> Tensor:
        return self._call("infer", inputs)  # a tensor: no copy to the host in the timed step

    def gradients(self, inputs: Tensor, labels: Tensor) -> tuple[float, dict[str, np.ndarray]]:
        loss, gradients = self._call("gradients", inputs, labels)
        return float(loss.numpy()), {name: _host(g) for name, g in zip(self.names, gradients, strict=True)}

    def train_step(self, inputs: Tensor, labels: Tensor) -> Tensor:
        return self._call("train", inputs, labels)  # a tensor: float() reads it, waiting only then

    def sync(self) -> None:
        # On the CPU a function call returns when its graph has run; a GPU's kernels may still be queued.
        if self.device == "cuda":
            tf.test.experimental.sync_devices()

    def device_memory_peak_bytes(self) -> int | None:
        """TensorFlow's GPU allocator peak (what tensors held) since the process started."""
        if self.device != "cuda":
            return None
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])

    def trainable_params(self) -> int:
        return sum(int(v.shape.num_elements()) for v in self.root.trainable_variables)

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
            "threads_source": "tf.config.threading.get_intra_op_parallelism_threads",
        }
        products = self._product_dtypes()
        if products:  # the operands of the traced graph's MatMul, BatchMatMul and Conv2D ops
            details["matmul_dtype"] = ", ".join(sorted(products))
        tf32 = None
        if self.device == "cuda":
            tf32 = bool(tf.config.experimental.is_tensor_float_32_execution_enabled())
            details["device_name"] = tf.config.experimental.get_device_details(
                tf.config.list_physical_devices("GPU")[0]).get("device_name")
        return Parity(
            threads=tf.config.threading.get_intra_op_parallelism_threads(),
            dtype=self.variables[0].dtype.name if self.variables else None,
            execution="xla" if self.xla else "graph",
            tf32=tf32,
            details=details,
        )


# --------------------------------------------------------------------------------------------------
# Backend


class Backend(kernel.KernelBackend):
    """TensorFlow 2 graphs through ``tf.function`` (``tensorflow``), or compiled by XLA (``tensorflow-xla``).

    No flush_denormals of its own: TensorFlow has no switch (its kernels flush subnormals to zero in
    its own threads, as every cell's probe shows), so the kernel's default applies."""

    model_class = Model
    devices = ("cpu", "cuda")
    precisions = BFLOAT16_PRECISIONS

    def __init__(self, threads: int, xla: bool = False) -> None:
        super().__init__(threads, xla=xla)
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

    def _device(self, device: str) -> str:
        if device == "cuda" and not tf.config.list_physical_devices("GPU"):
            raise Unavailable(f"TensorFlow {tf.__version__} sees no GPU")
        return super()._device(device)

    # The cell's seed reaches the Model (dropout's generator) as one of its options.
    def prepare(self, request: StepRequest) -> kernel.KernelRunner:
        self.options["seed"] = request.seed
        return super().prepare(request)

    def trainer(self, request: StepRequest) -> kernel.KernelTrainer:
        self.options["seed"] = request.seed
        return super().trainer(request)

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        with tf.device(_TF_DEVICES[self._device(device)]):
            product = tf.function(tf.linalg.matmul, jit_compile=self.xla)(tf.constant(a), tf.constant(b))
        result: np.ndarray = product.numpy()
        return result
