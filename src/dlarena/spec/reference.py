# NumPy's stubs type many array operators and reductions as returning Any.
# mypy: disable-error-code="no-any-return"
"""The neutral oracle: a NumPy float64 forward pass of every layer type, independent of all frameworks.

It computes what the spec means, written as plainly as possible: inference mode (dropout is the
identity, batch norm uses its running statistics, which start at mean 0 and variance 1), batch-first
arrays, channels-first images, canonical weights (weights.py). Only NumPy >= 1.21 is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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
    TiedOutput,
    TokenTypeEmbedding,
    pair,
)
from dlarena.spec.network import Network
from dlarena.spec.recipe import Recipe

Weights = dict[str, np.ndarray]
# Called with every layer, its input and its path as the forward pass reaches it (branch_margin).
Observer = Callable[[Layer, np.ndarray, str], None]


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """``(N, C, H, W)`` -> ``(N, C, Ho, Wo, kh, kw)`` views of every window."""
    view = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(2, 3))
    return view[:, :, :: stride[0], :: stride[1]]


def _pad(x: np.ndarray, padding: tuple[int, int], value: float) -> np.ndarray:
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # equal to 1/(1+exp(-x)) without overflow


# math.erf on every element: NumPy has no erf, and this module needs nothing but NumPy.
_erf = np.frompyfunc(math.erf, 1, 1)
# GPT-2's tanh approximation of GELU (layers.ACTIVATIONS): sqrt(2 / pi) and the cubic's coefficient.
GELU_TANH_SCALE = math.sqrt(2.0 / math.pi)
GELU_TANH_CUBIC = 0.044715


def _activation(function: str, x: np.ndarray) -> np.ndarray:
    if function == "relu":
        return np.maximum(x, 0.0)
    if function == "sigmoid":
        return _sigmoid(x)
    if function == "tanh":
        return np.tanh(x)
    if function == "gelu":
        return 0.5 * x * (1.0 + np.asarray(_erf(x / math.sqrt(2.0)), dtype=np.float64))
    return 0.5 * x * (1.0 + np.tanh(GELU_TANH_SCALE * (x + GELU_TANH_CUBIC * x**3)))


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _self_attention(layer: MultiHeadSelfAttention, x: np.ndarray, weights: Weights, path: str) -> np.ndarray:
    batch, steps, width = x.shape
    size = width // layer.heads

    def heads(block: np.ndarray) -> np.ndarray:  # (N, T, D) -> (N, heads, T, D/heads)
        return block.reshape(batch, steps, layer.heads, size).transpose(0, 2, 1, 3)

    q, k, v = (heads(block) for block in np.split(x @ weights[f"{path}.qkv_kernel"] + weights[f"{path}.qkv_bias"],
                                                   3, axis=-1))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size)
    if layer.causal:
        scores = np.where(np.tril(np.ones((steps, steps), dtype=bool)), scores, -np.inf)
    mixed = (_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(batch, steps, width)
    return mixed @ weights[f"{path}.out_kernel"] + weights[f"{path}.out_bias"]


def _recurrent(layer: LSTM | GRU, x: np.ndarray, weights: Weights, path: str) -> np.ndarray:
    batch, steps, _ = x.shape
    hidden = layer.hidden
    for k in range(layer.layers):
        w_in = weights[f"{path}.layer{k}.input_kernel"]
        w_rec = weights[f"{path}.layer{k}.recurrent_kernel"]
        h = np.zeros((batch, hidden))
        c = np.zeros((batch, hidden))
        outputs = []
        for t in range(steps):
            if isinstance(layer, LSTM):
                gates = x[:, t] @ w_in + h @ w_rec + weights[f"{path}.layer{k}.bias"]
                i, f, g, o = np.split(gates, 4, axis=1)
                c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
                h = _sigmoid(o) * np.tanh(c)
            else:
                from_input = x[:, t] @ w_in + weights[f"{path}.layer{k}.input_bias"]
                from_state = h @ w_rec + weights[f"{path}.layer{k}.recurrent_bias"]
                xr, xz, xn = np.split(from_input, 3, axis=1)
                hr, hz, hn = np.split(from_state, 3, axis=1)
                r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
                n = np.tanh(xn + r * hn)
                h = (1.0 - z) * n + z * h
            outputs.append(h)
        x = np.stack(outputs, axis=1)
    return x if layer.return_sequences else x[:, -1]


def _layer(layer: Layer, x: np.ndarray, weights: Weights, path: str, observe: Observer | None = None) -> np.ndarray:
    if observe is not None:
        observe(layer, x, path)
    if isinstance(layer, Dense):
        out = x @ weights[f"{path}.kernel"]
        return out + weights[f"{path}.bias"] if layer.bias else out
    if isinstance(layer, Conv2D):
        kernel = weights[f"{path}.kernel"]
        windows = _windows(_pad(x, pair(layer.padding), 0.0), pair(kernel.shape[2:]), pair(layer.stride))
        out = np.einsum("nchwij,ocij->nohw", windows, kernel, optimize=True)
        return out + weights[f"{path}.bias"][None, :, None, None] if layer.bias else out
    if isinstance(layer, MaxPool2D | AvgPool2D):
        window = pair(layer.kernel)
        stride = pair(layer.stride if layer.stride is not None else layer.kernel)
        if isinstance(layer, MaxPool2D):
            return _windows(_pad(x, pair(layer.padding), -np.inf), window, stride).max(axis=(4, 5))
        return _windows(_pad(x, pair(layer.padding), 0.0), window, stride).mean(axis=(4, 5))
    if isinstance(layer, GlobalAvgPool2D):
        return x.mean(axis=(2, 3))
    if isinstance(layer, BatchNorm):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        scale = weights[f"{path}.gamma"] / np.sqrt(1.0 + layer.eps)  # running mean 0, variance 1
        return x * scale.reshape(shape) + weights[f"{path}.beta"].reshape(shape)
    if isinstance(layer, LayerNorm):
        centred = x - x.mean(axis=-1, keepdims=True)
        normal = centred / np.sqrt((centred**2).mean(axis=-1, keepdims=True) + layer.eps)
        return normal * weights[f"{path}.gamma"] + weights[f"{path}.beta"]
    if isinstance(layer, Activation):
        return _activation(layer.function, x)
    if isinstance(layer, Dropout):
        return x
    if isinstance(layer, Flatten):
        return x.reshape(x.shape[0], -1)
    if isinstance(layer, Embedding):
        return weights[f"{path}.table"][x]
    if isinstance(layer, PositionEmbedding):
        return x + weights[f"{path}.table"][: x.shape[1]]
    if isinstance(layer, TokenTypeEmbedding):
        return x + weights[f"{path}.table"][layer.type_ids(x.shape[1])]
    if isinstance(layer, MultiHeadSelfAttention):
        return _self_attention(layer, x, weights, path)
    if isinstance(layer, SelectToken):
        return x[:, layer.index]
    if isinstance(layer, TiedOutput):
        return x @ weights[f"{layer.tied_to}.table"].T
    if isinstance(layer, LSTM | GRU):
        return _recurrent(layer, x, weights, path)
    if isinstance(layer, Residual):
        body = _sequence(layer.body, x, weights, f"{path}.body.", observe)
        return body + _sequence(layer.shortcut, x, weights, f"{path}.shortcut.", observe)
    if isinstance(layer, Concat):
        return np.concatenate(
            [_sequence(branch, x, weights, f"{path}.branches.{index}.", observe)
             for index, branch in enumerate(layer.branches)],
            axis=1,
        )
    raise TypeError(f"the reference has no implementation of {type(layer).__name__}")


def _sequence(
    layers: tuple[Layer, ...], x: np.ndarray, weights: Weights, prefix: str, observe: Observer | None = None,
) -> np.ndarray:
    for index, layer in enumerate(layers):
        x = _layer(layer, x, weights, f"{prefix}{index}", observe)
    return x


def forward(network: Network, weights: Weights, inputs: np.ndarray, observe: Observer | None = None) -> np.ndarray:
    """Logits of ``network`` for a batch, in float64; ``observe`` sees every layer's input."""
    as64 = {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}
    x = inputs if network.input_kind == "tokens" else np.asarray(inputs, dtype=np.float64)
    return _sequence(network.layers, x, as64, "", observe)


@dataclass(frozen=True)
class BranchMargin:
    """How far the forward pass stays from the kinks of ReLU and max pooling.

    ``margin`` is the smallest distance, over every ReLU input from zero and every max-pool
    window's largest value from its runner-up, relative to the largest magnitude of that layer's
    input (infinite for a network with neither). A computation whose rounding errors, relative to
    the same scale, stay below it takes the same branches as the oracle, so its gradient is the
    oracle's gradient up to rounding; one whose errors reach it may take the other branch.
    """

    margin: float
    where: str  # the layer's path and kind, e.g. "7 relu"; empty when there is no kink


def branch_margin(network: Network, weights: Weights, inputs: np.ndarray) -> BranchMargin:
    """The smallest relative distance to a ReLU or max-pool kink in the forward pass of a batch.

    Exact zeros at a ReLU and exact ties in a max-pool window are left out: they are made by the
    network itself, the same in every framework. A zero comes from an earlier ReLU or padding, and
    its derivative is multiplied by that ReLU's zero either way; a tie holds copies of one value
    (an overlapping max pool before it repeats its largest value in neighbouring outputs), so
    either choice sends the gradient to the same source.
    """
    smallest = BranchMargin(float("inf"), "")

    def observe(layer: Layer, x: np.ndarray, path: str) -> None:
        nonlocal smallest
        if isinstance(layer, Activation) and layer.function == "relu":
            distances, kind = np.abs(x[x != 0.0]), "relu"
        elif isinstance(layer, MaxPool2D):
            window = pair(layer.kernel)
            stride = pair(layer.stride if layer.stride is not None else layer.kernel)
            windows = _windows(_pad(x, pair(layer.padding), -np.inf), window, stride)
            flat = windows.reshape(*windows.shape[:4], -1)
            top = np.partition(flat, flat.shape[-1] - 2, axis=-1)[..., -2:]
            gaps = top[..., 1] - top[..., 0]
            distances, kind = gaps[gaps > 0.0], "max-pool"  # exact ties are copies, or padding
        else:
            return
        scale = float(np.abs(x[np.isfinite(x)]).max(initial=0.0))
        if distances.size and scale > 0.0:
            margin = float(distances.min()) / scale
            if margin < smallest.margin:
                smallest = BranchMargin(margin, f"{path} {kind}")

    forward(network, weights, inputs, observe)
    return smallest


def softmax_cross_entropy(network: Network, recipe: Recipe, logits: np.ndarray, labels: np.ndarray) -> float:
    """The recipe's loss: softmax cross-entropy, reduced as the recipe says."""
    flat = logits.reshape(-1, network.classes).astype(np.float64)
    top = flat.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(flat - top).sum(axis=1))
    losses = log_norm - flat[np.arange(flat.shape[0]), labels.reshape(-1)]
    if recipe.loss_reduction == "sum_over_batch":
        return float(losses.sum() / logits.shape[0])
    return float(losses.mean())
