"""Keras 3 on its JAX, PyTorch or TensorFlow backend (``keras-jax``, ``keras-torch``, ``keras-tensorflow``).

Only a worker process imports this module, after it has set thread limits and CPU affinity. Keras
fixes its backend when it is first imported, so this module never imports keras at its top:
``Backend.__init__`` sets ``KERAS_BACKEND``, sets the backend's thread pools, and only then imports
keras; every other function imports it (from ``sys.modules``, at no cost) where it needs it.

The network is a functional ``keras.Model`` of Keras layers in Keras' own image layout,
``channels_last`` (the kernel converts the batch and the canonical weights). The optimizer, the
loss and ``jit_compile="auto"`` go through ``model.compile``, so that Keras decides per backend
whether to compile (XLA under JAX always; no XLA for TensorFlow on a CPU-only machine; eager for
PyTorch). The kernel (kernel.py) supplies the starting weights, the batch, the runners, the checker
and the trainer.

Training loop: Keras' own ``model.train_on_batch`` (what Karmanov and Shatnawi timed) against the
custom step of Keras' guides "Writing a training loop from scratch" (JAX: ``stateless_call`` +
``jax.value_and_grad`` + ``optimizer.stateless_apply`` under one ``jax.jit`` with the state donated;
TensorFlow: ``GradientTape`` + ``optimizer.apply`` in one ``tf.function``; PyTorch: ``backward`` +
``optimizer.apply``, which is Keras' own torch train step). Inference: ``model.predict_on_batch``
against a compiled forward (``jax.jit`` of ``stateless_call``; ``tf.function`` of the call; the
call under ``torch.no_grad``). Median ms per step, batch 32, 1 thread, two runs each on a core of
its own (Keras 3.15.1, jax 0.10.2, tensorflow-cpu 2.21.0, torch 2.13 CPU; 2-core x86 machine):

    backend     workload            train_on_batch  custom      predict_on_batch  custom
    jax         fcn5-small          2.38 / 2.42     1.74 / 1.86  0.79 / 0.81      0.56 / 0.58
    jax         karmanov-cnn-small  10.2 / 10.4     8.5 / 8.7    2.8              2.4
    tensorflow  fcn5-small          2.82 / 2.97     2.44 / 2.51  1.02 / 1.00      0.95
    tensorflow  karmanov-cnn-small  5.80            4.63 / 4.34  1.69 / 1.59      1.48 / 1.42
    torch       fcn5-small          5.20 / 4.78     4.64 / 4.35  2.31 / 1.72      2.18 / 1.88
    torch       karmanov-cnn-small  13.9 / 12.8     13.0 / 12.0  7.12 / 6.69      6.01 / 6.51

The custom step is faster on every backend (train_on_batch adds per call a metrics reset, the loss
tracker, the structure checks and a NumPy copy of the logs; under JAX also the copy of the whole
state back into the Keras variables), and so is the compiled forward, or it ties (torch). Both are
kept: ``TRAIN_LOOP`` and ``INFER_PATH`` hold the choice, ``Backend(train_loop=, infer_path=)``
re-measures it. The accuracy scenario's trainer and the checker's forward run the same steps.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import math
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlarena.frameworks import kernel, layout
from dlarena.frameworks.base import Parity, StepRequest, Unavailable, Unsupported
from dlarena.frameworks.precision import widened
from dlarena.frameworks.registry import BFLOAT16_PRECISIONS
from dlarena.spec import Network, Workload
from dlarena.spec import layers as spec
from dlarena.spec.weights import walk

BACKENDS: tuple[str, ...] = ("jax", "torch", "tensorflow")

# Training loops: Keras' own ``model.train_on_batch``, or a custom step written as the Keras guides
# "Writing a training loop from scratch" do for each backend. Inference: ``model.predict_on_batch``
# or a custom compiled forward. The choice per backend comes from the measurement in the docstring.
TRAIN_LOOPS: tuple[str, ...] = ("train_on_batch", "custom")
INFER_PATHS: tuple[str, ...] = ("predict_on_batch", "custom")
TRAIN_LOOP: dict[str, str] = {"jax": "custom", "torch": "custom", "tensorflow": "custom"}
INFER_PATH: dict[str, str] = {"jax": "custom", "torch": "custom", "tensorflow": "custom"}

# TensorFlow's inter-op pool: one thread, as the worker's TF_NUM_INTEROP_THREADS, so that the
# intra-op pool of ``threads`` threads is all the parallelism a cell gets.
TF_INTEROP_THREADS = 1
# dlarena precision -> Keras' dtype policy, the idiom of Keras' mixed-precision guide: "bfloat16" keeps
# variables and computes in bfloat16, "mixed_bfloat16" keeps float32 variables (AutoCastVariable) and
# computes in bfloat16, with softmax and the loss in float32. float64 is the floatx of a float64
# checker (_compute_in_float64), whose default policy follows it.
DTYPE_POLICIES = {"float32": "float32", "bfloat16": "bfloat16", "mixed-bf16": "mixed_bfloat16"}

# The recipe's weight decay is PyTorch's (coupled: wd * w added to the gradient); Keras' own
# ``weight_decay`` is decoupled (AdamW-style). An L2 penalty of wd/2 * sum(w^2) on every parameter
# gives PyTorch's exactly, so the field is spelled as this pseudo-keyword, which Model turns into
# the layers' regularizers instead of an optimizer argument.
L2_PENALTY = "l2_penalty"

# Keras' SGD keeps ``v = m*v - lr*g`` where PyTorch keeps ``v = m*v + g`` and steps ``lr*v``: the
# same updates for a constant learning rate, Nesterov included. Adadelta is PyTorch's. Keras' Adam
# adds epsilon after the bias correction of the step size (Kingma and Ba's "epsilon hat"): in
# PyTorch's form its eps is ``eps / sqrt(1 - beta2^t)``, 30 times larger at the first step and equal
# in the long run, so the two differ where gradients are below about 1e-6. RMSprop: see Model.
SPELLING: kernel.OptimizerSpelling = {
    "sgd": ("SGD", {"lr": "learning_rate", "momentum": "momentum", "nesterov": "nesterov",
                    "weight_decay": L2_PENALTY}),
    "adam": ("Adam", {"lr": "learning_rate", "beta1": "beta_1", "beta2": "beta_2", "eps": "epsilon",
                      "weight_decay": L2_PENALTY}),
    # Keras' own decoupled decay is the recipe's: w -= lr * wd * w on every trainable variable (none is
    # excluded unless asked), before the Adam step, as torch.optim.AdamW's w *= 1 - lr * wd. Its
    # epsilon is Adam's "epsilon hat", as above.
    "adamw": ("AdamW", {"lr": "learning_rate", "beta1": "beta_1", "beta2": "beta_2", "eps": "epsilon",
                        "weight_decay": "weight_decay"}),
    "adadelta": ("Adadelta", {"lr": "learning_rate", "rho": "rho", "eps": "epsilon", "weight_decay": L2_PENALTY}),
    "rmsprop": ("RMSprop", {"lr": "learning_rate", "rho": "rho", "eps": "epsilon", "weight_decay": L2_PENALTY}),
}


def _keras() -> Any:
    """The keras module, imported by ``Backend.__init__`` once ``KERAS_BACKEND`` was set."""
    import keras

    return keras


# --------------------------------------------------------------------------------------------------
# What Keras has not: minus-infinity padding, the recipe's loss


@functools.cache
def _neg_inf_padding_class() -> type:
    """A layer padding H and W with minus infinity, so that padded positions never win a max pool
    (ZeroPadding2D would let a zero beat an all-negative window)."""
    keras = _keras()
    base: Any = keras.layers.Layer

    class NegInfPadding2D(base):  # type: ignore[misc]
        def __init__(self, padding: tuple[int, int], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.padding = padding

        def call(self, x: Any) -> Any:
            ph, pw = self.padding
            return keras.ops.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=-math.inf)

        def compute_output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
            ph, pw = self.padding
            batch, height, width, channels = shape
            return (batch, None if height is None else height + 2 * ph,
                    None if width is None else width + 2 * pw, channels)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "padding": self.padding}

    return NegInfPadding2D


@functools.cache
def _position_add_class() -> type:
    keras = _keras()
    base: Any = keras.layers.Layer

    class PositionAdd(base):  # type: ignore[misc]
        """Adds the first T rows of a learned ``(positions, D)`` table, one per step (GPT-2's ``wpe``,
        BERT's position embeddings); the table sliced with ``ops.slice`` as keras_hub's PositionEmbedding."""

        def __init__(self, positions: int, regularizer: Any = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.positions, self.regularizer = positions, keras.regularizers.get(regularizer)

        def build(self, shape: tuple[int | None, ...]) -> None:
            width = int(shape[-1])  # type: ignore[arg-type]
            self.table = self.add_weight(shape=(self.positions, width), initializer="zeros",
                                         regularizer=self.regularizer, name="table")

        def call(self, x: Any) -> Any:
            # The variable as a tensor first: JAX's slice takes no Keras variable.
            steps, width = x.shape[1], x.shape[2]
            return x + keras.ops.slice(keras.ops.convert_to_tensor(self.table), (0, 0), (steps, width))

        def compute_output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
            return shape

        def get_config(self) -> dict[str, Any]:  # model.save writes it; loading passes it back to __init__
            return {**super().get_config(), "positions": self.positions,
                    "regularizer": keras.regularizers.serialize(self.regularizer)}

    return PositionAdd


@functools.cache
def _token_type_add_class() -> type:
    keras = _keras()
    base: Any = keras.layers.Layer

    class TokenTypeAdd(base):  # type: ignore[misc]
        """Adds BERT's token-type (segment) embedding of the spec's types, fixed by position
        (spec.TokenTypeEmbedding): the rows gathered with ``ops.take``, as an Embedding looks them up."""

        def __init__(self, types: int, type_ids: list[int], regularizer: Any = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.types, self.type_ids, self.regularizer = types, type_ids, keras.regularizers.get(regularizer)

        def build(self, shape: tuple[int | None, ...]) -> None:
            width = int(shape[-1])  # type: ignore[arg-type]
            self.table = self.add_weight(shape=(self.types, width), initializer="zeros",
                                         regularizer=self.regularizer, name="table")

        def call(self, x: Any) -> Any:
            ids = keras.ops.convert_to_tensor(self.type_ids, dtype="int32")
            return x + keras.ops.take(self.table, ids, axis=0)

        def compute_output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
            return shape

        def get_config(self) -> dict[str, Any]:  # model.save writes it; loading passes it back to __init__
            return {**super().get_config(), "types": self.types, "type_ids": list(self.type_ids),
                    "regularizer": keras.regularizers.serialize(self.regularizer)}

    return TokenTypeAdd


@functools.cache
def _cross_entropy_class() -> type:
    keras = _keras()
    base: Any = keras.losses.Loss

    class SummedCrossEntropy(base):  # type: ignore[misc]
        """Per sample: the softmax cross-entropy summed over its label positions, divided by
        ``kernel.loss_divisor`` of one sample; Keras' default reduction then averages the samples,
        which makes it the summed cross-entropy of the batch over ``loss_divisor(batch)``."""

        def __init__(self, divisor: int) -> None:
            super().__init__(name="summed_cross_entropy")
            self.divisor = divisor

        def call(self, labels: Any, logits: Any) -> Any:
            entropy = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            if len(entropy.shape) > 1:
                entropy = keras.ops.sum(entropy, axis=tuple(range(1, len(entropy.shape))))
            return entropy if self.divisor == 1 else entropy / self.divisor

    return SummedCrossEntropy


# --------------------------------------------------------------------------------------------------
# Spec -> keras.Model


# spec activation -> (keras.activations function, its keywords). GELU's exact (erf) form and its tanh
# approximation are both keras.activations.gelu, told apart by ``approximate`` (stated for both: the
# function's default is the exact form, keras.ops.gelu's the approximation).
_ACTIVATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "relu": ("relu", {}), "sigmoid": ("sigmoid", {}), "tanh": ("tanh", {}),
    "gelu": ("gelu", {"approximate": False}), "gelu_tanh": ("gelu", {"approximate": True}),
}
# On the TensorFlow backend keras.activations.gelu is tf.nn.gelu, which casts the Python floats
# 1/sqrt(2) and 0.044715 to float32 before casting them to the input's type: float64 GELUs come out
# about 1e-9 (relative) off the spec. The TensorFlow module's GELUs are tf.nn.gelu's ops with the
# constants in the input's precision; Keras on TensorFlow uses them.
# The spec's GELUs, each the tensorflow_native function of the same name.
_TF_GELUS = frozenset({"gelu", "gelu_tanh"})


@functools.cache
def _saveable(function: str, tensorflow_gelu: bool = False) -> Callable[..., Any]:
    """The spec activation ``function`` as a named function registered with Keras' serialization
    (package "dlarena"), so that model.save and load_model handle it: Keras' own function with the
    keywords of _ACTIVATIONS, or the TensorFlow module's GELU (_TF_GELUS)."""
    keras = _keras()
    name, keywords = _ACTIVATIONS[function]
    if tensorflow_gelu:
        from dlarena.frameworks import tensorflow_native

        inner: Callable[..., Any] = getattr(tensorflow_native, function)
    else:
        inner = functools.partial(getattr(keras.activations, name), **keywords)

    def activation(x: Any) -> Any:
        return inner(x)

    activation.__name__ = activation.__qualname__ = function
    registered: Callable[..., Any] = keras.saving.register_keras_serializable(package="dlarena")(activation)
    return registered


class _Handle(ABC):
    """Where one canonical parameter lives: the Keras ``variables`` that hold it, and how their values
    join into the parameter (in the layout the kernel's plan gives) and split back into them."""

    @property
    @abstractmethod
    def variables(self) -> tuple[Any, ...]:
        """The Keras variables holding the parameter."""

    @abstractmethod
    def join(self, values: list[np.ndarray]) -> np.ndarray:
        """The parameter, from the values (or gradients) of ``variables``, in their order."""

    @abstractmethod
    def split(self, value: np.ndarray, current: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
        """The new values of ``variables`` for the parameter ``value``; ``current`` reads their values
        now, for a parameter that is part of a variable."""


@dataclass(frozen=True)
class _Whole(_Handle):
    """A parameter that is one Keras variable, as it lies."""

    variable: Any

    @property
    def variables(self) -> tuple[Any, ...]:
        return (self.variable,)

    def join(self, values: list[np.ndarray]) -> np.ndarray:
        return values[0]

    def split(self, value: np.ndarray, current: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
        return [value]


@dataclass(frozen=True)
class _Row(_Handle):
    """One row of a variable: a GRU's input and recurrent biases are rows 0 and 1 of one ``(2, 3H)`` bias."""

    variable: Any
    row: int

    @property
    def variables(self) -> tuple[Any, ...]:
        return (self.variable,)

    def join(self, values: list[np.ndarray]) -> np.ndarray:
        row: np.ndarray = values[0][self.row]
        return row

    def split(self, value: np.ndarray, current: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
        whole = current()[0].copy()  # the other row stays
        whole[self.row] = value
        return [whole]


@dataclass(frozen=True)
class _Blocks(_Handle):
    """A fused parameter that Keras holds as several variables: each reshaped to ``block`` (row-major,
    so a ``(D, heads, head_dim)`` kernel is ``(D, D)`` with head h's columns ``h*head_dim`` onward),
    the blocks side by side along the last axis. MultiHeadAttention's query, key and value kernels
    ``(D, heads, head_dim)`` make the canonical ``qkv_kernel`` ``(D, 3D)``, their biases
    ``(heads, head_dim)`` its ``qkv_bias`` ``(3D,)``; its output kernel ``(heads, head_dim, D)`` alone
    is ``out_kernel`` ``(D, D)``, rows head by head."""

    parts: tuple[Any, ...]
    block: tuple[int, ...]

    @property
    def variables(self) -> tuple[Any, ...]:
        return self.parts

    def join(self, values: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([value.reshape(self.block) for value in values], axis=-1)

    def split(self, value: np.ndarray, current: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
        blocks = np.split(value, len(self.parts), axis=-1)
        return [block.reshape(tuple(variable.shape)) for block, variable in zip(blocks, self.parts, strict=True)]


class _Builder:
    """Builds a network with the functional API; ``handles`` maps each canonical parameter to its
    ``_Handle`` (the Keras variables that hold it).

    Every parameter starts at zero (the kernel loads the starting weights): under JAX every random
    initializer of a new shape would cost an XLA compilation of seconds.
    """

    def __init__(self, network: Network, weight_decay: float, dtype: str) -> None:
        self.keras = _keras()
        self.dtype = dtype
        self.dense_flattens = kernel.flattens_into_dense(network)  # flattened as the map lies, (H, W, C)
        self.handles: dict[str, _Handle] = {}
        self.norms: list[Any] = []
        self.regularizer = self.keras.regularizers.L2(weight_decay / 2) if weight_decay else None
        # The Embeddings that a TiedOutput reads, by path: built as ReversibleEmbedding, called again
        # in reverse for the logits.
        self.tied = {layer.tied_to for _, layer, _ in walk(network.layers, network.input_shape)
                     if isinstance(layer, spec.TiedOutput)}
        self.embeddings: dict[str, Any] = {}

    def _arguments(self, *names: str) -> dict[str, Any]:
        """Zero initializers, and the weight decay's regularizers, for the named parameters."""
        arguments: dict[str, Any] = {f"{name}_initializer": "zeros" for name in names}
        if self.regularizer:
            arguments.update({f"{name}_regularizer": self.regularizer for name in names})
        return arguments

    def model(self, network: Network) -> Any:
        keras = self.keras
        if network.input_kind == "tokens":
            inputs = keras.Input(shape=network.input_shape, dtype="int32")
        elif len(network.input_shape) == 3:
            channels, height, width = network.input_shape
            inputs = keras.Input(shape=(height, width, channels), dtype=self.dtype)
        else:
            inputs = keras.Input(shape=network.input_shape, dtype=self.dtype)
        outputs, _ = self.sequence(network.layers, inputs, network.input_shape, "", False)
        return keras.Model(inputs, outputs)

    def sequence(
        self, layers: tuple[spec.Layer, ...], x: Any, shape: spec.Shape, prefix: str, flat: bool
    ) -> tuple[Any, bool]:
        for index, layer in enumerate(layers):
            x, flat = self.layer(layer, x, shape, f"{prefix}{index}", flat)
            shape = layer.out_shape(shape)
        return x, flat

    def layer(self, layer: spec.Layer, x: Any, shape: spec.Shape, path: str, flat: bool) -> tuple[Any, bool]:
        """Apply ``layer`` to ``x``; ``flat``: ``x`` is still a flattened image, in channels-last order."""
        kl = self.keras.layers
        if isinstance(layer, spec.Residual | spec.Concat) and flat:
            raise Unsupported("the Keras backend cannot branch over a flattened image (channels-last order)")
        if isinstance(layer, spec.Dense):
            dense = kl.Dense(layer.units, use_bias=layer.bias,
                             **self._arguments("kernel", "bias"))
            x = dense(x)
            self._bind(path, dense, layer.bias)
            return x, False
        if isinstance(layer, spec.Conv2D):
            kernel_size, stride, padding = spec.pair(layer.kernel), spec.pair(layer.stride), spec.pair(layer.padding)
            conv_args = {"use_bias": layer.bias, **self._arguments("kernel", "bias")}
            if stride == (1, 1) and all(2 * p == k - 1 for k, p in zip(kernel_size, padding, strict=True)):
                # Stride 1 and k = 2p + 1: "same" pads p on both sides, exactly the spec's padding.
                conv = kl.Conv2D(layer.filters, kernel_size, strides=stride, padding="same", **conv_args)
            else:
                if padding != (0, 0):
                    x = kl.ZeroPadding2D(padding)(x)
                conv = kl.Conv2D(layer.filters, kernel_size, strides=stride, padding="valid", **conv_args)
            x = conv(x)
            self._bind(path, conv, layer.bias)
            return x, False
        if isinstance(layer, spec.MaxPool2D | spec.AvgPool2D):
            kernel_size, padding = spec.pair(layer.kernel), spec.pair(layer.padding)
            stride = spec.pair(layer.stride if layer.stride is not None else layer.kernel)
            if isinstance(layer, spec.MaxPool2D):
                if stride == (1, 1) and all(2 * p == k - 1 for k, p in zip(kernel_size, padding, strict=True)):
                    # Every backend's "same" max pool ignores the padding: the spec's minus infinity.
                    return kl.MaxPooling2D(kernel_size, strides=stride, padding="same")(x), False
                if padding != (0, 0):
                    x = _neg_inf_padding_class()(padding)(x)
                return kl.MaxPooling2D(kernel_size, strides=stride, padding="valid")(x), False
            # Zeros counted in the average (count_include_pad); Keras' "same" would leave them out.
            if padding != (0, 0):
                x = kl.ZeroPadding2D(padding)(x)
            return kl.AveragePooling2D(kernel_size, strides=stride, padding="valid")(x), False
        if isinstance(layer, spec.GlobalAvgPool2D):
            return kl.GlobalAveragePooling2D()(x), False
        if isinstance(layer, spec.BatchNorm):
            # Keras' momentum is the weight of the old running statistic, the spec's of the new one.
            # Keras updates the running variance with the biased batch variance, PyTorch with the
            # unbiased one (a factor n/(n-1) in the statistic, never in the training step itself).
            regularizers = {f"{name}_regularizer": self.regularizer for name in ("gamma", "beta") if self.regularizer}
            norm = kl.BatchNormalization(axis=-1, momentum=1.0 - layer.momentum, epsilon=layer.eps, **regularizers)
            x = norm(x)
            self.handles[f"{path}.gamma"], self.handles[f"{path}.beta"] = _Whole(norm.gamma), _Whole(norm.beta)
            self.norms.append(norm)
            return x, False
        if isinstance(layer, spec.Activation):
            return kl.Activation(self._activation(layer.function))(x), flat
        if isinstance(layer, spec.Dropout):
            return kl.Dropout(layer.rate)(x), flat
        if isinstance(layer, spec.Flatten):
            if len(shape) == 3 and path not in self.dense_flattens:
                # What follows holds its parameters in canonical feature order: (C, H, W) first.
                return kl.Flatten()(kl.Permute((3, 1, 2))(x)), False
            return kl.Flatten()(x), len(shape) == 3
        if isinstance(layer, spec.Embedding):
            # A tied one is a ReversibleEmbedding (tie_weights=True), an Embedding that keras_hub's GPT-2
            # also calls in reverse for its logits: one variable, read by both calls.
            arguments = self._arguments("embeddings")
            embedding = (kl.ReversibleEmbedding(layer.vocab, layer.dim, tie_weights=True, **arguments)
                         if path in self.tied else kl.Embedding(layer.vocab, layer.dim, **arguments))
            x = embedding(x)
            self.embeddings[path] = embedding
            self.handles[f"{path}.table"] = _Whole(embedding.embeddings)
            return x, False
        transformer = self._transformer_layer(layer, x, shape, path)
        if transformer is not None:
            return transformer, False
        if isinstance(layer, spec.LSTM | spec.GRU):
            for k in range(layer.layers):
                common = {"return_sequences": layer.return_sequences or k < layer.layers - 1,
                          **self._arguments("kernel", "recurrent", "bias")}
                # Default activations (tanh, sigmoid) keep the cuDNN kernels eligible on a GPU.
                if isinstance(layer, spec.LSTM):
                    # One bias per gate, and the spec's forget bias starts at 0.
                    rnn = kl.LSTM(layer.hidden, unit_forget_bias=False, **common)
                else:
                    # reset_after=True: the cuDNN / PyTorch GRU with input and recurrent biases (2, 3H).
                    rnn = kl.GRU(layer.hidden, reset_after=True, **common)
                x = rnn(x)
                cell, name = rnn.cell, f"{path}.layer{k}"
                self.handles[f"{name}.input_kernel"] = _Whole(cell.kernel)
                self.handles[f"{name}.recurrent_kernel"] = _Whole(cell.recurrent_kernel)
                if isinstance(layer, spec.LSTM):
                    self.handles[f"{name}.bias"] = _Whole(cell.bias)
                else:
                    self.handles[f"{name}.input_bias"], self.handles[f"{name}.recurrent_bias"] = (
                        _Row(cell.bias, 0), _Row(cell.bias, 1))
            return x, False
        if isinstance(layer, spec.Residual):
            body, _ = self.sequence(layer.body, x, shape, f"{path}.body.", False)
            shortcut, _ = self.sequence(layer.shortcut, x, shape, f"{path}.shortcut.", False)
            return kl.Add()([body, shortcut]), False
        if isinstance(layer, spec.Concat):
            branches = [self.sequence(branch, x, shape, f"{path}.branches.{index}.", False)[0]
                        for index, branch in enumerate(layer.branches)]
            return kl.Concatenate(axis=-1)(branches), False  # channels-last: channels are the last axis
        raise Unsupported(f"the Keras backend has no translation for the layer type {type(layer).__name__}")

    def _bind(self, path: str, owner: Any, bias: bool) -> None:
        self.handles[f"{path}.kernel"] = _Whole(owner.kernel)
        if bias:
            self.handles[f"{path}.bias"] = _Whole(owner.bias)

    def _activation(self, function: str) -> Callable[..., Any]:
        if function not in _ACTIVATIONS:
            raise Unsupported(f"the Keras backend has no translation for the activation {function!r}")
        name, keywords = _ACTIVATIONS[function]
        if function in _TF_GELUS and self.keras.backend.backend() == "tensorflow":
            return _saveable(function, tensorflow_gelu=True)
        activation: Callable[..., Any] = getattr(self.keras.activations, name)
        # Keras' own function where its defaults are the spec's (keras.activations.gelu is the exact
        # form): model.save writes it by name. A keyword needs a function of ours, registered so that
        # model.save can write it too.
        return _saveable(function) if keywords else activation

    def _transformer_layer(self, layer: spec.Layer, x: Any, shape: spec.Shape, path: str) -> Any | None:
        """Apply a transformer's layer to the sequence ``x`` (None for a layer of another kind)."""
        kl = self.keras.layers
        if isinstance(layer, spec.LayerNorm):
            norm = kl.LayerNormalization(axis=-1, epsilon=layer.eps, **self._arguments("gamma", "beta"))
            x = norm(x)
            self.handles[f"{path}.gamma"], self.handles[f"{path}.beta"] = _Whole(norm.gamma), _Whole(norm.beta)
            return x
        if isinstance(layer, spec.MultiHeadSelfAttention):
            return self._attention(layer, x, shape[-1], path)
        if isinstance(layer, spec.PositionEmbedding):
            positions = _position_add_class()(layer.positions, self.regularizer)
            x = positions(x)
            self.handles[f"{path}.table"] = _Whole(positions.table)
            return x
        if isinstance(layer, spec.TokenTypeEmbedding):
            types = _token_type_add_class()(layer.types, layer.type_ids(shape[0]), self.regularizer)
            x = types(x)
            self.handles[f"{path}.table"] = _Whole(types.table)
            return x
        if isinstance(layer, spec.SelectToken):
            return x[:, layer.index]  # a functional model's slice (keras.ops' GetItem)
        if isinstance(layer, spec.TiedOutput):
            return self.embeddings[layer.tied_to](x, reverse=True)  # x @ table^T; Network checked the tie
        return None

    def _attention(self, layer: spec.MultiHeadSelfAttention, x: Any, width: int, path: str) -> Any:
        """Keras' MultiHeadAttention of ``x`` with itself: scores scaled by 1/sqrt(key_dim), its
        dropout on the probabilities in training only, the causal mask by ``use_causal_mask``. Keras
        takes its fused ``ops.dot_product_attention`` where dropout is 0 and otherwise computes the
        scores, the masked softmax and the dropout as separate ops."""
        size = width // layer.heads
        attention = self.keras.layers.MultiHeadAttention(num_heads=layer.heads, key_dim=size, dropout=layer.dropout,
                                                         **self._arguments("kernel", "bias"))
        x = attention(x, x, use_causal_mask=layer.causal)
        projections = (attention.query_dense, attention.key_dense, attention.value_dense)
        self.handles[f"{path}.qkv_kernel"] = _Blocks(tuple(dense.kernel for dense in projections), (width, width))
        self.handles[f"{path}.qkv_bias"] = _Blocks(tuple(dense.bias for dense in projections), (width,))
        self.handles[f"{path}.out_kernel"] = _Blocks((attention.output_dense.kernel,), (width, width))
        self.handles[f"{path}.out_bias"] = _Whole(attention.output_dense.bias)
        return x


# --------------------------------------------------------------------------------------------------
# The kernel's Model


class _JaxState:
    """The values of a model's variables (and its optimizer's) as JAX arrays, held outside them.

    A jitted custom step takes the state as arguments and returns the new state; the train step
    donates it, so that XLA updates it in place, and the arrays the Keras variables held are gone
    after the first step (``donated``). Keras' own trainer assigns the returned state back to the
    variables after every call (part of what makes train_on_batch slower); here it stays in this
    holder, and goes back into the Keras variables (``write``) only where something else uses them.
    """

    def __init__(self, variables: tuple[list[Any], ...]) -> None:
        self.variables = variables
        self.values: tuple[list[Any], ...] = tuple([v.value for v in group] for group in variables)
        self.donated = False

    def write(self) -> None:
        for group, values in zip(self.variables, self.values, strict=True):
            for variable, value in zip(group, values, strict=True):
                variable.assign(value)


Step = Callable[..., Any]


class Model(kernel.Model):
    """The spec's network as a functional ``keras.Model``: images channels-last, kernels
    ``(kh, kw, in, out)``, Dense and recurrent kernels ``(in, out)``, LSTM gates i, f, c, o (the
    canonical order), GRU gates z, r, h with the two biases as the rows of one ``(2, 3H)`` bias;
    self-attention as MultiHeadAttention, whose per-head query, key and value kernels join into the
    canonical fused ``qkv_kernel`` (``_Blocks``); a tied output through its ReversibleEmbedding."""

    conventions = kernel.Conventions(channels_last=True, conv_kernel="hwio", gru_gates=layout.GRU_KERAS)

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool,
                 backend: str = "jax", train_loop: str = "custom", infer_path: str = "custom") -> None:
        super().__init__(workload, precision, device, batch_size, training)
        keras = self.keras = _keras()
        self.backend = backend
        self.on_gpu = not device.startswith("cpu")
        # A worker runs one cell (or verifies networks one after another): the device scope stays
        # entered while its steps run, and is left at exit, before the interpreter tears down the
        # modules its context manager needs.
        scope = contextlib.ExitStack()
        scope.enter_context(keras.device(device))
        atexit.register(scope.close)
        if precision in DTYPE_POLICIES:  # process-wide, as Keras' guide sets it: a worker builds one precision
            keras.config.set_dtype_policy(DTYPE_POLICIES[precision])
        name, arguments = kernel.optimizer_arguments(self.recipe.optimizer, SPELLING, "Keras") if training else ("", {})
        # A coupled weight decay goes into the layers' regularizers (_Builder); AdamW's stays its own.
        # Floating inputs come in the host dtype (float32 for bfloat16: each layer casts its inputs to its policy's).
        builder = _Builder(self.network, arguments.pop(L2_PENALTY, 0.0), self.dtype.name)
        self.model = builder.model(self.network)
        self.handles, self.norms = builder.handles, builder.norms
        self.loss_fn = _cross_entropy_class()(kernel.loss_divisor(self.network, self.recipe, 1))
        self.optimizer: Any = None
        if training:
            if name == "RMSprop":
                # Keras 3 divides by sqrt(v + eps), PyTorch (and the Keras 2 of the studies) by
                # sqrt(v) + eps: eps squared under the root is the same floor, where eps itself
                # would be a floor of sqrt(eps).
                arguments["epsilon"] = arguments["epsilon"] ** 2
            # TensorFlow's clip_by_global_norm (PyTorch's clip_grad_norm_ adds 1e-6 to the norm).
            arguments["global_clipnorm"] = self.recipe.grad_clip_norm
            self.optimizer = getattr(keras.optimizers, name)(**arguments)
            self.model.compile(optimizer=self.optimizer, loss=self.loss_fn, jit_compile="auto")
        else:
            self.model.compile(loss=self.loss_fn, jit_compile="auto")
        self._held: _JaxState | None = None  # the JAX state while custom steps keep it (_JaxState)
        self._last: Any = None  # the last JAX output, to wait for
        self._gradient_fn: Any = None
        self.infer_execution, self._infer = self._infer_step(infer_path)
        self._train: Step | None = None
        self.train_execution = ""
        if training:
            self.train_execution, self._train = self._train_step(train_loop)

    # ---- the state under JAX

    def _jax_state(self) -> _JaxState:
        if self._held is None:
            groups = [self.model.trainable_variables, self.model.non_trainable_variables]
            if self.optimizer is not None:
                groups.append(self.optimizer.variables)
            self._held = _JaxState(tuple(groups))
        return self._held

    def _settle(self) -> None:
        """Make the Keras variables current (a state a custom step donated goes back into them) and
        drop the held state, which the next custom step reads afresh."""
        if self._held is not None and self._held.donated:
            self._held.write()
        self._held = None

    # ---- the steps per backend

    def _train_step(self, loop: str) -> tuple[str, Step]:
        """Keras' ``train_on_batch``, or the train step of Keras' guides "Writing a training loop from
        scratch in JAX / TensorFlow / PyTorch": forward and loss, the backend's gradients,
        ``optimizer.apply``. Compiled once for the first batch's shapes and dtypes."""
        model, loss_fn, optimizer = self.model, self.loss_fn, self.optimizer
        if loop == "train_on_batch":
            def keras_step(x: Any, y: Any) -> Any:
                self._settle()
                return model.train_on_batch(x, y, return_dict=False)  # the loss as NumPy: the step has finished

            return "train_on_batch", keras_step
        if self.backend == "jax":
            import jax

            optimizer.build(model.trainable_variables)

            def loss_and_state(trainable: list[Any], non_trainable: list[Any], x: Any, y: Any) -> tuple[Any, list[Any]]:
                logits, non_trainable, penalties = model.stateless_call(
                    trainable, non_trainable, x, training=True, return_losses=True)
                loss = loss_fn(y, logits)
                for penalty in penalties:
                    loss = loss + penalty
                return loss, non_trainable

            grad_fn = jax.value_and_grad(loss_and_state, has_aux=True)

            # The whole state is donated: XLA updates the parameters and optimizer slots in place.
            @functools.partial(jax.jit, donate_argnums=0)
            def train_step(state: tuple[list[Any], ...], x: Any, y: Any) -> tuple[Any, Any]:
                trainable, non_trainable, slots = state
                (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
                trainable, slots = optimizer.stateless_apply(slots, grads, trainable)
                return loss, (trainable, non_trainable, slots)

            def jax_step(x: Any, y: Any) -> Any:
                held = self._jax_state()
                self._last, held.values = train_step(held.values, x, y)
                held.donated = True
                return self._last

            return "jax.jit", jax_step
        if self.backend == "tensorflow":
            import tensorflow as tf

            variables = model.trainable_variables

            @tf.function(jit_compile=bool(model.jit_compile))  # type: ignore[untyped-decorator]
            def tf_step(x: Any, y: Any) -> Any:
                with tf.GradientTape() as tape:
                    loss = loss_fn(y, model(x, training=True))
                    for penalty in model.losses:
                        loss = loss + penalty
                optimizer.apply(tape.gradient(loss, variables), variables)
                return loss

            return ("tf.function+xla" if model.jit_compile else "tf.function"), tf_step
        import torch

        weights = model.trainable_weights

        def torch_step(x: Any, y: Any) -> Any:
            loss = loss_fn(y, model(x, training=True))
            for penalty in model.losses:
                loss = loss + penalty
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                optimizer.apply([w.value.grad for w in weights], weights)
            return loss.detach()  # not the autograd graph, which would live as long as the loss

        return "eager", torch_step

    def _infer_step(self, path: str) -> tuple[str, Step]:
        """Keras' ``predict_on_batch``, or a forward pass in inference mode compiled the way the
        backend compiles Keras' predict step. Under JAX it reads the state a custom train step holds."""
        model = self.model
        if path == "predict_on_batch":
            def keras_forward(x: Any) -> Any:
                self._settle()
                return model.predict_on_batch(x)  # NumPy: the step has finished

            return "predict_on_batch", keras_forward
        if self.backend == "jax":
            import jax

            @jax.jit
            def forward(trainable: list[Any], non_trainable: list[Any], x: Any) -> Any:
                return model.stateless_call(trainable, non_trainable, x, training=False)[0]

            def jax_forward(x: Any) -> Any:
                held = self._jax_state()
                self._last = forward(held.values[0], held.values[1], x)
                return self._last

            return "jax.jit", jax_forward
        if self.backend == "tensorflow":
            import tensorflow as tf

            @tf.function(jit_compile=bool(model.jit_compile))  # type: ignore[untyped-decorator]
            def tf_forward(x: Any) -> Any:
                return model(x, training=False)

            return ("tf.function+xla" if model.jit_compile else "tf.function"), tf_forward
        import torch

        def torch_forward(x: Any) -> Any:
            with torch.no_grad():
                return model(x, training=False)

        return "eager", torch_forward

    # ---- the kernel's contract

    def bindings(self) -> list[kernel.Binding]:
        return self.bind(self.handles)

    def _values(self, variables: tuple[Any, ...]) -> list[np.ndarray]:
        return [self._host(variable) for variable in variables]

    def _host(self, tensor: Any) -> np.ndarray:
        return widened(self.keras.ops.convert_to_numpy(tensor))

    def read(self, handle: _Handle) -> np.ndarray:
        self._settle()
        return handle.join(self._values(handle.variables))

    def write(self, handle: _Handle, value: np.ndarray) -> None:
        self._settle()
        parts = handle.split(value, lambda: self._values(handle.variables))
        for variable, part in zip(handle.variables, parts, strict=True):
            variable.assign(part)

    def reset_statistics(self) -> None:
        self._settle()
        for norm in self.norms:
            norm.moving_mean.assign(np.zeros(norm.moving_mean.shape, norm.moving_mean.dtype))
            norm.moving_variance.assign(np.ones(norm.moving_variance.shape, norm.moving_variance.dtype))

    def device_batch(self, array: np.ndarray) -> Any:
        """A tensor on the device: floats in the model's precision, integers (token ids, labels) int32."""
        array = array.astype(np.int32) if array.dtype.kind in "iu" else array.astype(self.dtype, copy=False)
        return self.keras.ops.convert_to_tensor(array)

    def logits(self, inputs: Any) -> np.ndarray:
        return self._host(self._infer(inputs))

    def infer_step(self, inputs: Any) -> Any:
        return self._infer(inputs)

    def train_step(self, inputs: Any, labels: Any) -> Any:
        if self._train is None:
            raise RuntimeError("a Keras model built for inference has no train step")
        return self._train(inputs, labels)

    def gradients(self, inputs: Any, labels: Any) -> tuple[float, dict[str, np.ndarray]]:
        """The backend's own autodiff of the recipe's loss through the model in inference mode."""
        self._settle()
        keras, model, loss_fn = self.keras, self.model, self.loss_fn
        variables = model.trainable_variables
        if self.backend == "jax":
            import jax

            if self._gradient_fn is None:
                def loss_of(trainable: list[Any], non_trainable: list[Any], x: Any, y: Any) -> Any:
                    logits, _ = model.stateless_call(trainable, non_trainable, x, training=False)
                    return loss_fn(y, logits)

                self._gradient_fn = jax.jit(jax.value_and_grad(loss_of))
            loss, grads = self._gradient_fn([v.value for v in variables],
                                            [v.value for v in model.non_trainable_variables], inputs, labels)
        elif self.backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = loss_fn(labels, model(inputs, training=False))
            grads = tape.gradient(loss, variables)
        else:
            model.zero_grad()
            loss = loss_fn(labels, model(inputs, training=False))
            loss.backward()
            grads = [v.value.grad for v in variables]
        by_variable = {id(v): np.zeros(v.shape, self.dtype) if g is None else self._host(g)
                       for v, g in zip(variables, grads, strict=True)}
        found = {name: handle.join([by_variable[id(variable)] for variable in handle.variables])
                 for name, handle in self.handles.items()}
        return float(keras.ops.convert_to_numpy(loss)), found

    def sync(self) -> None:
        """Wait for queued device work: JAX's outputs always (it dispatches asynchronously, on a CPU
        too); TensorFlow's and PyTorch's CPU work is done when a call returns."""
        if self.backend == "jax":
            if self._last is not None:
                self._last.block_until_ready()  # one XLA executable: its outputs become ready together
        elif self.on_gpu and self.backend == "torch":
            import torch

            torch.cuda.synchronize()
        elif self.on_gpu:
            import tensorflow as tf

            tf.test.experimental.sync_devices()

    def trainable_params(self) -> int:
        return sum(math.prod(v.shape) for v in self.model.trainable_weights)

    def parity(self) -> Parity:
        keras = self.keras
        execution = self.train_execution if self.training else self.infer_execution
        details: dict[str, Any] = {
            "backend": self.backend,
            "keras_version": keras.__version__,
            "jit_compile": bool(self.model.jit_compile),  # Keras' own decision for this backend
            "step": execution,
            "image_data_format": keras.config.image_data_format(),
        }
        if self.training:
            details["predict"] = self.infer_execution  # what the accuracy scenario tests with
        details["dtype_policy"] = self.model.dtype_policy.name
        # The outputs' dtypes of the layers that hold kernels and tables, as Keras traced the functional
        # graph (each layer's call run symbolically under its policy): what their products computed in.
        products = {str(layer.output.dtype) for layer in self.model.layers
                    if any(len(weight.shape) >= 2 for weight in layer.weights)}
        if products:
            details["matmul_dtype"] = ", ".join(sorted(products))
        threads: int | None
        tf32: bool | None = None
        cudnn_benchmark: bool | None = None
        if self.backend == "jax":
            import jax

            threads = len(os.sched_getaffinity(0))
            details.update(threads_source="CPU affinity (JAX has no thread setting it obeys)",
                           jax_version=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS"),
                           device_kind=jax.devices()[0].device_kind)
            if self.on_gpu:
                # XLA's default precision for float32 dots on a GPU is TF32 unless asked otherwise.
                precision = jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]
                tf32 = precision in (None, "default", "tensorfloat32")
                details["matmul_precision"] = precision
        elif self.backend == "tensorflow":
            import tensorflow as tf

            threads = tf.config.threading.get_intra_op_parallelism_threads()
            details.update(threads_source="tf.config.threading intra-op",
                           interop_threads=tf.config.threading.get_inter_op_parallelism_threads(),
                           tensorflow_version=tf.__version__,
                           onednn=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 CPUs)"))
            if self.on_gpu:
                tf32 = bool(tf.config.experimental.tensor_float_32_execution_enabled())
        else:
            import torch

            threads = torch.get_num_threads()
            details.update(threads_source="torch.get_num_threads",
                           interop_threads=torch.get_num_interop_threads(), torch_version=torch.__version__,
                           mkldnn=torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
            if self.on_gpu:
                tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
                cudnn_benchmark = bool(torch.backends.cudnn.benchmark)
                details["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        weights = self.model.trainable_weights
        return Parity(threads=threads, dtype=str(weights[0].dtype) if weights else None, execution=execution,
                      tf32=tf32, cudnn_benchmark=cudnn_benchmark, details=details)


# --------------------------------------------------------------------------------------------------
# Backend


def _set_threads(backend: str, threads: int) -> None:
    """The backend's own thread limits, before keras (or anything) runs an op."""
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        # Possible only once, before any inter-op parallel work; otherwise the pool stays as it is.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(threads)
    elif backend == "tensorflow":
        import tensorflow as tf

        # TensorFlow obeys these only before its first op, and ignores OMP_NUM_THREADS.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(TF_INTEROP_THREADS)
    # JAX has no thread setting that it obeys: the worker's CPU affinity is its limit.


def _compute_in_float64(backend: str) -> None:
    """Make float64 the float type of the rest of the process (a worker builds one checker).

    Keras' floatx is the dtype every layer, the loss and the ops that make floats of integers take
    when not told otherwise. JAX without x64 mode turns every float64 array into float32 silently.
    Keras' type promotion demotes float64 to float32 on every backend but TensorFlow, as JAX without
    x64 does (keras-team/keras#23704): batch norm and global average pooling compute in float32 on
    JAX and torch, so do tanh (and with it LSTM and GRU) on JAX and Dense and the loss on torch,
    often behind a float64 result. Its table of demotions is the one place that decides it, so
    float64 comes off that table.
    """
    keras = _keras()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", True)  # type: ignore[no-untyped-call]
        if jnp.zeros((), "float64").dtype != np.float64:
            raise Unavailable("JAX stays in 32-bit mode although jax_enable_x64 was set")
    if keras.backend.result_type("float64", "float64") != "float64":
        from keras.src.backend.common import dtypes

        dtypes.BIT64_TO_BIT32_DTYPE["float64"] = "float64"
        if keras.backend.result_type("float64", "float64") != "float64":
            raise Unavailable(f"Keras {keras.__version__} demotes float64 to float32 on {backend}")
    keras.config.set_floatx("float64")


class Backend(kernel.KernelBackend):
    """Keras 3 on one backend; the backend is fixed for the process by the first keras import."""

    model_class = Model
    devices = ("cpu", "cuda")
    precisions = BFLOAT16_PRECISIONS

    def __init__(
        self, threads: int, backend: str, train_loop: str | None = None, infer_path: str | None = None
    ) -> None:
        if backend not in BACKENDS:
            raise Unsupported(f"Keras runs on {', '.join(BACKENDS)}, not {backend!r}")
        os.environ["KERAS_BACKEND"] = backend
        _set_threads(backend, threads)
        keras = _keras()
        if keras.backend.backend() != backend:
            raise Unavailable(
                f"keras was already imported with the {keras.backend.backend()} backend; "
                f"{backend} needs a fresh process"
            )
        self.backend = backend
        self.name = f"keras-{backend}"
        # train_loop and infer_path override the measured choice (TRAIN_LOOP, INFER_PATH) to re-measure it.
        self.train_loop = train_loop or TRAIN_LOOP[backend]
        self.infer_path = infer_path or INFER_PATH[backend]
        if self.train_loop not in TRAIN_LOOPS or self.infer_path not in INFER_PATHS:
            raise ValueError(f"unknown train loop {self.train_loop!r} or inference path {self.infer_path!r}")
        super().__init__(threads, backend=backend, train_loop=self.train_loop, infer_path=self.infer_path)

    def version(self) -> str:
        keras = _keras()
        library = importlib.import_module(self.backend)
        return f"{keras.__version__} ({self.backend} {library.__version__})"

    def _gpu_visible(self) -> bool:
        if self.backend == "torch":
            import torch

            return bool(torch.cuda.is_available())
        if self.backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        import jax

        return any(device.platform == "gpu" for device in jax.devices())

    def _device(self, device: str) -> str:
        """The Keras device name for a cell's device.

        The torch backend gets torch's own names: under ``keras.device("cpu:0")`` it moves each new
        parameter ``.to("cpu:0")``, which torch treats as another device and answers with a copy
        that is no longer a leaf parameter (no gradients, and integer states fail to register).
        """
        torch_names = self.backend == "torch"
        if super()._device(device) == "cuda":
            if not self._gpu_visible():
                raise Unavailable(f"Keras' {self.backend} backend sees no GPU")
            return "cuda" if torch_names else "gpu:0"
        return "cpu" if torch_names else "cpu:0"

    def _seed(self, seed: int) -> None:
        """Seed the dropout masks. Not keras.utils.set_random_seed: it imports TensorFlow whatever the
        backend. Every Keras dropout layer built without a seed draws one from Python's random
        module, except that the torch backend's dropout draws its masks from torch's own."""
        random.seed(seed)
        if self.backend == "torch":
            import torch

            torch.manual_seed(seed)

    def prepare(self, request: StepRequest) -> kernel.KernelRunner:
        self._seed(request.seed)
        return super().prepare(request)

    def trainer(self, request: StepRequest) -> kernel.KernelTrainer:
        self._seed(request.seed)
        return super().trainer(request)

    def checker(self, workload: Workload, device: str, precision: str = "float32") -> kernel.KernelChecker:
        if precision == "float64":
            _compute_in_float64(self.backend)
        return super().checker(workload, device, precision)

    def flush_denormals(self) -> str | None:
        """The torch backend's switch; JAX and TensorFlow have none, and flush in their own threads."""
        if self.backend != "torch":
            return None
        from dlarena.frameworks.pytorch import flush_denormals

        return flush_denormals()

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        # keras.ops eagerly: under JAX an op is compiled by XLA like a step, and TensorFlow's eager
        # kernels run in the same threads as its graphs.
        keras = _keras()
        with keras.device(self._device(device)):
            product = keras.ops.matmul(keras.ops.convert_to_tensor(a), keras.ops.convert_to_tensor(b))
        result: np.ndarray = keras.ops.convert_to_numpy(product)
        return result
