"""JAX with Flax NNX modules and Optax (``jax``); the whole train step compiled by ``jax.jit``.

Only a worker process imports this module, after it has set CPU affinity: JAX has no thread setting
of its own (it ignores ``OMP_NUM_THREADS`` and XLA flags here), XLA's CPU thread pool simply follows
the affinity, so the parity record reports the affinity size as the thread count.

The network is an ordinary tree of ``nnx.Module`` objects built from the spec, channels-last (NHWC)
as Flax convolutions are; the LSTM and GRU are written here (a fused input projection for every time
step, then ``jax.lax.scan`` over time) because Flax's cells have a different bias set than the spec.

The step follows the "functional training loop" of Flax's performance guide: the model and its
``nnx.Optimizer`` are ``nnx.split`` once at prepare time, a pure step function ``nnx.merge``-s them
inside ``jax.jit`` (so the graph traversal is paid once, while tracing, not at every step), and the
state goes in and out as a flat list of arrays that is donated to the computation, so that XLA
updates parameters, optimizer slots and batch statistics in place. ``nnx.merge`` runs outside the
compiled code only where the verification needs the model object. Measured on the shared 2-core
machine, train, batch 32, 1 core, process CPU time per step in ms (fcn5-small / karmanov-cnn-small /
lstm32-small): ``nnx.jit`` 3.31 / 14.07 / 21.8, ``nnx.cached_partial`` of it 2.45 / 10.75 / 20.5,
``jax.jit`` over the ``nnx.State`` 2.08 / 10.04 / 18.8, ``jax.jit`` over the flat leaves (this
module) 1.97 / 9.54 / 18.1. The functional form is the fastest; the gap is the per-call Python
traversal of ``nnx.jit``, largest where the device work per step is small.

Synchronisation is ``block_until_ready`` on the step's output. Matmul precision is left at JAX's
default and recorded in the parity record (on a GPU that default allows TF32), not changed here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.typing import DTypeLike

from dlarena.frameworks import layout
from dlarena.frameworks.base import Parity, StepRequest, Unavailable, Unsupported, require, require_check_precision
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

DEVICES: tuple[str, ...] = ("cpu", "cuda")

Array = jax.Array
Initializer = Callable[..., Array]
LossFn = Callable[[Array, Array], Array]
State = nnx.State[Any, Any]

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh,
}
# The initialiser runs once, in milliseconds, but XLA's optimising backend takes long to compile its
# random number generators: without it googlenet-small's initialiser compiled in 14 s instead of 80 s
# (eagerly, one compilation per shape and operation, it took 87 s) on the shared 2-core machine.
_INIT_COMPILER_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 0}
# Layers that act element-wise and so keep the feature order a Flatten produced.
_ELEMENTWISE = (Activation, Dropout)
# jax_default_matmul_precision values that keep float32 matmuls and convolutions in full float32 on
# a GPU; anything else (None included, the default) lets XLA use TF32 on Ampere and newer.
_FULL_FLOAT32_PRECISIONS = ("highest", "float32")


def _modes(train: bool) -> dict[str, bool]:
    """Dropout and batch norm switched for training or inference, as ``nnx.view`` arguments."""
    return {"deterministic": not train, "use_running_average": not train}


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


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
        self.function = _ACTIVATIONS[function]

    def __call__(self, x: Array) -> Array:
        return self.function(x)


class Pool(nnx.Module):
    """``nnx.max_pool`` pads with minus infinity; ``nnx.avg_pool`` counts padding as zeros by default
    (``count_include_pad``), both as the spec says."""

    def __init__(self, layer: MaxPool2D | AvgPool2D) -> None:
        self.window = _pair(layer.kernel)
        self.strides = _pair(layer.stride if layer.stride is not None else layer.kernel)
        ph, pw = _pair(layer.padding)
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
    rows are permuted to match) consumes it; otherwise it is first put back in the canonical
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


class LSTMLayer(nnx.Module):
    """One LSTM layer over a time-major sequence, gates ``i, f, g, o``, one bias per gate.

    The input projection of every time step is one matmul before the loop; only ``h @ U`` and the
    gate arithmetic stay inside ``lax.scan``.
    """

    def __init__(self, n_in: int, hidden: int, inits: Inits, rngs: nnx.Rngs, dtype: DTypeLike) -> None:
        gates = 4 * hidden
        self.hidden = hidden
        self.input_kernel = nnx.Param(inits.input_kernel(rngs.params(), (n_in, gates), dtype))
        self.recurrent_kernel = nnx.Param(inits.recurrent_kernel(4)(rngs.params(), (hidden, gates), dtype))
        self.bias = nnx.Param(inits.bias(rngs.params(), (gates,), dtype))

    def __call__(self, xs: Array) -> Array:
        projected = _rows(xs, self.input_kernel[...]) + self.bias[...]
        recurrent = self.recurrent_kernel[...]

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

    def __init__(self, n_in: int, hidden: int, inits: Inits, rngs: nnx.Rngs, dtype: DTypeLike) -> None:
        gates = 3 * hidden
        self.hidden = hidden
        self.input_kernel = nnx.Param(inits.input_kernel(rngs.params(), (n_in, gates), dtype))
        self.recurrent_kernel = nnx.Param(inits.recurrent_kernel(3)(rngs.params(), (hidden, gates), dtype))
        self.input_bias = nnx.Param(inits.bias(rngs.params(), (gates,), dtype))
        self.recurrent_bias = nnx.Param(inits.bias(rngs.params(), (gates,), dtype))

    def __call__(self, xs: Array) -> Array:
        projected = _rows(xs, self.input_kernel[...]) + self.input_bias[...]
        recurrent, recurrent_bias = self.recurrent_kernel[...], self.recurrent_bias[...]

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


# --------------------------------------------------------------------------------------------------
# Initialisation per recipe


def _symmetric_uniform(scale: float) -> Initializer:
    def init(key: Array, shape: Shape, dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def _per_gate(init: Initializer, gates: int) -> Initializer:
    """``init`` applied to each gate's ``(H, H)`` block of an ``(H, G*H)`` kernel: Flax's own cells
    keep one recurrent Linear per gate, so their orthogonal init is per gate."""

    def per_gate(key: Array, shape: Shape, dtype: Any = jnp.float32) -> Array:
        block = (shape[0], shape[1] // gates)
        return jnp.concatenate([init(k, block, dtype) for k in jax.random.split(key, gates)], axis=-1)

    return per_gate


@dataclass(frozen=True)
class Inits:
    """Initialisers for every kind of parameter; batch norm is always gamma 1, beta 0 (Flax's own)."""

    dense: Initializer  # (in, out), also a convolution's HWIO kernel
    embedding: Initializer  # (vocab, dim)
    input_kernel: Initializer  # (in, G*H)
    recurrent: Initializer  # (H, G*H), applied whole, or per gate for the framework default
    bias: Initializer
    recurrent_per_gate: bool = False

    def recurrent_kernel(self, gates: int) -> Initializer:
        return _per_gate(self.recurrent, gates) if self.recurrent_per_gate else self.recurrent


def make_inits(recipe: Recipe) -> Inits:
    """The recipe's initialisation as Flax initialisers, matching PyTorch's ``initialise``.

    Fans follow PyTorch: JAX's default axes (fan in on axis -2 including the receptive field of an
    HWIO kernel) give the same fans for Dense, conv and recurrent kernels; for the embedding table
    PyTorch's fan in is its second axis (``dim``), so he_normal uses ``in_axis=-1`` there. PyTorch's
    ``kaiming_normal_`` is an untruncated normal, JAX's ``he_normal`` a truncated one, hence
    ``variance_scaling(2.0, "fan_in", "normal")`` (JAX's "normal" is the untruncated one).
    """
    init = recipe.init
    zeros = nnx.initializers.zeros_init()
    if init.name == "framework_default":
        # Flax's defaults: lecun_normal kernels, zero biases, its embedding init, and for the cells
        # what nnx.LSTMCell / nnx.GRUCell use (lecun_normal input, per-gate orthogonal recurrent).
        lecun = nnx.initializers.lecun_normal()
        return Inits(
            dense=lecun, embedding=nnx.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0),
            input_kernel=lecun, recurrent=nnx.initializers.orthogonal(), bias=zeros, recurrent_per_gate=True,
        )
    if init.name == "uniform":
        uniform = _symmetric_uniform(init.scale)
        return Inits(dense=uniform, embedding=uniform, input_kernel=uniform, recurrent=uniform, bias=uniform)
    if init.name == "glorot_uniform":
        glorot = nnx.initializers.glorot_uniform()
        return Inits(dense=glorot, embedding=glorot, input_kernel=glorot, recurrent=glorot, bias=zeros)
    if init.name == "he_normal":
        he = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
        he_embedding = nnx.initializers.variance_scaling(2.0, "fan_in", "normal", in_axis=-1, out_axis=-2)
        return Inits(dense=he, embedding=he_embedding, input_kernel=he, recurrent=he, bias=zeros)
    raise Unsupported(f"the JAX backend does not know the initialisation {init.name!r}")


# --------------------------------------------------------------------------------------------------
# Spec -> nnx.Module, with the canonical weights bound to the variables as it goes


Converter = Callable[[np.ndarray], np.ndarray]
Path = tuple[Any, ...]  # where a variable sits in the module graph, as nnx.iter_graph names it


@dataclass(frozen=True)
class Binding:
    """Where one canonical parameter lives in the model and how its layout converts."""

    path: Path
    to_flax: Converter
    to_canonical: Converter


def _same(array: np.ndarray) -> np.ndarray:
    return array


def _conv_to_canonical(kernel: np.ndarray) -> np.ndarray:
    return layout.conv_kernel_hwio(kernel, inverse=True)


def _dense_follows(layers: tuple[Layer, ...]) -> bool:
    """Whether the first layer that is not element-wise is a Dense."""
    for layer in layers:
        if not isinstance(layer, _ELEMENTWISE):
            return isinstance(layer, Dense)
    return False


class Builder:
    """Builds the model for a network and notes which variable holds each canonical parameter."""

    def __init__(self, inits: Inits, rngs: nnx.Rngs, dtype: DTypeLike) -> None:
        self.inits = inits
        self.rngs = rngs
        self.dtype = dtype  # of every parameter
        self.variables: dict[str, tuple[nnx.Variable[Array], Converter, Converter]] = {}

    def _bind(
        self, name: str, variable: nnx.Variable[Array], to_flax: Converter = _same, to_canonical: Converter = _same
    ) -> None:
        self.variables[name] = (variable, to_flax, to_canonical)

    def bindings(self, model: nnx.Module) -> dict[str, Binding]:
        paths = {id(node): path for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Variable)}
        return {name: Binding(paths[id(variable)], to_flax, to_canonical)
                for name, (variable, to_flax, to_canonical) in self.variables.items()}

    def sequence(self, layers: tuple[Layer, ...], shape: Shape, prefix: str) -> Chain:
        modules: list[nnx.Module] = []
        rows_chw: Shape | None = None  # set while a channels-last Flatten waits for its Dense
        for index, layer in enumerate(layers):
            path = f"{prefix}{index}"
            if isinstance(layer, Flatten) and len(shape) == 3:
                channels_last = _dense_follows(layers[index + 1:])
                modules.append(FlattenLayer(channels_first=not channels_last))
                rows_chw = shape if channels_last else None
            elif isinstance(layer, Dense):
                modules.append(self._dense(layer, shape, path, rows_chw))
                rows_chw = None
            else:
                modules.append(self._layer(layer, shape, path))
            shape = layer.out_shape(shape)
        return Chain(modules)

    def _dense(self, layer: Dense, shape: Shape, path: str, rows_chw: Shape | None) -> nnx.Module:
        linear = nnx.Linear(
            shape[-1], layer.units, use_bias=layer.bias, kernel_init=self.inits.dense,
            bias_init=self.inits.bias, param_dtype=self.dtype, rngs=self.rngs,
        )
        if rows_chw is None:
            self._bind(f"{path}.kernel", linear.kernel)
        else:
            chw = rows_chw
            self._bind(
                f"{path}.kernel", linear.kernel,
                lambda kernel: layout.flattened_rows_channels_last(kernel, chw),
                lambda kernel: layout.flattened_rows_channels_last(kernel, chw, inverse=True),
            )
        if linear.bias is not None:
            self._bind(f"{path}.bias", linear.bias)
        return SequenceDense(linear) if len(shape) > 1 else linear

    def _layer(self, layer: Layer, shape: Shape, path: str) -> nnx.Module:
        """The module for one spec layer (not a Dense) whose canonical input shape is ``shape``."""
        if isinstance(layer, Conv2D):
            ph, pw = _pair(layer.padding)
            conv = nnx.Conv(
                shape[0], layer.filters, _pair(layer.kernel), strides=_pair(layer.stride),
                padding=((ph, ph), (pw, pw)), use_bias=layer.bias, kernel_init=self.inits.dense,
                bias_init=self.inits.bias, param_dtype=self.dtype, rngs=self.rngs,
            )
            self._bind(f"{path}.kernel", conv.kernel, layout.conv_kernel_hwio, _conv_to_canonical)
            if conv.bias is not None:
                self._bind(f"{path}.bias", conv.bias)
            return conv
        if isinstance(layer, MaxPool2D | AvgPool2D):
            return Pool(layer)
        if isinstance(layer, GlobalAvgPool2D):
            return GlobalAvgPool()
        if isinstance(layer, BatchNorm):
            # Flax's momentum is the decay of the running average, PyTorch's the weight of the new
            # batch. Flax updates the running variance with the biased batch variance, PyTorch with
            # the unbiased one: running statistics differ by n/(n-1), outputs in training do not.
            norm = nnx.BatchNorm(
                shape[0], momentum=1.0 - layer.momentum, epsilon=layer.eps, param_dtype=self.dtype, rngs=self.rngs
            )
            assert norm.scale is not None and norm.bias is not None  # use_scale and use_bias are on
            self._bind(f"{path}.gamma", norm.scale)
            self._bind(f"{path}.beta", norm.bias)
            return norm
        if isinstance(layer, Activation):
            return ActivationLayer(layer.function)
        if isinstance(layer, Dropout):
            return nnx.Dropout(layer.rate, rngs=self.rngs)
        if isinstance(layer, Flatten):
            return FlattenLayer(channels_first=False)  # a sequence or a vector: already canonical
        if isinstance(layer, Embedding):
            embed = nnx.Embed(
                layer.vocab, layer.dim, embedding_init=self.inits.embedding, param_dtype=self.dtype, rngs=self.rngs
            )
            self._bind(f"{path}.table", embed.embedding)
            return embed
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

    def _recurrent(self, layer: LSTM | GRU, shape: Shape, path: str) -> Recurrent:
        cells: list[LSTMLayer | GRULayer] = []
        for k in range(layer.layers):
            n_in = shape[-1] if k == 0 else layer.hidden
            prefix = f"{path}.layer{k}"
            if isinstance(layer, LSTM):
                lstm = LSTMLayer(n_in, layer.hidden, self.inits, self.rngs, self.dtype)
                self._bind(f"{prefix}.bias", lstm.bias)
                cell: LSTMLayer | GRULayer = lstm
            else:
                gru = GRULayer(n_in, layer.hidden, self.inits, self.rngs, self.dtype)
                self._bind(f"{prefix}.input_bias", gru.input_bias)
                self._bind(f"{prefix}.recurrent_bias", gru.recurrent_bias)
                cell = gru
            # Canonical recurrent layouts are (in, G*H) and (H, G*H) in the spec's gate order: as here.
            self._bind(f"{prefix}.input_kernel", cell.input_kernel)
            self._bind(f"{prefix}.recurrent_kernel", cell.recurrent_kernel)
            cells.append(cell)
        return Recurrent(cells, layer.return_sequences)


@dataclass(frozen=True)
class Initialised:
    """What one compiled set-up produced: the split model (with its optimizer when training), the
    canonical bindings, the parameter count and, for a runner, the synthetic batch."""

    graphdef: nnx.GraphDef[Any]
    state: State
    bindings: dict[str, Binding]
    params: int
    dtype: str  # of the parameters, as built
    batch: tuple[Array, Array] | None


def initialise(
    network: Network, recipe: Recipe, key: Array, train: bool, batch_size: int | None = None,
    dtype: DTypeLike = jnp.float32,
) -> Initialised:
    """Build, initialise and split the model (and optimizer, and batch) in one compiled function.

    Run eagerly, every initialiser, every optimizer slot and every random batch would be one
    compilation per operation and shape (87 s for googlenet-small on the shared 2-core machine);
    traced together and split inside, merged only when needed, they compile once.
    """
    found: list[tuple[nnx.GraphDef[Any], dict[str, Binding], int, str]] = []

    def create(key: Array) -> tuple[State, tuple[Array, Array] | None]:
        params_key, dropout_key, data_key = jax.random.split(key, 3)
        builder = Builder(make_inits(recipe), nnx.Rngs(params=params_key, dropout=dropout_key), dtype)
        model = builder.sequence(network.layers, network.input_shape, "")
        # Modes as Flax's docs set them now: a view with Dropout and BatchNorm switched.
        model = nnx.view(model, raise_if_not_found=False, **_modes(train))
        node: Any = (model, nnx.Optimizer(model, make_optimizer(recipe), wrt=nnx.Param)) if train else model
        graphdef, state = nnx.split(node)
        dtypes = sorted({str(leaf.dtype) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))})
        found.append((graphdef, builder.bindings(model), _param_count(model), ",".join(dtypes)))  # static
        batch = synthetic_batch(network, batch_size, data_key) if batch_size is not None else None
        return state, batch

    compiled = jax.jit(create).lower(key).compile(compiler_options=_INIT_COMPILER_OPTIONS)
    state, batch = compiled(key)
    graphdef, bindings, params, dtype = found[0]
    return Initialised(graphdef, state, bindings, params, dtype, batch)


def variables_by_path(model: nnx.Module) -> dict[Path, nnx.Variable[Array]]:
    return {path: node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Variable)}


def load_canonical(
    model: nnx.Module, bindings: dict[str, Binding], weights: dict[str, np.ndarray], dtype: np.dtype[Any],
    device: jax.Device,
) -> None:
    """Copy canonical weights into ``model``; batch norm's running statistics restart at mean 0, variance 1."""
    layout.same_keys(list(bindings), weights)
    variables = variables_by_path(model)
    for name, binding in bindings.items():
        value = np.ascontiguousarray(binding.to_flax(weights[name]), dtype=dtype)
        variables[binding.path][...] = jax.device_put(value, device)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm):
            # Replaced rather than assigned into (which keeps the old dtype): nnx.BatchNorm builds
            # its statistics in float32 whatever its param_dtype.
            node.mean.set_value(jnp.zeros(node.mean.shape, dtype, device=device))
            node.var.set_value(jnp.ones(node.var.shape, dtype, device=device))


def device_inputs(network: Network, inputs: np.ndarray, dtype: np.dtype[Any], device: jax.Device) -> Array:
    """A canonical batch (channels-first images, int64 token ids) as the model takes it, on ``device``."""
    if network.input_kind == "tokens":
        host = inputs.astype(np.int32)  # JAX's default integer without x64; ids are far below 2**31
    else:
        host = layout.images_channels_last(inputs.astype(dtype))
    on_device: Array = jax.device_put(host, device)
    return on_device


# --------------------------------------------------------------------------------------------------
# Recipe: optimizer and loss


def make_optimizer(recipe: Recipe) -> optax.GradientTransformation:
    """The recipe's optimizer with PyTorch's semantics, as an Optax chain.

    Clipping comes first, as ``clip_grad_norm_`` before ``optimizer.step()``; weight decay is
    PyTorch's L2 form (``weight_decay * param`` added to the gradient before the update rule), which
    is ``add_decayed_weights`` ahead of the rule. SGD momentum is PyTorch's (no dampening,
    ``v = m*v + g``, Nesterov ``g + m*v``), Adam's epsilon sits outside the square root as in
    PyTorch, RMSprop starts its average at zero with epsilon outside the root (``eps_in_sqrt=False``),
    Adadelta is the same rule. Optax's global-norm clipping scales by ``max_norm / norm`` where
    PyTorch uses ``max_norm / (norm + 1e-6)``: a relative difference of 1e-6 / norm when clipping.
    """
    opt = recipe.optimizer
    if opt.name == "sgd":
        rule = optax.sgd(opt.lr, momentum=opt.momentum or None, nesterov=opt.nesterov)
    elif opt.name == "adam":
        rule = optax.adam(opt.lr, b1=opt.beta1, b2=opt.beta2, eps=opt.eps)
    elif opt.name == "adadelta":
        rule = optax.adadelta(opt.lr, rho=opt.rho, eps=opt.eps)
    elif opt.name == "rmsprop":
        rule = optax.rmsprop(opt.lr, decay=opt.rho, eps=opt.eps, eps_in_sqrt=False)
    else:
        raise Unsupported(f"the JAX backend does not know the optimizer {opt.name!r}")
    steps = []
    if recipe.grad_clip_norm is not None:
        steps.append(optax.clip_by_global_norm(recipe.grad_clip_norm))
    if opt.weight_decay:
        steps.append(optax.add_decayed_weights(opt.weight_decay))
    return optax.chain(*steps, rule) if steps else rule


def make_loss(network: Network, recipe: Recipe, batch_size: int) -> LossFn:
    """Softmax cross-entropy on logits, reduced as the recipe says (per token for language models)."""
    classes = network.classes
    sum_over_batch = recipe.loss_reduction == "sum_over_batch"

    def loss(logits: Array, labels: Array) -> Array:
        losses = optax.softmax_cross_entropy_with_integer_labels(logits.reshape(-1, classes), labels.reshape(-1))
        return jnp.sum(losses) / batch_size if sum_over_batch else jnp.mean(losses)

    return loss


def synthetic_batch(network: Network, batch_size: int, key: Array) -> tuple[Array, Array]:
    """Inputs and labels made once on the current default device; images directly in NHWC."""
    input_key, label_key = jax.random.split(key)
    shape: Shape = (batch_size, *network.input_shape)
    if network.input_kind == "tokens":
        inputs = jax.random.randint(input_key, shape, 0, network.vocab, dtype=jnp.int32)
    else:
        if len(shape) == 4:
            shape = (shape[0], shape[2], shape[3], shape[1])
        inputs = jax.random.normal(input_key, shape, jnp.float32)
    labels = jax.random.randint(label_key, (batch_size, *network.label_shape), 0, network.classes, dtype=jnp.int32)
    return inputs, labels


def _param_count(model: nnx.Module) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


# --------------------------------------------------------------------------------------------------
# Runners


class _Runner:
    """What train and infer runners share: the parameter count, the device and the parity record."""

    def __init__(self, setup: Initialised, device: jax.Device, image: bool) -> None:
        self.params = setup.params
        self.dtype = setup.dtype
        self.device = device
        self.image = image
        self.pending: Array | None = None  # the last step's output, waited on by sync()

    def sync(self) -> None:
        # Every output of one XLA execution becomes ready together, and each train step consumes
        # the state the previous one produced, so waiting for the last step's output waits for all
        # work queued so far without walking the whole state tree.
        if self.pending is not None:
            self.pending.block_until_ready()

    def trainable_params(self) -> int:
        return self.params

    def parity(self) -> Parity:
        on_gpu = self.device.platform == "gpu"
        precision = jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]  # set dynamically
        xla_flags = os.environ.get("XLA_FLAGS", "")
        details: dict[str, Any] = {
            "threads_from": "CPU affinity (JAX has no thread setting; XLA's CPU pool follows the affinity)",
            "jax": jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "backend": jax.default_backend(),
            "device": str(self.device),
            "devices": [str(device) for device in jax.devices()],
            # Left at JAX's default on purpose: what a JAX user gets, recorded rather than changed.
            "default_matmul_precision": precision,
            "x64": jax.config.jax_enable_x64,  # type: ignore[attr-defined]  # set dynamically
            "xla_flags": xla_flags or None,
            "step": "jax.jit of a pure step over nnx.split state, donated",
        }
        if on_gpu:
            details["device_kind"] = self.device.device_kind
            details["preallocate"] = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
        return Parity(
            threads=len(os.sched_getaffinity(0)),
            dtype=self.dtype,
            layout="NHWC" if self.image else None,
            execution="jit",
            tf32=(precision not in _FULL_FLOAT32_PRECISIONS) if on_gpu else None,
            # XLA autotunes convolution algorithms on GPU unless the autotune level is 0.
            cudnn_benchmark=("--xla_gpu_autotune_level=0" not in xla_flags) if on_gpu else None,
            details=details,
        )


def _placed(leaves: list[Array], device: jax.Device) -> list[Array]:
    """The state committed to ``device``, its set-up work finished before any step is timed."""
    placed: list[Array] = jax.device_put(leaves, device)
    for leaf in placed:
        leaf.block_until_ready()
    return placed


class TrainRunner(_Runner):
    """One step is one call of the compiled pure step: forward, loss, gradients, optimizer update."""

    def __init__(self, setup: Initialised, loss_fn: LossFn, device: jax.Device) -> None:
        assert setup.batch is not None
        inputs, labels = jax.device_put(setup.batch, device)
        super().__init__(setup, device, inputs.ndim == 4)
        self.inputs, self.labels = inputs, labels
        graphdef = setup.graphdef
        leaves, treedef = jax.tree.flatten(setup.state)
        structure: Any = treedef  # jaxlib's PyTreeDef is opaque to mypy
        self.graphdef, self.structure = graphdef, structure

        def step(leaves: list[Array], inputs: Array, labels: Array) -> tuple[Array, list[Array]]:
            model, optimizer = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))

            def loss_of(model: Chain) -> Array:
                return loss_fn(model(inputs), labels)

            loss, grads = nnx.value_and_grad(loss_of)(model)
            optimizer.update(model, grads)
            # flatten_up_to fails, while tracing, unless the new state has the structure of the old:
            # the leaves line up step after step.
            new_leaves: list[Array] = structure.flatten_up_to(nnx.state((model, optimizer)))
            return loss, new_leaves

        # The state is donated: XLA updates parameters, optimizer slots and batch statistics in place.
        self._step = jax.jit(step, donate_argnums=0)
        self.leaves: list[Array] = _placed(leaves, device)

    def step(self) -> None:
        self.pending, self.leaves = self._step(self.leaves, self.inputs, self.labels)


def inference_forward(graphdef: nnx.GraphDef[Any], treedef: Any) -> Callable[[list[Array], Array], Array]:
    """The pure forward pass in inference mode over the flat state of a model, or of the
    ``(model, optimizer)`` pair a train runner steps, whose model is then viewed in inference mode
    inside the traced function (a view shares the arrays: nothing is copied)."""

    def forward(leaves: list[Array], inputs: Array) -> Array:
        node = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        if isinstance(node, tuple):
            node = nnx.view(node[0], raise_if_not_found=False, **_modes(train=False))
        model: Chain = node
        return model(inputs)

    return forward


class InferRunner(_Runner):
    """One step is one call of the compiled forward pass in inference mode."""

    def __init__(self, setup: Initialised, device: jax.Device) -> None:
        assert setup.batch is not None
        inputs = jax.device_put(setup.batch[0], device)
        super().__init__(setup, device, inputs.ndim == 4)
        self.inputs = inputs
        graphdef = setup.graphdef
        leaves, treedef = jax.tree.flatten(setup.state)

        self._forward = jax.jit(inference_forward(graphdef, treedef))
        self.leaves: list[Array] = _placed(leaves, device)

    def step(self) -> None:
        self.pending = self._forward(self.leaves, self.inputs)


class Trainer(TrainRunner):
    """The train runner fed real batches (the accuracy scenario); see base.Trainer.

    Batches are arguments of the compiled step, never constants of it, so a new batch of the same
    shape reuses the compiled code; ``predict`` is a second compiled function over the same state.
    """

    # Built in float32, the precision timed: the accuracy scenario has no float64 form.
    FLOAT = np.dtype(np.float32)

    def __init__(self, setup: Initialised, loss_fn: LossFn, device: jax.Device, network: Network) -> None:
        super().__init__(setup, loss_fn, device)
        self.network = network
        self.bindings = setup.bindings
        self._predict = jax.jit(inference_forward(self.graphdef, self.structure))

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        # Merged outside the compiled code, as the Checker's model, then flattened again in the order
        # the compiled step expects; the optimizer's slots are untouched (zero before any step).
        model, optimizer = nnx.merge(self.graphdef, jax.tree.unflatten(self.structure, self.leaves))
        load_canonical(model, self.bindings, weights, self.FLOAT, self.device)
        self.leaves = _placed(self.structure.flatten_up_to(nnx.state((model, optimizer))), self.device)

    def train_step(self, inputs: np.ndarray, labels: np.ndarray) -> Array:
        self.inputs = device_inputs(self.network, inputs, self.FLOAT, self.device)
        self.labels = jax.device_put(labels.astype(np.int32), self.device)
        self.step()
        assert self.pending is not None
        return self.pending  # the loss, still on the device: float() waits for it

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        logits = self._predict(self.leaves, device_inputs(self.network, inputs, self.FLOAT, self.device))
        return np.asarray(logits)


# --------------------------------------------------------------------------------------------------
# Verification: canonical weights in and out


class Checker:
    """The network in inference mode with canonical weights, in ``precision``; see base.Checker.

    A float64 checker needs JAX's x64 mode on before it is built (Backend.checker turns it on); it
    leaves ``jax_default_matmul_precision`` alone, as that setting lowers float32 products only.
    """

    def __init__(self, workload: Workload, device: jax.Device, precision: str) -> None:
        self.network, self.recipe = workload.network, workload.recipe
        self.device = device
        self.dtype = np.dtype(precision)
        with jax.default_device(device):
            setup = initialise(self.network, self.recipe, jax.random.key(0), train=False, dtype=self.dtype)
        self.model: Chain = nnx.merge(setup.graphdef, jax.device_put(setup.state, device))
        self.bindings = setup.bindings
        self.params = setup.params
        self.variables = variables_by_path(self.model)
        graphdef = nnx.graphdef(self.model)

        def forward(params: State, rest: State, inputs: Array) -> Array:
            model: Chain = nnx.merge(graphdef, params, rest)
            return model(inputs)

        self._forward = jax.jit(forward)

        def loss_of(params: State, rest: State, inputs: Array, labels: Array) -> Array:
            loss_fn = make_loss(self.network, self.recipe, inputs.shape[0])
            return loss_fn(forward(params, rest, inputs), labels)

        self._loss_and_grads = jax.jit(jax.value_and_grad(loss_of))

    def trainable_params(self) -> int:
        return self.params

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        load_canonical(self.model, self.bindings, weights, self.dtype, self.device)

    def export_weights(self) -> dict[str, np.ndarray]:
        return {name: np.array(binding.to_canonical(np.asarray(self.variables[binding.path][...])))
                for name, binding in self.bindings.items()}

    def _inputs(self, inputs: np.ndarray) -> Array:
        return device_inputs(self.network, inputs, self.dtype, self.device)

    def _states(self) -> tuple[State, State]:
        return nnx.state(self.model, nnx.Param), nnx.state(self.model, nnx.Not(nnx.Param))

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        return np.asarray(self._forward(*self._states(), self._inputs(inputs)))

    def loss_and_gradients(self, inputs: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        labels_on_device = jax.device_put(labels.astype(np.int32), self.device)
        loss, grads = self._loss_and_grads(*self._states(), self._inputs(inputs), labels_on_device)
        flat = dict(nnx.to_flat_state(grads))
        gradients = {}
        for name, binding in self.bindings.items():
            grad = flat[binding.path]
            array = np.asarray(grad[...] if isinstance(grad, nnx.Variable) else grad)
            gradients[name] = np.array(binding.to_canonical(array))
        return float(loss), gradients


# --------------------------------------------------------------------------------------------------
# Backend


class Backend:
    """JAX + Flax NNX + Optax, the train step under ``jax.jit``."""

    name = "jax"

    def __init__(self, threads: int) -> None:
        # Nothing to set: XLA sizes its CPU thread pool from the CPU affinity, which the worker has
        # already limited to ``threads`` cores before importing JAX.
        self.threads = threads

    def version(self) -> str:
        return str(jax.__version__)

    def _device(self, name: str) -> jax.Device:
        if name == "cuda":
            try:
                return jax.devices("gpu")[0]
            except RuntimeError:
                raise Unavailable(f"JAX {jax.__version__} sees no GPU (jaxlib without CUDA, or no device)") from None
        if name == "cpu":
            return jax.devices("cpu")[0]
        raise Unsupported(f"the JAX backend runs on {' or '.join(DEVICES)}, not {name!r}")

    # No flush_denormals: XLA has no switch on the CPU; its compiled code flushes subnormals to zero,
    # as every cell's probe shows.
    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        where = self._device(device)
        product = jax.jit(jnp.matmul)(jax.device_put(a, where), jax.device_put(b, where))
        return np.asarray(product)

    def checker(self, workload: Workload, device: str, precision: str = "float32") -> Checker:
        require_check_precision(precision, "JAX")
        if precision == "float64":
            # Without x64 JAX silently makes every float64 array float32. The config is read when a
            # function is traced and an array made, so turning it on after import, before anything
            # of the checker is built, takes effect; the worker builds one checker per process.
            jax.config.update("jax_enable_x64", True)  # type: ignore[no-untyped-call]  # jax leaves it unannotated
        return Checker(workload, self._device(device), precision)

    def _initialise(self, request: StepRequest) -> tuple[Initialised, jax.Device]:
        require(request, "JAX")
        device = self._device(request.device)
        network, recipe = request.workload.network, request.workload.recipe
        train = request.scenario == "train"
        with jax.default_device(device):
            setup = initialise(network, recipe, jax.random.key(request.seed), train, request.batch_size)
        return setup, device

    def prepare(self, request: StepRequest) -> TrainRunner | InferRunner:
        setup, device = self._initialise(request)
        if request.scenario != "train":
            return InferRunner(setup, device)
        network, recipe = request.workload.network, request.workload.recipe
        return TrainRunner(setup, make_loss(network, recipe, request.batch_size), device)

    def trainer(self, request: StepRequest) -> Trainer:
        # The train runner's set-up (its synthetic batch is made, but only real batches are stepped);
        # the dropout key comes from request.seed, as the parameter key does.
        setup, device = self._initialise(replace(request, scenario="train"))
        network, recipe = request.workload.network, request.workload.recipe
        return Trainer(setup, make_loss(network, recipe, request.batch_size), device, network)
