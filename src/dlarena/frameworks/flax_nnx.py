"""JAX with Flax NNX modules and Optax (``jax``); the whole train step compiled by ``jax.jit``.

Only a worker process imports this module, after it has set CPU affinity: JAX has no thread setting
of its own (it ignores ``OMP_NUM_THREADS`` and XLA flags here), XLA's CPU thread pool simply follows
the affinity, so the parity record reports the affinity size as the thread count.

The network is an ordinary tree of ``nnx.Module`` objects built from the spec, channels-last (NHWC)
as Flax convolutions are; the LSTM and GRU are written here (a fused input projection for every time
step, then ``jax.lax.scan`` over time) because Flax's cells have a different bias set than the spec.
Transformer layers are Flax's own (nnx.LayerNorm, nnx.Embed tables, ``nnx.Embed.attend`` for an output
tied to the token embedding); self-attention is one fused ``qkv`` nnx.Linear and
``jax.nn.dot_product_attention``, or Flax's unfused attention where that op would not compute the
spec (attention dropout in training, float64; see _attend).
The kernel (kernel.py) supplies the starting weights, the batch, the layouts and the runners.

The step follows the "functional training loop" of Flax's performance guide: the model and its
``nnx.Optimizer`` are ``nnx.split`` once when built, a pure step function ``nnx.merge``-s them
inside ``jax.jit`` (so the graph traversal is paid once, while tracing, not at every step), and the
state goes in and out as a flat list of arrays that is donated to the computation, so that XLA
updates parameters, optimizer slots and batch statistics in place. The kernel's handles are indices
into that list. Measured on the shared 2-core machine, train, batch 32, 1 core, process CPU time per
step in ms (fcn5-small / karmanov-cnn-small / lstm32-small): ``nnx.jit`` 3.31 / 14.07 / 21.8,
``nnx.cached_partial`` of it 2.45 / 10.75 / 20.5, ``jax.jit`` over the ``nnx.State`` 2.08 / 10.04 /
18.8, ``jax.jit`` over the flat leaves (this module) 1.97 / 9.54 / 18.1. The functional form is the
fastest; the gap is the per-call Python traversal of ``nnx.jit``, largest where the device work per
step is small.

Synchronisation is ``block_until_ready`` on the step's output. Matmul precision is left at JAX's
default and recorded in the parity record (on a GPU that default allows TF32), not changed here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.nnx.nn.attention import dot_product_attention_weights  # not re-exported by flax.nnx
from jax.typing import DTypeLike

from dlarena.frameworks import kernel
from dlarena.frameworks.base import Parity, Unavailable, Unsupported
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

Array = jax.Array

# recipe optimizer -> optax function and keywords. ``weight_decay`` is no keyword of most of these optax
# rules: Model._optimizer turns it into PyTorch's L2 form, ``optax.add_decayed_weights`` ahead of the
# rule. ``optax.adamw`` takes it itself, decoupled (_DECOUPLED_DECAY).
SPELLING: kernel.OptimizerSpelling = {
    "sgd": ("sgd", {"lr": "learning_rate", "momentum": "momentum", "nesterov": "nesterov",
                    "weight_decay": "weight_decay"}),
    "adam": ("adam", {"lr": "learning_rate", "beta1": "b1", "beta2": "b2", "eps": "eps",
                      "weight_decay": "weight_decay"}),
    "adamw": ("adamw", {"lr": "learning_rate", "beta1": "b1", "beta2": "b2", "eps": "eps",
                        "weight_decay": "weight_decay"}),
    "adadelta": ("adadelta", {"lr": "learning_rate", "rho": "rho", "eps": "eps", "weight_decay": "weight_decay"}),
    "rmsprop": ("rmsprop", {"lr": "learning_rate", "rho": "decay", "eps": "eps", "weight_decay": "weight_decay"}),
}

# Optax rules whose own ``weight_decay`` is the recipe's (decoupled: w -= lr * (update + wd * w), as
# torch.optim.AdamW), so Model._optimizer passes it through instead of adding PyTorch's L2 term.
_DECOUPLED_DECAY = ("adamw",)

# jax.nn.gelu's default is the tanh approximation: the spec's exact "gelu" (erf) needs approximate=False.
_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
}
# The model and its optimizer are built, zero-filled, in one compiled function, and XLA's optimising
# passes are wasted on code that runs once. Process CPU time of building googlenet-small for training
# on the shared 2-core machine, 1 core: eagerly (one compilation per operation and shape) 3.9 s,
# compiled 2.3 s, compiled without those passes 1.8 s.
_BUILD_COMPILER_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 0}
# jax_default_matmul_precision values that keep float32 matmuls and convolutions in full float32 on
# a GPU; anything else (None included, the default) lets XLA use TF32 on Ampere and newer.
_FULL_FLOAT32_PRECISIONS = ("highest", "float32")
# The dropout masks' key. The kernel gives a Model no seed; dropout masks are never verified
# (verification runs in inference mode), and a fixed stream keeps runs alike.
DROPOUT_SEED = 0


def _modes(train: bool) -> dict[str, bool]:
    """Dropout and batch norm switched for training or inference, as ``nnx.view`` arguments."""
    return {"deterministic": not train, "use_running_average": not train}


# --------------------------------------------------------------------------------------------------
# Building blocks the spec has and flax.nnx has not (or has with another parameter set)


class Chain(nnx.Module):
    """Layers applied one after the other (``nnx.Sequential`` without its argument plumbing)."""

    def __init__(self, layers: Sequence[nnx.Module]) -> None:
        self.layers = nnx.List(layers)

    def __call__(self, x: Array) -> Array:
        for layer in self.layers:
            x = layer(x)
        return x


def _rows(x: Array, kernel: Array) -> Array:
    """``x @ kernel`` over the last axis, computed as one rank-2 matmul.

    XLA's CPU backend differentiates a rank-3 dot (whose kernel gradient contracts two axes) about
    three times slower than the same product on ``(N*T, F)`` rows: 14 ms against 5 ms for the
    lstm32-small output layer at batch 32.
    """
    return (x.reshape(-1, x.shape[-1]) @ kernel).reshape(*x.shape[:-1], kernel.shape[-1])


class SequenceDense(nnx.Module):
    """An ``nnx.Linear`` applied at every step of a ``(N, T, F)`` sequence, as rank-2 rows (see _rows)."""

    def __init__(self, linear: nnx.Linear) -> None:
        self.linear = linear

    def __call__(self, x: Array) -> Array:
        out: Array = self.linear(x.reshape(-1, x.shape[-1]))
        return out.reshape(*x.shape[:-1], out.shape[-1])


class ActivationLayer(nnx.Module):
    def __init__(self, function: str) -> None:
        if function not in _ACTIVATIONS:
            raise Unsupported(f"the JAX backend has no activation {function!r}; it has {', '.join(_ACTIVATIONS)}")
        self.function = _ACTIVATIONS[function]

    def __call__(self, x: Array) -> Array:
        return self.function(x)


class Pool(nnx.Module):
    """``nnx.max_pool`` pads with minus infinity; ``nnx.avg_pool`` counts padding as zeros by default
    (``count_include_pad``), both as the spec says."""

    def __init__(self, layer: MaxPool2D | AvgPool2D) -> None:
        self.window = pair(layer.kernel)
        self.strides = pair(layer.stride if layer.stride is not None else layer.kernel)
        ph, pw = pair(layer.padding)
        self.padding = ((ph, ph), (pw, pw))
        self.is_max = isinstance(layer, MaxPool2D)

    def __call__(self, x: Array) -> Array:
        # Flax's pooling functions carry no annotations.
        if self.is_max:
            pooled: Array = nnx.max_pool(x, self.window, self.strides, self.padding)  # type: ignore[no-untyped-call]
        else:
            pooled = nnx.avg_pool(  # type: ignore[no-untyped-call]
                x, self.window, self.strides, self.padding, count_include_pad=True
            )
        return pooled


class GlobalAvgPool(nnx.Module):
    """Mean over the spatial axes of an NHWC batch: ``(N, H, W, C) -> (N, C)``."""

    def __call__(self, x: Array) -> Array:
        return jnp.mean(x, axis=(1, 2))


class FlattenLayer(nnx.Module):
    """Flatten per sample. An NHWC feature map flattens in ``(H, W, C)`` order when a Dense (whose
    rows the kernel permutes to match) consumes it; otherwise it is first put back in the canonical
    channels-first order so that whatever follows sees canonical features."""

    def __init__(self, channels_first: bool) -> None:
        self.channels_first = channels_first

    def __call__(self, x: Array) -> Array:
        if self.channels_first and x.ndim == 4:
            x = jnp.transpose(x, (0, 3, 1, 2))
        return x.reshape(x.shape[0], -1)


class ResidualBlock(nnx.Module):
    """``body(x) + shortcut(x)``; an empty shortcut is the identity."""

    def __init__(self, body: Chain, shortcut: Chain | None) -> None:
        self.body = body
        self.shortcut = shortcut

    def __call__(self, x: Array) -> Array:
        return self.body(x) + (self.shortcut(x) if self.shortcut is not None else x)


class ConcatBlock(nnx.Module):
    """Branches over the same input, concatenated on the spec's channel axis (last axis in NHWC)."""

    def __init__(self, branches: Sequence[Chain], axis: int) -> None:
        self.branches = nnx.List(branches)
        self.axis = axis

    def __call__(self, x: Array) -> Array:
        return jnp.concatenate([branch(x) for branch in self.branches], axis=self.axis)


def _zeros(*shape: int, dtype: DTypeLike) -> nnx.Param[Array]:
    return nnx.Param(jnp.zeros(shape, dtype))


class LSTMLayer(nnx.Module):
    """One LSTM layer over a time-major sequence, gates ``i, f, g, o``, one bias per gate.

    The input projection of every time step is one matmul before the loop; only ``h @ U`` and the
    gate arithmetic stay inside ``lax.scan``.
    """

    def __init__(self, n_in: int, hidden: int, dtype: DTypeLike, compute: DTypeLike) -> None:
        self.hidden, self.compute = hidden, compute
        self.input_kernel = _zeros(n_in, 4 * hidden, dtype=dtype)
        self.recurrent_kernel = _zeros(hidden, 4 * hidden, dtype=dtype)
        self.bias = _zeros(4 * hidden, dtype=dtype)

    def __call__(self, xs: Array) -> Array:
        xs = xs.astype(self.compute)
        projected = _rows(xs, self.input_kernel[...].astype(self.compute)) + self.bias[...].astype(self.compute)
        recurrent = self.recurrent_kernel[...].astype(self.compute)

        def cell(carry: tuple[Array, Array], projected_t: Array) -> tuple[tuple[Array, Array], Array]:
            h, c = carry
            i, f, g, o = jnp.split(projected_t + h @ recurrent, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        zeros = jnp.zeros((xs.shape[1], self.hidden), xs.dtype)
        _, hs = jax.lax.scan(cell, (zeros, zeros), projected)
        return hs


class GRULayer(nnx.Module):
    """One GRU layer over a time-major sequence in the reset-after form, gates ``r, z, n``, with
    separate input and recurrent biases (the recurrent one sits inside ``r * (U_n h + b_hn)``)."""

    def __init__(self, n_in: int, hidden: int, dtype: DTypeLike, compute: DTypeLike) -> None:
        self.hidden, self.compute = hidden, compute
        self.input_kernel = _zeros(n_in, 3 * hidden, dtype=dtype)
        self.recurrent_kernel = _zeros(hidden, 3 * hidden, dtype=dtype)
        self.input_bias = _zeros(3 * hidden, dtype=dtype)
        self.recurrent_bias = _zeros(3 * hidden, dtype=dtype)

    def __call__(self, xs: Array) -> Array:
        xs = xs.astype(self.compute)
        projected = (_rows(xs, self.input_kernel[...].astype(self.compute))
                     + self.input_bias[...].astype(self.compute))
        recurrent = self.recurrent_kernel[...].astype(self.compute)
        recurrent_bias = self.recurrent_bias[...].astype(self.compute)

        def cell(h: Array, projected_t: Array) -> tuple[Array, Array]:
            xr, xz, xn = jnp.split(projected_t, 3, axis=-1)
            hr, hz, hn = jnp.split(h @ recurrent + recurrent_bias, 3, axis=-1)
            r = jax.nn.sigmoid(xr + hr)
            z = jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h = (1.0 - z) * n + z * h
            return h, h

        _, hs = jax.lax.scan(cell, jnp.zeros((xs.shape[1], self.hidden), xs.dtype), projected)
        return hs


class Recurrent(nnx.Module):
    """Stacked LSTM or GRU layers on a batch-first ``(N, T, F)`` sequence, zero initial state.

    The sequence is made time-major once for the whole stack (``lax.scan`` runs over the leading
    axis) and batch-first again only when every step is returned.
    """

    def __init__(self, layers: Sequence[LSTMLayer | GRULayer], return_sequences: bool) -> None:
        self.layers = nnx.List(layers)
        self.return_sequences = return_sequences

    def __call__(self, x: Array) -> Array:
        xs = jnp.swapaxes(x, 0, 1)
        for layer in self.layers:
            xs = layer(xs)
        return jnp.swapaxes(xs, 0, 1) if self.return_sequences else xs[-1]


# jax.nn.dot_product_attention computes its softmax in float32 whatever its inputs' precision (its XLA
# form casts the scores): exactly the spec in a float32 model, a float32 rounding inside a float64 one.
FUSED_SOFTMAX_DTYPE = np.dtype(np.float32)


def _attend(query: Array, key: Array, value: Array, causal: bool, dropout_rng: Array | None,
            dropout_rate: float) -> Array:
    """Per head ``softmax(q k^T / sqrt(d) + mask) v`` over ``(N, T, heads, d)`` arrays, the result in
    the same layout.

    JAX's attention op where it computes exactly that: no dropout (it has none) and at most float32.
    Otherwise Flax's unfused form, the one ``nnx.MultiHeadAttention`` takes whenever it drops: the
    same arithmetic in the model's precision, its probabilities dropped element by element
    (``broadcast_dropout=False``; Flax's default shares one mask across batch and heads, which
    neither the spec nor PyTorch does).
    """
    if dropout_rng is None and query.dtype.itemsize <= FUSED_SOFTMAX_DTYPE.itemsize:
        fused: Array = jax.nn.dot_product_attention(query, key, value, is_causal=causal)
        return fused
    weights = dot_product_attention_weights(query, key, dropout_rng=dropout_rng, dropout_rate=dropout_rate,
                                            broadcast_dropout=False, deterministic=dropout_rng is None,
                                            is_causal=causal)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value)


class SelfAttention(nnx.Module):
    """Multi-head self-attention as nanoGPT's Flax ports write it: one fused ``qkv`` nnx.Linear, the
    attention (_attend), an ``out`` nnx.Linear, both applied as rank-2 rows (see _rows).

    The canonical ``(D, 3D)`` kernel is the Linear's as it stands: blocks q, k, v, and head h at
    columns ``h*d`` to ``(h+1)*d`` inside each, so reshaping a block to ``(N, T, heads, d)`` splits
    the heads with no transpose, in the BTNH layout ``jax.nn.dot_product_attention`` takes. Attention
    dropout is switched by ``nnx.view(deterministic=...)``, as on nnx.Dropout.
    """

    def __init__(self, qkv: nnx.Linear, out: nnx.Linear, layer: MultiHeadSelfAttention, rngs: nnx.Rngs) -> None:
        self.qkv, self.out = SequenceDense(qkv), SequenceDense(out)
        self.heads, self.causal, self.dropout_rate = layer.heads, layer.causal, layer.dropout
        self.deterministic = False
        # A key stream of its own, forked as nnx.Dropout forks one; none where nothing is dropped.
        self.rngs: nnx.RngStream | None = rngs.dropout.fork() if layer.dropout else nnx.data(None)

    def set_view(self, deterministic: bool | None = None) -> None:
        """``nnx.view``'s hook, as on nnx.Dropout: ``deterministic`` turns attention dropout off."""
        if deterministic is not None:
            self.deterministic = deterministic

    def __call__(self, x: Array) -> Array:
        batch, steps, width = x.shape
        heads = (batch, steps, self.heads, width // self.heads)
        query, key, value = (block.reshape(heads) for block in jnp.split(self.qkv(x), 3, axis=-1))
        dropout_rng = self.rngs() if self.rngs is not None and not self.deterministic else None
        mixed = _attend(query, key, value, self.causal, dropout_rng, self.dropout_rate)
        out: Array = self.out(mixed.reshape(batch, steps, width))
        return out


class PositionAdd(nnx.Module):
    """Adds the first ``T`` rows of a learned position table (GPT-2's ``wpe``, an nnx.Embed) to a
    ``(N, T, D)`` sequence: a slice rather than a lookup of ``arange(T)``, the same rows without a
    gather (nor a scatter in its gradient)."""

    def __init__(self, table: nnx.Embed) -> None:
        self.table = table

    def __call__(self, x: Array) -> Array:
        # In the activations' precision: a float32 table under mixed-bf16 would widen the sum.
        return x + self.table.embedding[: x.shape[1]].astype(x.dtype)


class TokenTypeAdd(nnx.Module):
    """Adds BERT's token-type embedding of the spec's fixed types (layers.TokenTypeEmbedding.type_ids),
    looked up as BERT looks up its ``token_type_ids``."""

    def __init__(self, table: nnx.Embed, type_ids: list[int]) -> None:
        self.table = table
        self.type_ids = tuple(type_ids)  # static: a constant of the compiled step

    def __call__(self, x: Array) -> Array:
        added: Array = x + self.table(jnp.asarray(self.type_ids)).astype(x.dtype)
        return added


class Token(nnx.Module):
    """One step of a ``(N, T, D)`` sequence (BERT's pooler reads the first)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, x: Array) -> Array:
        return x[:, self.index]


class TiedLogits(nnx.Module):
    """Logits through the network's token embedding, Flax's tie: ``nnx.Embed.attend`` (``x @ table.T``)
    on the very Embed the network starts with. nnx.split keeps a shared Variable once, so the table is
    one parameter and its gradient sums both uses. Applied as rank-2 rows (see _rows)."""

    def __init__(self, embed: nnx.Embed) -> None:
        self.embed = embed

    def __call__(self, x: Array) -> Array:
        logits: Array = self.embed.attend(x.reshape(-1, x.shape[-1]))
        return logits.reshape(*x.shape[:-1], logits.shape[-1])


# --------------------------------------------------------------------------------------------------
# Spec -> nnx.Module, noting the variable that holds each canonical parameter


class Builder:
    """Builds the model for a network with every parameter zero (the kernel loads the starting
    weights), and notes which variable holds each canonical parameter and each running statistic."""

    def __init__(self, network_flattens: frozenset[str], rngs: nnx.Rngs, dtype: DTypeLike,
                 compute: DTypeLike) -> None:
        self.flattens_into_dense = network_flattens
        self.rngs = rngs
        # Flax's mixed precision: ``param_dtype`` the parameters' dtype, ``dtype`` the computation's
        # (each module casts its inputs and parameters to it; normalisations keep float32 statistics).
        self.dtype = dtype  # of every parameter
        self.compute = compute
        self.zeros = nnx.initializers.zeros_init()
        self.variables: dict[str, nnx.Variable[Array]] = {}
        self.statistics: list[tuple[nnx.Variable[Array], float]] = []  # running mean 0, variance 1
        self.built: dict[str, nnx.Module] = {}  # by spec path: a tied output finds its Embed here

    def sequence(self, layers: tuple[Layer, ...], shape: Shape, prefix: str) -> Chain:
        modules: list[nnx.Module] = []
        for index, layer in enumerate(layers):
            path = f"{prefix}{index}"
            self.built[path] = self.layer(layer, shape, path)
            modules.append(self.built[path])
            shape = layer.out_shape(shape)
        return Chain(modules)

    def layer(self, layer: Layer, shape: Shape, path: str) -> nnx.Module:
        """The module for one spec layer whose canonical input shape is ``shape``."""
        zeros: dict[str, Any] = {"kernel_init": self.zeros, "bias_init": self.zeros, "param_dtype": self.dtype,
                                 "dtype": self.compute, "rngs": self.rngs}
        if isinstance(layer, Dense):
            linear = nnx.Linear(shape[-1], layer.units, use_bias=layer.bias, **zeros)
            self._bind(path, linear.kernel, linear.bias)
            return SequenceDense(linear) if len(shape) > 1 else linear
        if isinstance(layer, Conv2D):
            ph, pw = pair(layer.padding)
            conv = nnx.Conv(shape[0], layer.filters, pair(layer.kernel), strides=pair(layer.stride),
                            padding=((ph, ph), (pw, pw)), use_bias=layer.bias, **zeros)
            self._bind(path, conv.kernel, conv.bias)
            return conv
        if isinstance(layer, MaxPool2D | AvgPool2D):
            return Pool(layer)
        if isinstance(layer, GlobalAvgPool2D):
            return GlobalAvgPool()
        if isinstance(layer, BatchNorm):
            # Flax's momentum is the decay of the running average, PyTorch's the weight of the new
            # batch. Flax updates the running variance with the biased batch variance, PyTorch with
            # the unbiased one: running statistics differ by n/(n-1), outputs in training do not.
            norm = nnx.BatchNorm(shape[0], momentum=1.0 - layer.momentum, epsilon=layer.eps,
                                 param_dtype=self.dtype, dtype=self.compute, rngs=self.rngs)
            assert norm.scale is not None and norm.bias is not None  # use_scale and use_bias are on
            self.variables[f"{path}.gamma"], self.variables[f"{path}.beta"] = norm.scale, norm.bias
            self.statistics += [(norm.mean, 0.0), (norm.var, 1.0)]
            return norm
        if isinstance(layer, Activation):
            return ActivationLayer(layer.function)
        if isinstance(layer, Dropout):
            return nnx.Dropout(layer.rate, rngs=self.rngs)
        if isinstance(layer, Flatten):
            return FlattenLayer(channels_first=path not in self.flattens_into_dense)
        if isinstance(layer, Embedding):
            embed = nnx.Embed(layer.vocab, layer.dim, embedding_init=self.zeros, param_dtype=self.dtype,
                              dtype=self.compute, rngs=self.rngs)
            self.variables[f"{path}.table"] = embed.embedding
            return embed
        if isinstance(layer, LayerNorm):
            # Two-pass variance, as the spec and PyTorch compute it: Flax's default one-pass form,
            # E[x^2] - E[x]^2, cancels in float32 where the mean is large against the spread.
            layer_norm = nnx.LayerNorm(shape[-1], epsilon=layer.eps, use_fast_variance=False,
                                       param_dtype=self.dtype, dtype=self.compute, rngs=self.rngs)
            assert layer_norm.scale is not None and layer_norm.bias is not None  # use_scale and use_bias are on
            self.variables[f"{path}.gamma"], self.variables[f"{path}.beta"] = layer_norm.scale, layer_norm.bias
            return layer_norm
        if isinstance(layer, PositionEmbedding):
            return PositionAdd(self._table(path, layer.positions, shape[-1]))
        if isinstance(layer, TokenTypeEmbedding):
            return TokenTypeAdd(self._table(path, layer.types, shape[-1]), layer.type_ids(shape[0]))
        if isinstance(layer, MultiHeadSelfAttention):
            width = shape[-1]
            qkv, out = nnx.Linear(width, 3 * width, **zeros), nnx.Linear(width, width, **zeros)
            assert qkv.bias is not None and out.bias is not None  # use_bias is on
            # Canonical (D, 3D) and (D, D) kernels are nnx.Linear's (in, out) as they stand.
            self.variables.update({f"{path}.qkv_kernel": qkv.kernel, f"{path}.qkv_bias": qkv.bias,
                                   f"{path}.out_kernel": out.kernel, f"{path}.out_bias": out.bias})
            return SelfAttention(qkv, out, layer, self.rngs)
        if isinstance(layer, SelectToken):
            return Token(layer.index)
        if isinstance(layer, TiedOutput):
            tied = self.built.get(layer.tied_to)
            if not isinstance(tied, nnx.Embed):  # Network checked that it is a top-level Embedding
                raise Unsupported(f"a tied output needs the Embed at {layer.tied_to!r}, which the JAX backend lacks")
            return TiedLogits(tied)
        if isinstance(layer, LSTM | GRU):
            return self._recurrent(layer, shape, path)
        if isinstance(layer, Residual):
            shortcut = self.sequence(layer.shortcut, shape, f"{path}.shortcut.") if layer.shortcut else None
            return ResidualBlock(self.sequence(layer.body, shape, f"{path}.body."), shortcut)
        if isinstance(layer, Concat):
            branches = [self.sequence(branch, shape, f"{path}.branches.{index}.")
                        for index, branch in enumerate(layer.branches)]
            # The spec's channel axis is axis 0 per sample: the last axis of an NHWC image.
            return ConcatBlock(branches, axis=-1 if len(shape) == 3 else 1)
        raise Unsupported(f"the JAX backend has no translation for the layer type {type(layer).__name__}")

    def _bind(self, path: str, kernel: nnx.Variable[Array], bias: nnx.Variable[Array] | None) -> None:
        self.variables[f"{path}.kernel"] = kernel
        if bias is not None:
            self.variables[f"{path}.bias"] = bias

    def _table(self, path: str, rows: int, width: int) -> nnx.Embed:
        """A position or token-type table: an nnx.Embed, noted as ``path.table``."""
        embed = nnx.Embed(rows, width, embedding_init=self.zeros, param_dtype=self.dtype, dtype=self.compute,
                          rngs=self.rngs)
        self.variables[f"{path}.table"] = embed.embedding
        return embed

    def _recurrent(self, layer: LSTM | GRU, shape: Shape, path: str) -> Recurrent:
        cells: list[LSTMLayer | GRULayer] = []
        for k in range(layer.layers):
            n_in = shape[-1] if k == 0 else layer.hidden
            prefix = f"{path}.layer{k}"
            if isinstance(layer, LSTM):
                lstm = LSTMLayer(n_in, layer.hidden, self.dtype, self.compute)
                self.variables[f"{prefix}.bias"] = lstm.bias
                cell: LSTMLayer | GRULayer = lstm
            else:
                gru = GRULayer(n_in, layer.hidden, self.dtype, self.compute)
                self.variables[f"{prefix}.input_bias"] = gru.input_bias
                self.variables[f"{prefix}.recurrent_bias"] = gru.recurrent_bias
                cell = gru
            # Canonical recurrent layouts are (in, G*H) and (H, G*H) in the spec's gate order: as here.
            self.variables[f"{prefix}.input_kernel"] = cell.input_kernel
            self.variables[f"{prefix}.recurrent_kernel"] = cell.recurrent_kernel
            cells.append(cell)
        return Recurrent(cells, layer.return_sequences)


def inference_forward(graphdef: nnx.GraphDef[Any], treedef: Any) -> Callable[[list[Array], Array], Array]:
    """The pure forward pass in inference mode over the flat state of a model, or of the
    ``(model, optimizer)`` pair a training model steps, whose model is then viewed in inference mode
    inside the traced function (a view shares the arrays: nothing is copied)."""

    def forward(leaves: list[Array], inputs: Array) -> Array:
        node = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        if isinstance(node, tuple):
            node = nnx.view(node[0], raise_if_not_found=False, **_modes(train=False))
        model: Chain = node
        return model(inputs)

    return forward


def _host(array: Array) -> np.ndarray:
    return widened(array)


# The primitives that are a network's matrix products: their operands' dtypes are what its products
# computed in (XLA may accumulate wider, as every framework's bfloat16 kernels do).
_PRODUCT_PRIMITIVES = frozenset({"dot_general", "conv_general_dilated"})


def product_dtypes(jaxpr: Any) -> set[str]:
    """The operand dtypes of every matrix product in a traced function, nested calls, scans and
    custom derivatives included: the parity record's ``matmul_dtype``, read from the program itself."""
    found: set[str] = set()
    inner = getattr(jaxpr, "jaxpr", jaxpr)  # a ClosedJaxpr holds its Jaxpr
    for equation in inner.eqns:
        if equation.primitive.name in _PRODUCT_PRIMITIVES:
            found.update(str(operand.aval.dtype) for operand in equation.invars)
        for value in equation.params.values():
            for candidate in value if isinstance(value, tuple | list) else (value,):
                if hasattr(candidate, "eqns") or hasattr(getattr(candidate, "jaxpr", None), "eqns"):
                    found |= product_dtypes(candidate)
    return found


def _shapes(*arrays: Array) -> tuple[jax.ShapeDtypeStruct, ...]:
    return tuple(jax.ShapeDtypeStruct(array.shape, array.dtype)  # type: ignore[no-untyped-call]
                 for array in arrays)


def _jax_device(name: str) -> jax.Device:
    if name == "cuda":
        try:
            return jax.devices("gpu")[0]
        except RuntimeError:
            raise Unavailable(f"JAX {jax.__version__} sees no GPU (jaxlib without CUDA, or no device)") from None
    return jax.devices("cpu")[0]


# --------------------------------------------------------------------------------------------------
# The kernel's Model


class Model(kernel.Model):
    """The spec's network as a tree of ``nnx.Module``s in NHWC; kernels HWIO and (in, out); the
    spec's gate orders. Its state, split once, is a flat list of arrays (``self.leaves``) that the
    compiled functions take and the train step donates; a handle is a position in that list."""

    conventions = kernel.Conventions(channels_last=True, conv_kernel="hwio")

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        if precision == "float64":
            # Without x64 JAX silently makes every float64 array float32. The config is read when a
            # function is traced and an array made, so turning it on after import, before anything
            # is built, takes effect. It leaves jax_default_matmul_precision alone, which lowers
            # float32 products only.
            jax.config.update("jax_enable_x64", True)  # type: ignore[no-untyped-call]  # jax leaves it unannotated
        self.where = _jax_device(device)
        if training:
            self.tx = self._optimizer()
        found: list[tuple[nnx.GraphDef[Any], dict[str, int], list[tuple[int, float]], int, str]] = []

        def create() -> nnx.State[Any, Any]:
            # nnx.Linear and nnx.Conv draw a "params" key even for a zero initialiser, which ignores it.
            rngs = nnx.Rngs(params=0, dropout=DROPOUT_SEED)
            builder = Builder(kernel.flattens_into_dense(self.network), rngs, self.precision_info.weights,
                              self.precision_info.compute)
            model = builder.sequence(self.network.layers, self.network.input_shape, "")
            # Modes as Flax's docs set them now: a view with Dropout and BatchNorm switched.
            model = nnx.view(model, raise_if_not_found=False, **_modes(training))
            node: Any = (model, nnx.Optimizer(model, self.tx, wrt=nnx.Param)) if training else model
            graphdef, state = nnx.split(node)
            # Handles are positions in jax.tree.flatten(state), the list the steps take: the flat
            # state (which names each variable's path) holds the same arrays in the same order.
            flat = list(nnx.to_flat_state(state))
            assert all(variable.get_value() is leaf for (_, variable), leaf in
                       zip(flat, jax.tree.leaves(state), strict=True))
            index = {path: i for i, (path, _) in enumerate(flat)}
            at = {id(variable): index[path] for path, variable in nnx.iter_graph(node)
                  if isinstance(variable, nnx.Variable)}
            params = jax.tree.leaves(nnx.state(model, nnx.Param))
            found.append((graphdef, {name: at[id(variable)] for name, variable in builder.variables.items()},
                          [(at[id(variable)], value) for variable, value in builder.statistics],
                          sum(int(np.prod(leaf.shape)) for leaf in params),
                          ",".join(sorted({str(leaf.dtype) for leaf in params}))))  # static, read while tracing
            return state

        with jax.default_device(self.where):
            state = jax.jit(create).lower().compile(compiler_options=_BUILD_COMPILER_OPTIONS)()
        self.graphdef, self.handles, self.statistics, self.params, self.param_dtypes = found[0]
        leaves, treedef = jax.tree.flatten(state)
        self.leaves: list[Array] = jax.device_put(leaves, self.where)
        structure: Any = treedef  # jaxlib's PyTreeDef is opaque to mypy
        self.pending: Array | None = None  # the last step's output, waited on by sync()
        forward = inference_forward(self.graphdef, structure)
        self._forward = jax.jit(forward)
        # The first compiled function called and its arguments' shapes: parity() reads the dtypes of
        # its matrix products from its program, traced again there, outside every timed step.
        self.traced: tuple[Callable[..., Any], tuple[jax.ShapeDtypeStruct, ...]] | None = None

        def loss_of(params: dict[int, Array], leaves: list[Array], inputs: Array, labels: Array) -> Array:
            return self._loss(forward([params.get(i, leaf) for i, leaf in enumerate(leaves)], inputs), labels)

        self._loss_and_gradients = jax.jit(jax.value_and_grad(loss_of))
        if training:
            graphdef = self.graphdef

            def step(leaves: list[Array], inputs: Array, labels: Array) -> tuple[Array, list[Array]]:
                model, optimizer = nnx.merge(graphdef, jax.tree.unflatten(structure, leaves))

                def objective(model: Chain) -> Array:
                    return self._loss(model(inputs), labels)

                loss, grads = nnx.value_and_grad(objective)(model)
                optimizer.update(model, grads)
                # flatten_up_to fails, while tracing, unless the new state has the structure of the
                # old: the leaves line up step after step.
                new_leaves: list[Array] = structure.flatten_up_to(nnx.state((model, optimizer)))
                return loss, new_leaves

            # The state is donated: XLA updates parameters, optimizer slots and batch statistics in place.
            self._step = jax.jit(step, donate_argnums=0)

    def _optimizer(self) -> optax.GradientTransformation:
        """The recipe's optimizer with PyTorch's semantics, as an Optax chain.

        Clipping comes first, as ``clip_grad_norm_`` before ``optimizer.step()``; weight decay (AdamW's
        aside) is PyTorch's L2 form (``weight_decay * param`` added to the gradient before the update
        rule), which is ``add_decayed_weights`` ahead of the rule. SGD momentum is PyTorch's (no dampening,
        ``v = m*v + g``, Nesterov ``g + m*v``), Adam's epsilon sits outside the square root as in
        PyTorch, RMSprop starts its average at zero with epsilon outside the root
        (``eps_in_sqrt=False``), Adadelta is the same rule. AdamW is ``optax.adamw``, whose decay is
        decoupled as in ``torch.optim.AdamW`` (``w -= lr * (adam_update + weight_decay * w)``, on every
        parameter, with Adam's bias correction). Optax's global-norm clipping scales by
        ``max_norm / norm`` where PyTorch uses ``max_norm / (norm + 1e-6)``: a relative difference
        of 1e-6 / norm when clipping.
        """
        name, arguments = kernel.optimizer_arguments(self.recipe.optimizer, SPELLING, "jax")
        # A decoupled rule keeps its own weight_decay keyword; the others get PyTorch's L2 term.
        weight_decay = 0.0 if name in _DECOUPLED_DECAY else arguments.pop("weight_decay")
        if name == "sgd":
            arguments["momentum"] = arguments["momentum"] or None  # no momentum: no trace in the state
        elif name == "rmsprop":
            arguments["eps_in_sqrt"] = False
        steps = []
        if self.recipe.grad_clip_norm is not None:
            steps.append(optax.clip_by_global_norm(self.recipe.grad_clip_norm))
        if weight_decay:
            steps.append(optax.add_decayed_weights(weight_decay))
        rule: optax.GradientTransformation = getattr(optax, name)(**arguments)
        return optax.chain(*steps, rule) if steps else rule

    def _loss(self, logits: Array, labels: Array) -> Array:
        """Summed softmax cross-entropy over every label position, divided by ``kernel.loss_divisor``;
        half-precision logits widened to float32 first, as torch.autocast computes a loss."""
        if logits.dtype.itemsize < 4:
            logits = logits.astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(
            logits.reshape(-1, self.network.classes), labels.reshape(-1))
        return jnp.sum(losses) / kernel.loss_divisor(self.network, self.recipe, labels.shape[0])

    # ---- the kernel's contract

    def bindings(self) -> list[kernel.Binding]:
        return self.bind(self.handles)

    def read(self, handle: int) -> np.ndarray:
        return _host(self.leaves[handle])  # a copy: the next step donates the buffer

    def write(self, handle: int, value: np.ndarray) -> None:
        if self.leaves[handle].dtype == jnp.bfloat16:  # handed over as float32 (NumPy has no bfloat16)
            value = value.astype(jnp.bfloat16)
        self.leaves[handle] = jax.device_put(value, self.where).block_until_ready()

    def reset_statistics(self) -> None:
        # Replaced in the model's precision: nnx.BatchNorm builds its statistics in float32 whatever
        # its param_dtype.
        for handle, value in self.statistics:
            self.write(handle, np.full(self.leaves[handle].shape, value, self.dtype))

    def device_batch(self, array: np.ndarray) -> Array:
        # Token ids and labels as int32, JAX's default integer without x64 (ids are far below 2**31).
        # Floating inputs in the weights' dtype: bfloat16 ones for a bfloat16 model, float32 under
        # mixed-bf16 (its first layer casts them, as autocast does).
        if np.issubdtype(array.dtype, np.integer):
            host = array.astype(np.int32)
        else:
            host = array.astype(jnp.bfloat16 if self.precision_info.weights == "bfloat16" else self.dtype)
        on_device: Array = jax.device_put(host, self.where)
        return on_device

    def logits(self, inputs: Array) -> np.ndarray:
        self.traced = self.traced or (self._forward, _shapes(inputs))
        return _host(self._forward(self.leaves, inputs))

    def infer_step(self, inputs: Array) -> Array:
        self.traced = self.traced or (self._forward, _shapes(inputs))
        self.pending = self._forward(self.leaves, inputs)
        return self.pending  # on the device: no copy to the host in the timed step

    def gradients(self, inputs: Array, labels: Array) -> tuple[float, dict[str, np.ndarray]]:
        params = {handle: self.leaves[handle] for handle in self.handles.values()}
        loss, grads = self._loss_and_gradients(params, self.leaves, inputs, labels)
        return float(loss), {name: _host(grads[handle]) for name, handle in self.handles.items()}

    def train_step(self, inputs: Array, labels: Array) -> Array:
        self.traced = self.traced or (self._step, _shapes(inputs, labels))
        self.pending, self.leaves = self._step(self.leaves, inputs, labels)
        return self.pending  # the loss, still on the device: float() waits for it

    def sync(self) -> None:
        # Every output of one XLA execution becomes ready together, and each train step consumes
        # the state the previous one produced, so waiting for the last step's output waits for all
        # work queued so far without walking the whole state tree.
        if self.pending is not None:
            self.pending.block_until_ready()

    def device_memory_peak_bytes(self) -> int | None:
        """XLA's allocator peak on a GPU (its memory_stats; what arrays held, not what it reserved)."""
        if self.where.platform != "gpu":
            return None
        stats = self.where.memory_stats()
        return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None

    def trainable_params(self) -> int:
        return self.params

    def parity(self) -> Parity:
        on_gpu = self.where.platform == "gpu"
        precision = jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]  # set dynamically
        xla_flags = os.environ.get("XLA_FLAGS", "")
        details: dict[str, Any] = {
            "threads_source": "CPU affinity (JAX has no thread setting; XLA's CPU pool follows the affinity)",
            "jax": jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "backend": jax.default_backend(),
            "device": str(self.where),
            "devices": [str(device) for device in jax.devices()],
            # Left at JAX's default on purpose: what a JAX user gets, recorded rather than changed.
            "default_matmul_precision": precision,
            "x64": jax.config.jax_enable_x64,  # type: ignore[attr-defined]  # set dynamically
            "xla_flags": xla_flags or None,
            "step": "jax.jit of a pure step over nnx.split state, donated",
        }
        if self.traced is not None:  # the operands of the program's dot_general and convolutions
            function, shapes = self.traced
            details["matmul_dtype"] = ", ".join(sorted(product_dtypes(jax.make_jaxpr(function)(self.leaves, *shapes))))
        if on_gpu:
            details["device_kind"] = self.where.device_kind
            details["preallocate"] = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
        return Parity(
            threads=len(os.sched_getaffinity(0)),
            dtype=self.param_dtypes,
            execution="jit",
            tf32=(precision not in _FULL_FLOAT32_PRECISIONS) if on_gpu else None,
            # XLA autotunes convolution algorithms on GPU unless the autotune level is 0.
            cudnn_benchmark=("--xla_gpu_autotune_level=0" not in xla_flags) if on_gpu else None,
            details=details,
        )


# --------------------------------------------------------------------------------------------------
# Backend


class Backend(kernel.KernelBackend):
    """JAX + Flax NNX + Optax, the train step under ``jax.jit``."""

    name = "jax"
    model_class = Model
    devices = ("cpu", "cuda")
    precisions = BFLOAT16_PRECISIONS

    # Nothing to set in __init__: XLA sizes its CPU thread pool from the CPU affinity, which the
    # worker has already limited to ``threads`` cores before importing JAX.

    def version(self) -> str:
        return str(jax.__version__)

    def _device(self, device: str) -> str:
        checked = super()._device(device)
        _jax_device(checked)  # Unavailable where JAX sees no GPU
        return checked

    def flush_denormals(self) -> None:
        """None: XLA has no switch on the CPU; its compiled code flushes subnormals to zero, as every
        cell's probe shows (the kernel's MXCSR switch would add nothing)."""
        return None

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        where = _jax_device(self._device(device))
        product = jax.jit(jnp.matmul)(jax.device_put(a, where), jax.device_put(b, where))
        return np.asarray(product)
