"""Layer types of the network spec: shapes, parameter counts and FLOPs, with no framework in sight.

Conventions, used by every framework module and by the NumPy reference:

* Shapes are per sample (no batch axis). Images are channels-first ``(C, H, W)``; sequences are
  ``(T,)`` of token ids or ``(T, F)`` of features; vectors are ``(F,)``.
* A FLOP is one floating-point operation; a multiply-add counts as two.
* Canonical weight layouts (what ``dlarena`` exchanges between frameworks):
  dense kernel ``(in, out)``; convolution kernel ``(out, in, kh, kw)``; batch norm ``gamma, beta``
  of ``(C,)``; embedding ``(vocab, dim)``; recurrent layers per layer: input kernel
  ``(in, G*H)``, recurrent kernel ``(H, G*H)``, with gates in the order stated on each class;
  self-attention: one fused ``qkv_kernel`` ``(D, 3D)`` (blocks q, k, v; inside each, head h owns
  columns ``h*D/heads`` to ``(h+1)*D/heads``) and ``out_kernel`` ``(D, D)``; layer norm ``gamma,
  beta`` of ``(D,)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Union

Shape = tuple[int, ...]

# ``gelu`` is the exact GELU, x * Phi(x) with the normal CDF written through erf (BERT as Hugging Face's
# bert-base-uncased configures it); ``gelu_tanh`` is Hendrycks and Gimpel's tanh approximation,
# 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as GPT-2's code computes it. They differ by up to
# about 5e-4 absolute (at |x| near 2), far beyond float32 rounding, so the spec names which one.
ActivationName = Literal["relu", "sigmoid", "tanh", "gelu", "gelu_tanh"]
ACTIVATIONS: tuple[str, ...] = ("relu", "sigmoid", "tanh", "gelu", "gelu_tanh")

# FLOPs charged per element for element-wise work. Exact figures depend on the kernel (a sigmoid is
# an exp, an add and a division); these are the conventional counts used by FLOP counters such as
# fvcore and ptflops: one per element for ReLU and additions, four for sigmoid and tanh. GELU counted
# the same way: erf or tanh as four, and its multiplications and additions one each (exact: x/sqrt 2,
# erf, +1, *x, *0.5 = 8; tanh form: x^3 is two, then *0.044715, +x, *sqrt(2/pi), tanh, +1, *x, *0.5 = 12).
FLOPS_PER_ACTIVATION: dict[str, int] = {"relu": 1, "sigmoid": 4, "tanh": 4, "gelu": 8, "gelu_tanh": 12}
# Batch norm in training: mean, variance, normalise, scale and shift.
FLOPS_PER_BATCH_NORM_ELEMENT = 8
# Layer norm: the same five steps over each position's features.
FLOPS_PER_LAYER_NORM_ELEMENT = 8
# A softmax over attention scores: subtract the maximum, exp (four, as above), sum, divide.
FLOPS_PER_SOFTMAX_ELEMENT = 7
# Backward of a linear map costs two forward passes (gradient of input and of weights); backward
# of element-wise and pooling work costs about one forward pass (Kaplan et al. 2020, the "6N" rule).
LINEAR_BACKWARD_FACTOR = 2
ELEMENTWISE_BACKWARD_FACTOR = 1


class SpecError(ValueError):
    """A network spec that cannot be built: wrong input rank, a window larger than its input, ..."""


def _prod(shape: Shape) -> int:
    return math.prod(shape)


def pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """A window size, stride or padding as (height, width)."""
    return (value, value) if isinstance(value, int) else value


def _window_out(size: int, kernel: int, stride: int, padding: int, what: str) -> int:
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise SpecError(
            f"{what}: window {kernel} with stride {stride} and padding {padding} does not fit an "
            f"input of size {size}"
        )
    return out


class _Leaf:
    """A layer with no sub-layers. Subclasses define shapes, parameters and forward FLOPs."""

    backward_factor: ClassVar[int] = ELEMENTWISE_BACKWARD_FACTOR

    def out_shape(self, shape: Shape) -> Shape:
        raise NotImplementedError

    def params(self, shape: Shape) -> int:
        return 0

    def forward_flops(self, shape: Shape) -> int:
        raise NotImplementedError

    def backward_flops(self, shape: Shape) -> int:
        return self.backward_factor * self.forward_flops(shape)


def _require_rank(layer: object, shape: Shape, ranks: tuple[int, ...]) -> None:
    if len(shape) not in ranks:
        raise SpecError(
            f"{type(layer).__name__} needs an input of rank {' or '.join(map(str, ranks))}, got {shape}"
        )


@dataclass(frozen=True)
class Dense(_Leaf):
    """Affine map over the last axis (applied at every time step of a sequence)."""

    units: int
    bias: bool = True

    def out_shape(self, shape: Shape) -> Shape:
        _require_rank(self, shape, (1, 2))
        return (*shape[:-1], self.units)

    def params(self, shape: Shape) -> int:
        return shape[-1] * self.units + (self.units if self.bias else 0)

    def forward_flops(self, shape: Shape) -> int:
        rows = _prod(shape[:-1])
        return rows * (2 * shape[-1] * self.units + (self.units if self.bias else 0))

    backward_factor: ClassVar[int] = LINEAR_BACKWARD_FACTOR


@dataclass(frozen=True)
class Conv2D(_Leaf):
    """2-D cross-correlation, explicit symmetric zero padding, kernel ``(out, in, kh, kw)``."""

    filters: int
    kernel: int | tuple[int, int]
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    bias: bool = True

    def out_shape(self, shape: Shape) -> Shape:
        _require_rank(self, shape, (3,))
        (kh, kw), (sh, sw), (ph, pw) = pair(self.kernel), pair(self.stride), pair(self.padding)
        return (
            self.filters,
            _window_out(shape[1], kh, sh, ph, "Conv2D"),
            _window_out(shape[2], kw, sw, pw, "Conv2D"),
        )

    def params(self, shape: Shape) -> int:
        kh, kw = pair(self.kernel)
        return self.filters * shape[0] * kh * kw + (self.filters if self.bias else 0)

    def forward_flops(self, shape: Shape) -> int:
        kh, kw = pair(self.kernel)
        out = self.out_shape(shape)
        positions = out[1] * out[2]
        per_output = 2 * shape[0] * kh * kw + (1 if self.bias else 0)
        return self.filters * positions * per_output

    backward_factor: ClassVar[int] = LINEAR_BACKWARD_FACTOR


@dataclass(frozen=True)
class _Pool2D(_Leaf):
    kernel: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None  # None: equal to the kernel
    padding: int | tuple[int, int] = 0

    def out_shape(self, shape: Shape) -> Shape:
        _require_rank(self, shape, (3,))
        kh, kw = pair(self.kernel)
        sh, sw = pair(self.stride if self.stride is not None else self.kernel)
        ph, pw = pair(self.padding)
        name = type(self).__name__
        return (shape[0], _window_out(shape[1], kh, sh, ph, name), _window_out(shape[2], kw, sw, pw, name))

    def forward_flops(self, shape: Shape) -> int:
        kh, kw = pair(self.kernel)
        return _prod(self.out_shape(shape)) * kh * kw



@dataclass(frozen=True)
class MaxPool2D(_Pool2D):
    """Max pooling; padded positions never win (they count as minus infinity)."""


@dataclass(frozen=True)
class AvgPool2D(_Pool2D):
    """Average pooling; padded positions count as zeros in the average (``count_include_pad``)."""


@dataclass(frozen=True)
class GlobalAvgPool2D(_Leaf):
    """Mean over the spatial axes: ``(C, H, W) -> (C,)``."""

    def out_shape(self, shape: Shape) -> Shape:
        _require_rank(self, shape, (3,))
        return (shape[0],)

    def forward_flops(self, shape: Shape) -> int:
        return _prod(shape)



@dataclass(frozen=True)
class BatchNorm(_Leaf):
    """Batch normalisation over the channel axis (axis 0 of a per-sample shape).

    Parameters are ``gamma`` and ``beta``; the running mean and variance are state, not parameters.
    ``momentum`` is the weight of the new batch statistic (PyTorch's convention, 0.1 by default).
    """

    eps: float = 1e-5
    momentum: float = 0.1

    def out_shape(self, shape: Shape) -> Shape:
        _require_rank(self, shape, (1, 3))
        return shape

    def params(self, shape: Shape) -> int:
        return 2 * shape[0]

    def forward_flops(self, shape: Shape) -> int:
        return FLOPS_PER_BATCH_NORM_ELEMENT * _prod(shape)



@dataclass(frozen=True)
class LayerNorm(_Leaf):
    """Layer normalisation over the last axis (each position's features), with ``gamma`` and ``beta``
    of that axis's size: ``(x - mean) / sqrt(var + eps) * gamma + beta``, the variance biased (divided
    by the count), as BERT, GPT-2 and every framework's layer norm compute it."""

    eps: float = 1e-5

    def out_shape(self, shape: Shape) -> Shape:
        _require_rank(self, shape, (1, 2))
        return shape

    def params(self, shape: Shape) -> int:
        return 2 * shape[-1]

    def forward_flops(self, shape: Shape) -> int:
        return FLOPS_PER_LAYER_NORM_ELEMENT * _prod(shape)


@dataclass(frozen=True)
class Activation(_Leaf):
    """Element-wise non-linearity: ``relu``, ``sigmoid``, ``tanh``, ``gelu`` (exact) or ``gelu_tanh``."""

    function: ActivationName

    def __post_init__(self) -> None:
        if self.function not in ACTIVATIONS:
            raise SpecError(f"unknown activation {self.function!r}; valid: {', '.join(ACTIVATIONS)}")

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def forward_flops(self, shape: Shape) -> int:
        return FLOPS_PER_ACTIVATION[self.function] * _prod(shape)



@dataclass(frozen=True)
class Dropout(_Leaf):
    """Inverted dropout: active in training, identity in inference."""

    rate: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise SpecError(f"dropout rate must be in [0, 1), got {self.rate}")

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def forward_flops(self, shape: Shape) -> int:
        return _prod(shape)



@dataclass(frozen=True)
class Flatten(_Leaf):
    """Row-major flattening of the channels-first per-sample shape."""

    def out_shape(self, shape: Shape) -> Shape:
        return (_prod(shape),)

    def forward_flops(self, shape: Shape) -> int:
        return 0



@dataclass(frozen=True)
class Embedding(_Leaf):
    """Token ids ``(T,)`` to vectors ``(T, dim)``; table ``(vocab, dim)``."""

    vocab: int
    dim: int

    def out_shape(self, shape: Shape) -> Shape:
        _require_rank(self, shape, (1,))
        return (shape[0], self.dim)

    def params(self, shape: Shape) -> int:
        return self.vocab * self.dim

    def forward_flops(self, shape: Shape) -> int:
        return 0  # a gather moves memory, it computes nothing



@dataclass(frozen=True)
class PositionEmbedding(_Leaf):
    """Learned absolute positions: adds row ``t`` of a ``(positions, dim)`` table to step ``t`` of a
    ``(T, dim)`` sequence (BERT, GPT-2). ``T`` may be shorter than ``positions``: the first rows serve."""

    positions: int

    def out_shape(self, shape: Shape) -> Shape:
        _require_rank(self, shape, (2,))
        if shape[0] > self.positions:
            raise SpecError(f"PositionEmbedding has {self.positions} positions, the sequence has {shape[0]} steps")
        return shape

    def params(self, shape: Shape) -> int:
        return self.positions * shape[-1]

    def forward_flops(self, shape: Shape) -> int:
        return _prod(shape)  # the addition; the lookup computes nothing


@dataclass(frozen=True)
class TokenTypeEmbedding(_Leaf):
    """BERT's segment embedding: adds row ``token_type(t)`` of a ``(types, dim)`` table to step ``t``.

    A network here has one input, the token ids, so the types are fixed by position, as a sentence
    pair lays them out: step ``t`` of ``T`` has type ``t * types // T`` (two types: the first half is
    sentence A, the rest sentence B). Every row of the table then takes part and gets a gradient, so
    a framework that ignores the types or reads the wrong row is caught.
    """

    types: int

    def out_shape(self, shape: Shape) -> Shape:
        _require_rank(self, shape, (2,))
        return shape

    def params(self, shape: Shape) -> int:
        return self.types * shape[-1]

    def forward_flops(self, shape: Shape) -> int:
        return _prod(shape)

    def type_ids(self, steps: int) -> list[int]:
        """The token type of each of ``steps`` positions."""
        return [t * self.types // steps for t in range(steps)]


@dataclass(frozen=True)
class MultiHeadSelfAttention(_Leaf):
    """Scaled dot-product self-attention over a ``(T, D)`` sequence with ``heads`` heads of ``D/heads``.

    ``q, k, v = x @ qkv_kernel + qkv_bias`` (split in three along the last axis, then each into heads),
    per head ``softmax(q k^T / sqrt(D/heads) + mask) v``, heads concatenated in order, then
    ``@ out_kernel + out_bias``. ``causal``: step ``t`` attends to steps ``<= t`` only (GPT-2).
    ``dropout`` drops attention probabilities in training (identity in inference).

    FLOPs count the whole score matrix even when causal: what fused kernels compute unless they skip
    masked blocks, and the convention of the published FLOP counts (Kaplan et al. 2020, table 1).
    """

    heads: int
    causal: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.heads < 1:
            raise SpecError(f"MultiHeadSelfAttention needs at least one head, got {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise SpecError(f"attention dropout must be in [0, 1), got {self.dropout}")

    def out_shape(self, shape: Shape) -> Shape:
        _require_rank(self, shape, (2,))
        if shape[-1] % self.heads:
            raise SpecError(f"MultiHeadSelfAttention: width {shape[-1]} does not split into {self.heads} heads")
        return shape

    def params(self, shape: Shape) -> int:
        width = shape[-1]
        return 4 * width * width + 4 * width

    def forward_flops(self, shape: Shape) -> int:
        steps, width = shape
        projections = 2 * steps * width * (3 * width) + 3 * steps * width + 2 * steps * width * width + steps * width
        scores = 2 * steps * steps * width + self.heads * steps * steps  # q k^T, then the scale
        softmax = FLOPS_PER_SOFTMAX_ELEMENT * self.heads * steps * steps
        mixing = 2 * steps * steps * width  # probabilities times values
        return projections + scores + softmax + mixing

    backward_factor: ClassVar[int] = LINEAR_BACKWARD_FACTOR


@dataclass(frozen=True)
class SelectToken(_Leaf):
    """One step of a sequence, ``(T, D) -> (D,)``: BERT's pooler reads the first token ([CLS])."""

    index: int = 0

    def out_shape(self, shape: Shape) -> Shape:
        _require_rank(self, shape, (2,))
        if not 0 <= self.index < shape[0]:
            raise SpecError(f"SelectToken: step {self.index} is outside a sequence of {shape[0]} steps")
        return (shape[1],)

    def forward_flops(self, shape: Shape) -> int:
        return 0


@dataclass(frozen=True)
class TiedOutput(_Leaf):
    """Logits over a vocabulary through the transposed table of the network's ``Embedding`` at path
    ``tied_to``: ``(T, dim) -> (T, vocab)``, ``x @ table^T``, no bias (GPT-2's language-model head).
    It owns no parameter: the table is one parameter used twice, and its gradient is the sum of both
    uses. Network checks that ``tied_to`` is an Embedding of ``vocab`` rows and the input's width."""

    vocab: int
    tied_to: str = "0"

    def out_shape(self, shape: Shape) -> Shape:
        _require_rank(self, shape, (2,))
        return (shape[0], self.vocab)

    def forward_flops(self, shape: Shape) -> int:
        return 2 * _prod(shape) * self.vocab

    backward_factor: ClassVar[int] = LINEAR_BACKWARD_FACTOR


@dataclass(frozen=True)
class _Recurrent(_Leaf):
    hidden: int
    layers: int = 1
    return_sequences: bool = True

    gates: ClassVar[int] = 0
    biases_per_gate: ClassVar[int] = 1
    # Element-wise FLOPs per hidden unit per step for the gate non-linearities and state updates.
    elementwise_per_unit: ClassVar[int] = 0

    def out_shape(self, shape: Shape) -> Shape:
        _require_rank(self, shape, (2,))
        return (shape[0], self.hidden) if self.return_sequences else (self.hidden,)

    def _layer_inputs(self, shape: Shape) -> list[int]:
        return [shape[-1]] + [self.hidden] * (self.layers - 1)

    def params(self, shape: Shape) -> int:
        size = self.gates * self.hidden
        return sum(
            n_in * size + self.hidden * size + self.biases_per_gate * size
            for n_in in self._layer_inputs(shape)
        )

    def forward_flops(self, shape: Shape) -> int:
        steps, size = shape[0], self.gates * self.hidden
        per_step = sum(
            2 * (n_in + self.hidden) * size + self.biases_per_gate * size
            + self.elementwise_per_unit * self.hidden
            for n_in in self._layer_inputs(shape)
        )
        return steps * per_step

    backward_factor: ClassVar[int] = LINEAR_BACKWARD_FACTOR


@dataclass(frozen=True)
class LSTM(_Recurrent):
    """Stacked LSTM, zero initial state, forget bias 0, one bias per gate; gates ``i, f, g, o``.

    ``c' = f*c + i*g``, ``h' = o*tanh(c')`` with ``i, f, o`` sigmoid and ``g`` tanh.
    """

    gates: ClassVar[int] = 4
    biases_per_gate: ClassVar[int] = 1
    # 3 sigmoids and 2 tanh (4 FLOPs each) plus 3 products and 1 sum.
    elementwise_per_unit: ClassVar[int] = 3 * 4 + 2 * 4 + 4


@dataclass(frozen=True)
class GRU(_Recurrent):
    """Stacked GRU in the cuDNN / PyTorch form ("reset after"), gates ``r, z, n``, two biases.

    ``r = s(W_r x + b_ir + U_r h + b_hr)``, ``z = s(W_z x + b_iz + U_z h + b_hz)``,
    ``n = tanh(W_n x + b_in + r*(U_n h + b_hn))``, ``h' = (1-z)*n + z*h``.
    The recurrent bias must stay separate because ``r`` multiplies it, hence two biases per gate:
    this is Keras' ``reset_after=True`` and the count Karmanov's CuDNNGRU summary printed.
    """

    gates: ClassVar[int] = 3
    biases_per_gate: ClassVar[int] = 2
    # 2 sigmoids and 1 tanh (4 FLOPs each) plus 4 products and sums.
    elementwise_per_unit: ClassVar[int] = 3 * 4 + 4


Layer = Union[
    Dense, Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D, BatchNorm, LayerNorm, Activation, Dropout, Flatten,
    Embedding, PositionEmbedding, TokenTypeEmbedding, MultiHeadSelfAttention, SelectToken, TiedOutput,
    LSTM, GRU, "Residual", "Concat",
]


def sequence_shapes(layers: tuple[Layer, ...], shape: Shape) -> list[Shape]:
    """The output shape after each layer of a sequence, starting from ``shape``."""
    shapes = []
    for layer in layers:
        shape = layer.out_shape(shape)
        shapes.append(shape)
    return shapes


def sequence_out(layers: tuple[Layer, ...], shape: Shape) -> Shape:
    for layer in layers:
        shape = layer.out_shape(shape)
    return shape


def _sequence_sum(layers: tuple[Layer, ...], shape: Shape, attr: str) -> int:
    total = 0
    for layer in layers:
        total += getattr(layer, attr)(shape)
        shape = layer.out_shape(shape)
    return total


def sequence_params(layers: tuple[Layer, ...], shape: Shape) -> int:
    return _sequence_sum(layers, shape, "params")


def sequence_forward_flops(layers: tuple[Layer, ...], shape: Shape) -> int:
    return _sequence_sum(layers, shape, "forward_flops")


def sequence_backward_flops(layers: tuple[Layer, ...], shape: Shape) -> int:
    return _sequence_sum(layers, shape, "backward_flops")



@dataclass(frozen=True)
class Residual:
    """``body(x) + shortcut(x)``; an empty shortcut is the identity."""

    body: tuple[Layer, ...]
    shortcut: tuple[Layer, ...] = ()

    def out_shape(self, shape: Shape) -> Shape:
        body, short = sequence_out(self.body, shape), sequence_out(self.shortcut, shape)
        if body != short:
            raise SpecError(f"Residual branches disagree: body gives {body}, shortcut gives {short}")
        return body

    def params(self, shape: Shape) -> int:
        return sequence_params(self.body, shape) + sequence_params(self.shortcut, shape)

    def forward_flops(self, shape: Shape) -> int:
        add = _prod(self.out_shape(shape))
        return sequence_forward_flops(self.body, shape) + sequence_forward_flops(self.shortcut, shape) + add

    def backward_flops(self, shape: Shape) -> int:
        add = _prod(self.out_shape(shape))
        return sequence_backward_flops(self.body, shape) + sequence_backward_flops(self.shortcut, shape) + add


@dataclass(frozen=True)
class Concat:
    """Branches applied to the same input, concatenated along the channel axis (inception blocks)."""

    branches: tuple[tuple[Layer, ...], ...]

    def out_shape(self, shape: Shape) -> Shape:
        outs = [sequence_out(branch, shape) for branch in self.branches]
        spatial = {out[1:] for out in outs}
        if len(spatial) != 1:
            raise SpecError(f"Concat branches disagree on their spatial shapes: {sorted(spatial)}")
        return (sum(out[0] for out in outs), *outs[0][1:])

    def params(self, shape: Shape) -> int:
        return sum(sequence_params(branch, shape) for branch in self.branches)

    def forward_flops(self, shape: Shape) -> int:
        return sum(sequence_forward_flops(branch, shape) for branch in self.branches)

    def backward_flops(self, shape: Shape) -> int:
        return sum(sequence_backward_flops(branch, shape) for branch in self.branches)
