"""Canonical weights: one name, shape and layout for every parameter of a network.

Every framework loads and exports weights in this form, so that the same numbers can be put into
every framework and their outputs and gradients compared. Layouts (see also layers.py):

* ``Dense``: ``kernel`` ``(in, out)``, ``bias`` ``(out,)``. After a ``Flatten`` of an image, the
  rows of ``kernel`` follow the channels-first order ``(C, H, W)``; channels-last frameworks permute.
* ``Conv2D``: ``kernel`` ``(out, in, kh, kw)``, ``bias`` ``(out,)``.
* ``BatchNorm``: ``gamma``, ``beta`` ``(C,)``; running statistics start at mean 0, variance 1.
* ``Embedding``: ``table`` ``(vocab, dim)``; ``PositionEmbedding``: ``table`` ``(positions, dim)``;
  ``TokenTypeEmbedding``: ``table`` ``(types, dim)``. ``TiedOutput`` has none: it reads its
  Embedding's ``table``.
* ``LayerNorm``: ``gamma``, ``beta`` ``(D,)``.
* ``MultiHeadSelfAttention``: ``qkv_kernel`` ``(D, 3D)`` and ``qkv_bias`` ``(3D,)``, blocks q, k, v,
  each block's columns head by head; ``out_kernel`` ``(D, D)`` (rows head by head), ``out_bias``
  ``(D,)``. This is GPT-2's ``c_attn``/``c_proj`` as stored; BERT's separate query, key and value
  matrices are its three blocks.
* ``LSTM``, per stacked layer ``k``: ``layerK.input_kernel`` ``(in, 4H)``,
  ``layerK.recurrent_kernel`` ``(H, 4H)``, ``layerK.bias`` ``(4H,)``; gate blocks ``i, f, g, o``.
* ``GRU``, per stacked layer ``k``: ``layerK.input_kernel`` ``(in, 3H)``,
  ``layerK.recurrent_kernel`` ``(H, 3H)``, ``layerK.input_bias`` and ``layerK.recurrent_bias``
  ``(3H,)``; gate blocks ``r, z, n`` (the reset gate multiplies ``U_n h + b_hn``).

Names are the layer's path in the network (``"4"``, ``"7.body.0"``, ``"9.branches.2.1"``) followed by
the parameter's name: ``"7.body.0.kernel"``. Residual bodies come before shortcuts; concatenation
branches in order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dlarena.spec.layers import (
    GRU,
    LSTM,
    BatchNorm,
    Concat,
    Conv2D,
    Dense,
    Embedding,
    Layer,
    LayerNorm,
    MultiHeadSelfAttention,
    PositionEmbedding,
    Residual,
    Shape,
    TokenTypeEmbedding,
    pair,
)
from dlarena.spec.network import Network
from dlarena.spec.recipe import Init

# Canonical test weights: biases and batch-norm shifts small but non-zero so that a framework that
# drops or misplaces one is caught; batch-norm scales around one; kernels with variance 1/fan_in
# (LeCun) so that activations keep their scale through deep networks.
BIAS_SCALE = 0.1
GAMMA_RANGE = (0.5, 1.5)
BETA_SCALE = 0.5


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: Shape
    fan_in: int  # inputs feeding one output unit, for scaling
    # kernel, bias, gamma, beta, table, input_kernel, recurrent_kernel, input_bias, recurrent_bias
    role: str


def walk(layers: tuple[Layer, ...], shape: Shape, prefix: str = "") -> Iterator[tuple[str, Layer, Shape]]:
    """Every leaf layer with its path and per-sample input shape, in canonical order."""
    for index, layer in enumerate(layers):
        path = f"{prefix}{index}"
        if isinstance(layer, Residual):
            yield from walk(layer.body, shape, f"{path}.body.")
            yield from walk(layer.shortcut, shape, f"{path}.shortcut.")
        elif isinstance(layer, Concat):
            for branch_index, branch in enumerate(layer.branches):
                yield from walk(branch, shape, f"{path}.branches.{branch_index}.")
        else:
            yield path, layer, shape
        shape = layer.out_shape(shape)


def layer_params(path: str, layer: Layer, shape: Shape) -> list[ParamSpec]:
    """The canonical parameters of one leaf layer whose input shape is ``shape``."""
    if isinstance(layer, Dense):
        specs = [ParamSpec(f"{path}.kernel", (shape[-1], layer.units), shape[-1], "kernel")]
        if layer.bias:
            specs.append(ParamSpec(f"{path}.bias", (layer.units,), shape[-1], "bias"))
        return specs
    if isinstance(layer, Conv2D):
        kh, kw = pair(layer.kernel)
        fan_in = shape[0] * kh * kw
        specs = [ParamSpec(f"{path}.kernel", (layer.filters, shape[0], kh, kw), fan_in, "kernel")]
        if layer.bias:
            specs.append(ParamSpec(f"{path}.bias", (layer.filters,), fan_in, "bias"))
        return specs
    if isinstance(layer, BatchNorm):
        return [ParamSpec(f"{path}.gamma", (shape[0],), 1, "gamma"), ParamSpec(f"{path}.beta", (shape[0],), 1, "beta")]
    if isinstance(layer, LayerNorm):
        width = shape[-1]
        return [ParamSpec(f"{path}.gamma", (width,), 1, "gamma"), ParamSpec(f"{path}.beta", (width,), 1, "beta")]
    if isinstance(layer, Embedding):
        return [ParamSpec(f"{path}.table", (layer.vocab, layer.dim), 1, "table")]
    if isinstance(layer, PositionEmbedding):
        return [ParamSpec(f"{path}.table", (layer.positions, shape[-1]), 1, "table")]
    if isinstance(layer, TokenTypeEmbedding):
        return [ParamSpec(f"{path}.table", (layer.types, shape[-1]), 1, "table")]
    if isinstance(layer, MultiHeadSelfAttention):
        width = shape[-1]
        return [ParamSpec(f"{path}.qkv_kernel", (width, 3 * width), width, "kernel"),
                ParamSpec(f"{path}.qkv_bias", (3 * width,), width, "bias"),
                ParamSpec(f"{path}.out_kernel", (width, width), width, "kernel"),
                ParamSpec(f"{path}.out_bias", (width,), width, "bias")]
    if isinstance(layer, LSTM | GRU):
        size = layer.gates * layer.hidden
        specs = []
        for k in range(layer.layers):
            n_in = shape[-1] if k == 0 else layer.hidden
            fan_in = n_in + layer.hidden
            specs += [
                ParamSpec(f"{path}.layer{k}.input_kernel", (n_in, size), fan_in, "input_kernel"),
                ParamSpec(f"{path}.layer{k}.recurrent_kernel", (layer.hidden, size), fan_in, "recurrent_kernel"),
            ]
            if isinstance(layer, LSTM):
                specs.append(ParamSpec(f"{path}.layer{k}.bias", (size,), fan_in, "bias"))
            else:
                specs += [
                    ParamSpec(f"{path}.layer{k}.input_bias", (size,), fan_in, "input_bias"),
                    ParamSpec(f"{path}.layer{k}.recurrent_bias", (size,), fan_in, "recurrent_bias"),
                ]
        return specs
    return []


def parameter_specs(network: Network) -> list[ParamSpec]:
    """Every parameter of ``network`` in canonical order; their sizes add up to ``network.params``."""
    return [spec for path, layer, shape in walk(network.layers, network.input_shape)
            for spec in layer_params(path, layer, shape)]


def canonical_weights(network: Network, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic float32 test weights for ``network`` (the same on every machine and NumPy)."""
    rng = np.random.RandomState(seed)  # the legacy generator's stream is frozen across NumPy versions
    weights = {}
    for spec in parameter_specs(network):
        if spec.role == "gamma":
            low, high = GAMMA_RANGE
        elif spec.role == "beta":
            low, high = -BETA_SCALE, BETA_SCALE
        elif spec.role in ("bias", "input_bias", "recurrent_bias"):
            low, high = -BIAS_SCALE, BIAS_SCALE
        else:
            limit = math.sqrt(3.0 / spec.fan_in)  # uniform(-a, a) has variance a^2 / 3 = 1 / fan_in
            low, high = -limit, limit
        weights[spec.name] = rng.uniform(low, high, size=spec.shape).astype(np.float32)
    return weights


def canonical_batch(network: Network, batch_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic inputs (float32, or int64 token ids) and int64 labels for ``network``."""
    rng = np.random.RandomState(seed + 1)
    shape = (batch_size, *network.input_shape)
    if network.input_kind == "tokens":
        inputs = rng.randint(0, network.vocab, size=shape).astype(np.int64)
    else:
        inputs = rng.standard_normal(shape).astype(np.float32)
    labels = rng.randint(0, network.classes, size=(batch_size, *network.label_shape)).astype(np.int64)
    return inputs, labels


def _fans(spec: ParamSpec) -> tuple[int, int]:
    """Fan-in and fan-out of a kernel as PyTorch and Keras count them for its canonical layout."""
    shape = spec.shape
    if len(shape) == 4:  # conv (out, in, kh, kw): each output unit sees in * kh * kw inputs
        receptive = shape[2] * shape[3]
        return shape[1] * receptive, shape[0] * receptive
    if spec.role == "table":  # (vocab, dim), as torch's Embedding.weight
        return shape[1], shape[0]
    return shape[0], shape[1]  # dense and recurrent kernels (in, out)


def initial_weights(network: Network, init: Init, seed: int) -> dict[str, np.ndarray]:
    """Float32 starting weights drawn in NumPy by the recipe's rule, the same for every framework.

    The accuracy scenario starts every framework from these, so that a difference in accuracy
    comes from the framework's training and not from its random number generator. The rules are
    the frameworks' own: ``glorot_uniform`` (uniform within sqrt(6 / (fan_in + fan_out))) and
    ``he_normal`` (normal with standard deviation sqrt(2 / fan_in)) for kernels, embedding tables
    included, and zero biases; ``normal(0, s)`` for kernels and tables with zero biases (BERT, GPT-2);
    ``uniform(-s, s)`` for every parameter; batch norm and layer norm start at gamma 1,
    beta 0. ``framework_default`` has no single rule across frameworks, so it takes glorot_uniform.
    """
    rng = np.random.RandomState(seed)
    weights = {}
    for spec in parameter_specs(network):
        if spec.role == "gamma":
            value = np.ones(spec.shape)
        elif spec.role == "beta":
            value = np.zeros(spec.shape)
        elif init.name == "uniform":
            value = rng.uniform(-init.scale, init.scale, size=spec.shape)
        elif spec.role in ("bias", "input_bias", "recurrent_bias"):
            value = np.zeros(spec.shape)
        elif init.name == "normal":
            value = rng.normal(0.0, init.scale, size=spec.shape)
        elif init.name == "he_normal":
            value = rng.normal(0.0, math.sqrt(2.0 / _fans(spec)[0]), size=spec.shape)
        else:
            fan_in, fan_out = _fans(spec)
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            value = rng.uniform(-limit, limit, size=spec.shape)
        weights[spec.name] = value.astype(np.float32)
    return weights
