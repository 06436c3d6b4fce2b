"""A network: its input, its layers and its output, with the figures derived from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dlarena.spec.layers import (
    Concat,
    Embedding,
    Layer,
    Residual,
    Shape,
    SpecError,
    TiedOutput,
    sequence_backward_flops,
    sequence_forward_flops,
    sequence_out,
    sequence_params,
)

InputKind = Literal["image", "vector", "tokens"]
# Labels are one class per sample ("sample") or one class per time step ("token", language models).
LabelKind = Literal["sample", "token"]


@dataclass(frozen=True)
class Network:
    """A network that maps one input of ``input_shape`` to logits over ``classes``.

    ``input_kind`` says how synthetic inputs are made: real-valued tensors for ``image`` and
    ``vector``, token ids below ``vocab`` for ``tokens``.
    """

    input_shape: Shape
    input_kind: InputKind
    layers: tuple[Layer, ...]
    classes: int
    label_kind: LabelKind = "sample"
    vocab: int = 0

    def __post_init__(self) -> None:
        if self.input_kind == "tokens" and self.vocab < 1:
            raise SpecError("a network over tokens needs its vocabulary size")
        self._check_ties()
        out = self.output_shape
        expected = (self.classes,) if self.label_kind == "sample" else (self.input_shape[0], self.classes)
        if out != expected:
            raise SpecError(f"network output {out} does not match its labels, expected {expected}")

    def _check_ties(self) -> None:
        """Every TiedOutput names a top-level Embedding of its vocabulary, as wide as its own input."""
        shape = self.input_shape
        for layer in self.layers:
            if isinstance(layer, TiedOutput):
                index = int(layer.tied_to) if layer.tied_to.isdigit() else len(self.layers)
                tied = self.layers[index] if index < len(self.layers) else None
                if not isinstance(tied, Embedding):
                    raise SpecError(f"TiedOutput is tied to {layer.tied_to!r}, which is not a top-level Embedding")
                if (tied.vocab, tied.dim) != (layer.vocab, shape[-1]):
                    raise SpecError(f"TiedOutput over {layer.vocab} words of width {shape[-1]} is tied to an Embedding"
                                    f" of {tied.vocab} words of width {tied.dim}")
            shape = layer.out_shape(shape)

    @property
    def output_shape(self) -> Shape:
        return sequence_out(self.layers, self.input_shape)

    @property
    def label_shape(self) -> Shape:
        return () if self.label_kind == "sample" else (self.input_shape[0],)

    def layer_types(self) -> set[str]:
        """The names of every layer type in the network, containers (Residual, Concat) included."""
        found: set[str] = set()
        pending = list(self.layers)
        while pending:
            layer = pending.pop()
            found.add(type(layer).__name__)
            pending += [sub for group in _children(layer) for sub in group]
        return found

    @property
    def params(self) -> int:
        return sequence_params(self.layers, self.input_shape)

    def forward_flops(self, batch_size: int = 1) -> int:
        """FLOPs of one forward pass over a batch, the softmax cross-entropy loss included."""
        return batch_size * (sequence_forward_flops(self.layers, self.input_shape) + self._loss_flops())

    def backward_flops(self, batch_size: int = 1) -> int:
        return batch_size * (sequence_backward_flops(self.layers, self.input_shape) + self._loss_flops())

    def _loss_flops(self) -> int:
        # softmax: exp, sum, divide; cross-entropy: log and pick; about 5 FLOPs per logit.
        logits = self.classes * (1 if self.label_kind == "sample" else self.input_shape[0])
        return LOSS_FLOPS_PER_LOGIT * logits


LOSS_FLOPS_PER_LOGIT = 5


def _children(layer: Layer) -> list[tuple[Layer, ...]]:
    """The layer sequences inside a container layer (none for a leaf)."""
    if isinstance(layer, Residual):
        return [layer.body, layer.shortcut]
    if isinstance(layer, Concat):
        return list(layer.branches)
    return []
