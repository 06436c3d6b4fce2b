"""Keras 3 on its JAX, PyTorch or TensorFlow backend (``keras-jax``, ``keras-torch``, ``keras-tensorflow``).

Only a worker process imports this module, after it has set thread limits and CPU affinity. Keras
fixes its backend when it is first imported, so this module never imports keras at its top:
``Backend.__init__`` sets ``KERAS_BACKEND``, sets the backend's thread pools, and only then imports
keras; every other function imports it (from ``sys.modules``, at no cost) where it needs it.

The network is a functional ``keras.Model`` of Keras layers in Keras' own image layout,
``channels_last``: the synthetic batch is made channels-last once at prepare time and canonical
weights are converted with ``layout.py``. The optimizer, the loss and ``jit_compile="auto"`` go
through ``model.compile``, so that Keras decides per backend whether to compile (XLA under JAX
always; no XLA for TensorFlow on a CPU-only machine; eager for PyTorch).

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
re-measures it. The accuracy scenario's ``Trainer`` runs the same two steps on real batches.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

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
from dlarena.spec.recipe import Init
from dlarena.spec.weights import layer_params, walk

BACKENDS: tuple[str, ...] = ("jax", "torch", "tensorflow")
DEVICES: tuple[str, ...] = ("cpu", "cuda")

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

# He et al.'s gain for ReLU: variance 2 / fan_in.
HE_SCALE = 2.0


def _keras() -> Any:
    """The keras module, imported by ``Backend.__init__`` once ``KERAS_BACKEND`` was set."""
    import keras

    return keras


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


# --------------------------------------------------------------------------------------------------
# Layers Keras has not


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


# --------------------------------------------------------------------------------------------------
# Spec -> keras.Model


def _initialisers(init: Init | None, kind: str) -> dict[str, Any]:
    """Initializer arguments of one Keras layer of ``kind`` (dense, conv, embedding, recurrent).

    As spec.weights.initial_weights: ``uniform`` for every parameter, biases included; ``glorot_uniform`` and
    ``he_normal`` for kernels, recurrent kernels and embedding tables, with zero biases;
    ``framework_default`` keeps Keras' own. Keras' ``HeNormal`` is truncated, PyTorch's
    ``kaiming_normal_`` is not: VarianceScaling with an untruncated normal matches it. ``None`` is
    for a model whose weights are loaded afterwards (the checker): zeros, because under JAX every
    random initializer of a new shape costs an XLA compilation of seconds. Each call makes new
    instances, seeded from Python's ``random``.
    """
    initializers = _keras().initializers
    names = {"dense": ("kernel", "bias"), "conv": ("kernel", "bias"), "embedding": ("embeddings",),
             "recurrent": ("kernel", "recurrent", "bias")}[kind]
    if init is None:
        return {f"{name}_initializer": initializers.Zeros() for name in names}
    if init.name == "framework_default":
        return {}
    kwargs: dict[str, Any] = {}
    for name in names:
        if init.name == "uniform":
            value = initializers.RandomUniform(-init.scale, init.scale)
        elif name == "bias":
            value = initializers.Zeros()
        elif init.name == "glorot_uniform":
            value = initializers.GlorotUniform()
        elif init.name == "he_normal":
            # PyTorch's fan_in of an embedding table (vocab, dim) is dim, Keras' fan_in is vocab.
            mode = "fan_out" if kind == "embedding" else "fan_in"
            value = initializers.VarianceScaling(HE_SCALE, mode, "untruncated_normal")
        else:
            raise Unsupported(f"the Keras backend does not know the initialisation {init.name!r}")
        kwargs[f"{name}_initializer"] = value
    return kwargs


class _Builder:
    """Builds a network with the functional API and remembers which Keras layer holds what.

    ``layers`` maps a spec path to the Keras layers holding its parameters (one per stacked layer
    of an LSTM or GRU); ``flattened`` maps the path of a Dense or BatchNorm fed by a channels-last
    Flatten to the ``(C, H, W)`` it flattened, whose canonical rows follow channels-first order.
    ``dtype`` is that of float inputs; the layers take Keras' floatx.
    """

    def __init__(self, init: Init | None, weight_decay: float, dtype: str = "float32") -> None:
        self.keras = _keras()
        self.init = init
        self.dtype = dtype
        self.layers: dict[str, list[Any]] = {}
        self.flattened: dict[str, Shape] = {}
        # Keras' weight_decay is decoupled (AdamW-style); PyTorch's adds wd * w to the gradient,
        # which an L2 penalty of wd/2 * sum(w^2) on every parameter gives exactly.
        self.regularizer = self.keras.regularizers.L2(weight_decay / 2) if weight_decay else None

    def _regularized(self, *names: str) -> dict[str, Any]:
        return {f"{name}_regularizer": self.regularizer for name in names} if self.regularizer else {}

    def model(self, network: Network) -> Any:
        keras = self.keras
        if network.input_kind == "tokens":
            inputs = keras.Input(shape=network.input_shape, dtype="int32")
        elif len(network.input_shape) == 3:
            channels, height, width = network.input_shape
            inputs = keras.Input(shape=(height, width, channels), dtype=self.dtype)
        else:
            inputs = keras.Input(shape=network.input_shape, dtype=self.dtype)
        outputs, _ = self.sequence(network.layers, inputs, network.input_shape, "", None)
        return keras.Model(inputs, outputs)

    def sequence(
        self, layers: tuple[Layer, ...], x: Any, shape: Shape, prefix: str, flat: Shape | None
    ) -> tuple[Any, Shape | None]:
        for index, layer in enumerate(layers):
            x, flat = self.layer(layer, x, shape, f"{prefix}{index}", flat)
            shape = layer.out_shape(shape)
        return x, flat

    def layer(self, layer: Layer, x: Any, shape: Shape, path: str, flat: Shape | None) -> tuple[Any, Shape | None]:
        """Apply ``layer`` to ``x``; ``flat`` is the (C, H, W) whose flatten ``x`` still is, if any."""
        kl = self.keras.layers
        if isinstance(layer, Residual | Concat) and flat is not None:
            raise Unsupported("the Keras backend cannot branch over a flattened image (channels-last order)")
        if isinstance(layer, Dense):
            if flat is not None:
                self.flattened[path] = flat
            dense = kl.Dense(layer.units, use_bias=layer.bias, **_initialisers(self.init, "dense"),
                             **self._regularized("kernel", "bias"))
            self.layers[path] = [dense]
            return dense(x), None
        if isinstance(layer, Conv2D):
            kernel, stride, padding = _pair(layer.kernel), _pair(layer.stride), _pair(layer.padding)
            conv_args = {"use_bias": layer.bias, **_initialisers(self.init, "conv"),
                         **self._regularized("kernel", "bias")}
            if stride == (1, 1) and all(2 * p == k - 1 for k, p in zip(kernel, padding, strict=True)):
                # Stride 1 and k = 2p + 1: "same" pads p on both sides, exactly the spec's padding.
                conv = kl.Conv2D(layer.filters, kernel, strides=stride, padding="same", **conv_args)
            else:
                if padding != (0, 0):
                    x = kl.ZeroPadding2D(padding)(x)
                conv = kl.Conv2D(layer.filters, kernel, strides=stride, padding="valid", **conv_args)
            self.layers[path] = [conv]
            return conv(x), None
        if isinstance(layer, MaxPool2D | AvgPool2D):
            kernel, padding = _pair(layer.kernel), _pair(layer.padding)
            stride = _pair(layer.stride if layer.stride is not None else layer.kernel)
            if isinstance(layer, MaxPool2D):
                if stride == (1, 1) and all(2 * p == k - 1 for k, p in zip(kernel, padding, strict=True)):
                    # Every backend's "same" max pool ignores the padding: the spec's minus infinity.
                    return kl.MaxPooling2D(kernel, strides=stride, padding="same")(x), None
                if padding != (0, 0):
                    x = _neg_inf_padding_class()(padding)(x)
                return kl.MaxPooling2D(kernel, strides=stride, padding="valid")(x), None
            # Zeros counted in the average (count_include_pad); Keras' "same" would leave them out.
            if padding != (0, 0):
                x = kl.ZeroPadding2D(padding)(x)
            return kl.AveragePooling2D(kernel, strides=stride, padding="valid")(x), None
        if isinstance(layer, GlobalAvgPool2D):
            return kl.GlobalAveragePooling2D()(x), None
        if isinstance(layer, BatchNorm):
            if flat is not None:
                self.flattened[path] = flat
            # Keras' momentum is the weight of the old running statistic, the spec's of the new one.
            # Keras updates the running variance with the biased batch variance, PyTorch with the
            # unbiased one (a factor n/(n-1) in the statistic, never in the training step itself).
            norm = kl.BatchNormalization(axis=-1, momentum=1.0 - layer.momentum, epsilon=layer.eps,
                                         **self._regularized("gamma", "beta"))
            self.layers[path] = [norm]
            return norm(x), flat  # still in flattened channels-last order
        if isinstance(layer, Activation):
            return kl.Activation(layer.function)(x), flat
        if isinstance(layer, Dropout):
            return kl.Dropout(layer.rate)(x), flat
        if isinstance(layer, Flatten):
            return kl.Flatten()(x), shape if len(shape) == 3 else None
        if isinstance(layer, Embedding):
            embedding = kl.Embedding(layer.vocab, layer.dim, **_initialisers(self.init, "embedding"),
                                     **self._regularized("embeddings"))
            self.layers[path] = [embedding]
            return embedding(x), None
        if isinstance(layer, LSTM | GRU):
            stack = []
            for k in range(layer.layers):
                sequences = layer.return_sequences or k < layer.layers - 1
                common = {"return_sequences": sequences, **_initialisers(self.init, "recurrent"),
                          **self._regularized("kernel", "recurrent", "bias")}
                # Default activations (tanh, sigmoid) keep the cuDNN kernels eligible on a GPU.
                if isinstance(layer, LSTM):
                    # One bias per gate, and the spec's forget bias starts at 0.
                    rnn = kl.LSTM(layer.hidden, unit_forget_bias=False, **common)
                else:
                    # reset_after=True: the cuDNN / PyTorch GRU with input and recurrent biases (2, 3H).
                    rnn = kl.GRU(layer.hidden, reset_after=True, **common)
                stack.append(rnn)
                x = rnn(x)
            self.layers[path] = stack
            return x, None
        if isinstance(layer, Residual):
            body, _ = self.sequence(layer.body, x, shape, f"{path}.body.", None)
            shortcut, _ = self.sequence(layer.shortcut, x, shape, f"{path}.shortcut.", None)
            return kl.Add()([body, shortcut]), None
        if isinstance(layer, Concat):
            branches = [self.sequence(branch, x, shape, f"{path}.branches.{index}.", None)[0]
                        for index, branch in enumerate(layer.branches)]
            return kl.Concatenate(axis=-1)(branches), None  # channels-last: channels are the last axis
        raise Unsupported(f"the Keras backend has no translation for the layer type {type(layer).__name__}")


def make_optimizer(recipe: Recipe) -> Any:
    """The recipe's optimizer in Keras; weight decay is an L2 penalty in the loss (see _Builder).

    Keras' SGD keeps ``v = m*v - lr*g`` where PyTorch keeps ``v = m*v + g`` and steps ``lr*v``: the
    same updates for a constant learning rate, Nesterov included. Adadelta is PyTorch's. Keras'
    Adam adds epsilon after the bias correction of the step size (Kingma and Ba's "epsilon hat"):
    in PyTorch's form its eps is ``eps / sqrt(1 - beta2^t)``, 30 times larger at the first step and
    equal in the long run, so the two differ where gradients are below about 1e-6. RMSprop: see
    below. ``global_clipnorm`` is TensorFlow's clip_by_global_norm (PyTorch's clip_grad_norm_ adds
    1e-6 to the norm).
    """
    optimizers = _keras().optimizers
    opt = recipe.optimizer
    common = {"learning_rate": opt.lr, "global_clipnorm": recipe.grad_clip_norm}
    if opt.name == "sgd":
        return optimizers.SGD(momentum=opt.momentum, nesterov=opt.nesterov, **common)
    if opt.name == "adam":
        return optimizers.Adam(beta_1=opt.beta1, beta_2=opt.beta2, epsilon=opt.eps, **common)
    if opt.name == "adadelta":
        return optimizers.Adadelta(rho=opt.rho, epsilon=opt.eps, **common)
    if opt.name == "rmsprop":
        # Keras 3 divides by sqrt(v + eps), PyTorch (and the Keras 2 of the studies) by sqrt(v) + eps:
        # eps squared under the root is the same floor, where eps itself would be a floor of sqrt(eps).
        return optimizers.RMSprop(rho=opt.rho, epsilon=opt.eps**2, **common)
    raise Unsupported(f"the Keras backend does not know the optimizer {opt.name!r}")


@functools.cache
def _token_sum_over_batch_class() -> type:
    keras = _keras()
    base: Any = keras.losses.Loss

    class TokenSumOverBatch(base):  # type: ignore[misc]
        """Per-token softmax cross-entropy summed over each sample's tokens; Keras' default
        reduction then averages the sums over the batch."""

        def call(self, labels: Any, logits: Any) -> Any:
            per_token = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            return keras.ops.sum(per_token, axis=-1)

    return TokenSumOverBatch


def make_loss(network: Network, recipe: Recipe) -> Any:
    """Softmax cross-entropy on logits as a Keras loss, reduced as the recipe says.

    Keras' default reduction averages the per-sample losses over every element, which is the
    recipe's "mean" over samples or tokens. "sum_over_batch" over samples is that mean again.
    """
    if recipe.loss_reduction == "sum_over_batch" and network.label_kind == "token":
        return _token_sum_over_batch_class()(name="token_sum_over_batch")
    return _keras().losses.SparseCategoricalCrossentropy(from_logits=True)


def _to_keras_inputs(network: Network, inputs: np.ndarray, dtype: str) -> np.ndarray:
    """Canonical inputs (NCHW floats, or int64 token ids) in the model's layout and ``dtype``."""
    if network.input_kind == "tokens":
        return inputs.astype(np.int32)
    return layout.images_channels_last(inputs.astype(dtype))


def _input_shape(network: Network) -> Shape:
    shape = network.input_shape
    return (shape[1], shape[2], shape[0]) if network.input_kind == "image" and len(shape) == 3 else shape


def synthetic_batch(network: Network, batch_size: int, seed: int) -> tuple[Any, Any]:
    """Inputs (channels-last images) and labels made once, on the device, by keras.random."""
    keras = _keras()
    generator = keras.random.SeedGenerator(seed)
    shape = (batch_size, *_input_shape(network))
    if network.input_kind == "tokens":
        inputs = keras.random.randint(shape, 0, network.vocab, dtype="int32", seed=generator)
    else:
        inputs = keras.random.normal(shape, dtype="float32", seed=generator)
    labels = keras.random.randint(
        (batch_size, *network.label_shape), 0, network.classes, dtype="int32", seed=generator
    )
    return inputs, labels


def _count(variables: list[Any]) -> int:
    return sum(math.prod(v.shape) for v in variables)


# --------------------------------------------------------------------------------------------------
# Steps per backend


@dataclass
class _Step:
    """A prepared step: ``run`` does the work on the batch it is given and returns the loss (train)
    or the logits (infer) without waiting for them, ``sync`` waits for the last one, ``execution``
    names how it runs. ``state`` is the JAX state the step keeps outside the Keras variables (see
    _JaxState), None where the Keras variables hold the model's state."""

    run: Callable[..., Any]
    sync: Callable[[], None]
    execution: str
    state: _JaxState | None = None


class _JaxState:
    """The values of a model's variables (and its optimizer's) as JAX arrays, held outside them.

    A jitted custom step takes the state as arguments and returns the new state; the train step
    donates it, so that XLA updates it in place, and the arrays the Keras variables held are gone
    after the first step. Keras' own trainer assigns the returned state back to the variables after
    every call (part of what makes train_on_batch slower); here it stays in this holder, and the
    Keras variables are read (``read``) or written (``write``) only where something else uses them.
    """

    def __init__(self, model: Any, optimizer: Any = None) -> None:
        self._model = model
        self._optimizer = optimizer
        self.trainable: list[Any] = []
        self.non_trainable: list[Any] = []
        self.slots: list[Any] = []
        self.read()

    def _variables(self) -> tuple[list[Any], list[Any], list[Any]]:
        return (self._model.trainable_variables, self._model.non_trainable_variables,
                self._optimizer.variables if self._optimizer is not None else [])

    def read(self) -> None:
        """Take the state from the Keras variables."""
        self.trainable, self.non_trainable, self.slots = (
            [v.value for v in variables] for variables in self._variables())

    def write(self) -> None:
        """Put the state into the Keras variables, which hold it until the next train step donates it."""
        for variables, values in zip(self._variables(), (self.trainable, self.non_trainable, self.slots),
                                     strict=True):
            for variable, value in zip(variables, values, strict=True):
                variable.assign(value)


def _no_sync() -> None:
    return None


def _device_sync(backend: str, on_gpu: bool) -> Callable[[], None]:
    """Wait for queued device work; CPU work of TensorFlow and PyTorch is done when a call returns."""
    if not on_gpu:
        return _no_sync
    if backend == "torch":
        import torch

        return torch.cuda.synchronize
    import tensorflow as tf

    return tf.test.experimental.sync_devices  # type: ignore[no-any-return]


def _keras_train_step(model: Any, sync: Callable[[], None]) -> _Step:
    def run(x: Any, y: Any) -> Any:
        return model.train_on_batch(x, y, return_dict=False)  # the loss as NumPy: the step has finished

    return _Step(run, sync, "train_on_batch")


def _custom_train_step(model: Any, optimizer: Any, loss_fn: Any, sync: Callable[[], None]) -> _Step:
    """The train step of Keras' guides "Writing a training loop from scratch in JAX / TensorFlow /
    PyTorch": forward and loss, the backend's gradients, ``optimizer.apply``. Compiled once for the
    first batch's shapes and dtypes; later batches of the same ones reuse it."""
    keras = _keras()
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        optimizer.build(model.trainable_variables)

        def loss_and_state(trainable: list[Any], non_trainable: list[Any], x: Any, y: Any) -> tuple[Any, list[Any]]:
            logits, non_trainable, penalties = model.stateless_call(
                trainable, non_trainable, x, training=True, return_losses=True
            )
            loss = loss_fn(y, logits)
            for penalty in penalties:
                loss = loss + penalty
            return loss, non_trainable

        grad_fn = jax.value_and_grad(loss_and_state, has_aux=True)

        # The whole state is donated: XLA updates the parameters and optimizer slots in place.
        @functools.partial(jax.jit, donate_argnums=0)
        def train_step(state: tuple[list[Any], list[Any], list[Any]], x: Any, y: Any) -> tuple[Any, Any]:
            trainable, non_trainable, slots = state
            (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
            trainable, slots = optimizer.stateless_apply(slots, grads, trainable)
            return loss, (trainable, non_trainable, slots)

        state = _JaxState(model, optimizer)
        last: list[Any] = [None]  # the last loss

        def run_jax(x: Any, y: Any) -> Any:
            loss, (state.trainable, state.non_trainable, state.slots) = train_step(
                (state.trainable, state.non_trainable, state.slots), x, y)
            last[0] = loss
            return loss

        def sync_jax() -> None:
            # One XLA executable: its outputs, the loss among them, become ready together.
            if last[0] is not None:
                last[0].block_until_ready()

        return _Step(run_jax, sync_jax, "jax.jit", state)
    if backend == "tensorflow":
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

        return _Step(tf_step, sync, "tf.function+xla" if model.jit_compile else "tf.function")
    import torch

    weights = model.trainable_weights

    def run_torch(x: Any, y: Any) -> Any:
        loss = loss_fn(y, model(x, training=True))
        for penalty in model.losses:
            loss = loss + penalty
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            optimizer.apply([w.value.grad for w in weights], weights)
        return loss.detach()  # not the autograd graph, which would live as long as the loss

    return _Step(run_torch, sync, "eager")


def _keras_infer_step(model: Any, sync: Callable[[], None]) -> _Step:
    def run(x: Any) -> Any:
        return model.predict_on_batch(x)  # NumPy: the step has finished

    return _Step(run, sync, "predict_on_batch")


def _custom_infer_step(model: Any, sync: Callable[[], None], state: _JaxState | None = None) -> _Step:
    """A forward pass in inference mode, compiled the way the backend compiles Keras' predict step.

    Under JAX it reads the model's state from ``state``: that of a custom train step, which keeps
    it outside the Keras variables, or by default its own, read from them now."""
    keras = _keras()
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        held = state if state is not None else _JaxState(model)
        last: list[Any] = [None]  # the last logits

        @jax.jit
        def forward(trainable: list[Any], non_trainable: list[Any], x: Any) -> Any:
            return model.stateless_call(trainable, non_trainable, x, training=False)[0]

        def run_jax(x: Any) -> Any:
            last[0] = forward(held.trainable, held.non_trainable, x)
            return last[0]

        def sync_jax() -> None:
            if last[0] is not None:
                last[0].block_until_ready()

        return _Step(run_jax, sync_jax, "jax.jit", held)
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=bool(model.jit_compile))  # type: ignore[untyped-decorator]
        def tf_forward(x: Any) -> Any:
            return model(x, training=False)

        return _Step(tf_forward, sync, "tf.function+xla" if model.jit_compile else "tf.function")
    import torch

    def run_torch(x: Any) -> Any:
        with torch.no_grad():
            return model(x, training=False)

    return _Step(run_torch, sync, "eager")


# --------------------------------------------------------------------------------------------------
# Runner


class Runner:
    """A prepared model, its batch and its step; see base.Runner."""

    def __init__(
        self, model: Any, step: _Step, batch: tuple[Any, ...], image: bool, on_gpu: bool,
        scope: contextlib.ExitStack,
    ) -> None:
        self.model = model
        self._step = step
        self._batch = batch  # what the step runs on: (inputs, labels) to train, (inputs,) to infer
        self._image = image
        self._on_gpu = on_gpu
        self._scope = scope  # the device scope stays entered for the runner's life

    def step(self) -> None:
        self._step.run(*self._batch)

    def sync(self) -> None:
        self._step.sync()

    def trainable_params(self) -> int:
        return _count(self.model.trainable_weights)

    def parity(self) -> Parity:
        keras = _keras()
        backend = keras.backend.backend()
        details: dict[str, Any] = {
            "backend": backend,
            "keras_version": keras.__version__,
            "jit_compile": bool(self.model.jit_compile),  # Keras' own decision for this backend
            "step": self._step.execution,
            "image_data_format": keras.config.image_data_format(),
        }
        threads: int | None
        tf32: bool | None = None
        cudnn_benchmark: bool | None = None
        if backend == "jax":
            import jax

            threads = len(os.sched_getaffinity(0))
            details.update(threads_source="CPU affinity (JAX has no thread setting it obeys)",
                           jax_version=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS"),
                           device_kind=jax.devices()[0].device_kind)
            if self._on_gpu:
                # XLA's default precision for float32 dots on a GPU is TF32 unless asked otherwise.
                precision = jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]
                tf32 = precision in (None, "default", "tensorfloat32")
                details["matmul_precision"] = precision
        elif backend == "tensorflow":
            import tensorflow as tf

            threads = tf.config.threading.get_intra_op_parallelism_threads()
            details.update(threads_source="tf.config.threading intra-op",
                           interop_threads=tf.config.threading.get_inter_op_parallelism_threads(),
                           tensorflow_version=tf.__version__,
                           onednn=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 CPUs)"))
            if self._on_gpu:
                tf32 = bool(tf.config.experimental.tensor_float_32_execution_enabled())
        else:
            import torch

            threads = torch.get_num_threads()
            details.update(threads_source="torch.get_num_threads",
                           interop_threads=torch.get_num_interop_threads(), torch_version=torch.__version__,
                           mkldnn=torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
            if self._on_gpu:
                tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
                cudnn_benchmark = bool(torch.backends.cudnn.benchmark)
                details["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        return Parity(
            threads=threads,
            dtype=str(self.model.trainable_weights[0].dtype) if self.model.trainable_weights else None,
            layout="NHWC" if self._image else None,
            execution=self._step.execution,
            tf32=tf32,
            cudnn_benchmark=cudnn_benchmark,
            details=details,
        )


# --------------------------------------------------------------------------------------------------
# Verification: canonical weights in and out


Convert = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Binding:
    """One canonical parameter inside a Keras variable (``row``: its row of a stacked GRU bias)."""

    name: str
    variable: Any
    row: int | None
    to_keras: Convert
    to_canonical: Convert


def _same(value: np.ndarray) -> np.ndarray:
    return value


def _gates(source: str, target: str) -> Convert:
    return functools.partial(layout.reorder_gates, source=source, target=target)


def _rows(chw: Shape, inverse: bool) -> Convert:
    def convert(value: np.ndarray) -> np.ndarray:
        if value.ndim == 1:  # a batch norm vector over the flattened features
            return layout.flattened_rows_channels_last(value[:, None], chw, inverse=inverse)[:, 0]
        return layout.flattened_rows_channels_last(value, chw, inverse=inverse)

    return convert


def _bindings(network: Network, builder: _Builder) -> list[_Binding]:
    bindings = []
    conv_from = functools.partial(layout.conv_kernel_hwio, inverse=True)
    gru_to, gru_from = _gates(layout.GRU_CANONICAL, layout.GRU_KERAS), _gates(layout.GRU_KERAS, layout.GRU_CANONICAL)
    for path, layer, shape in walk(network.layers, network.input_shape):
        keras_layers = builder.layers.get(path, [])
        for spec in layer_params(path, layer, shape):
            role, suffix = spec.role, spec.name[len(path) + 1:]
            to_keras: Convert = _same
            to_canonical: Convert = _same
            row: int | None = None
            if isinstance(layer, LSTM | GRU):
                cell = keras_layers[int(suffix.split(".")[0].removeprefix("layer"))].cell
                variable = {"input_kernel": cell.kernel, "recurrent_kernel": cell.recurrent_kernel}.get(role, cell.bias)
                if isinstance(layer, GRU):
                    to_keras, to_canonical = gru_to, gru_from
                    row = {"input_bias": 0, "recurrent_bias": 1}.get(role)
            else:
                keras_layer = keras_layers[0]
                attribute = {"kernel": "kernel", "bias": "bias", "gamma": "gamma", "beta": "beta",
                             "table": "embeddings"}[role]
                variable = getattr(keras_layer, attribute)
                if isinstance(layer, Conv2D) and role == "kernel":
                    to_keras, to_canonical = layout.conv_kernel_hwio, conv_from
                elif path in builder.flattened and role != "bias":
                    chw = builder.flattened[path]
                    to_keras, to_canonical = _rows(chw, inverse=False), _rows(chw, inverse=True)
            bindings.append(_Binding(spec.name, variable, row, to_keras, to_canonical))
    return bindings


def _norms(builder: _Builder) -> list[Any]:
    """The model's batch norm layers, whose running statistics restart with every load."""
    keras = _keras()
    return [held[0] for held in builder.layers.values() if isinstance(held[0], keras.layers.BatchNormalization)]


def _load_canonical(bindings: list[_Binding], norms: list[Any], weights: dict[str, np.ndarray], device: str) -> None:
    """Assign canonical weights to the Keras variables; batch norm's running statistics restart at
    mean 0, variance 1. A GRU's stacked bias takes two canonical rows: the variable is read first."""
    keras = _keras()
    values: dict[int, np.ndarray] = {}
    for binding in bindings:
        key = id(binding.variable)
        if key not in values:
            values[key] = np.array(keras.ops.convert_to_numpy(binding.variable))
        converted = binding.to_keras(weights[binding.name])
        if binding.row is None:
            values[key] = converted
        else:
            values[key][binding.row] = converted
    with keras.device(device):
        for binding in bindings:
            binding.variable.assign(values[id(binding.variable)])
        for norm in norms:
            norm.moving_mean.assign(np.zeros(norm.moving_mean.shape, norm.moving_mean.dtype))
            norm.moving_variance.assign(np.ones(norm.moving_variance.shape, norm.moving_variance.dtype))


class Checker:
    """The network in inference mode with canonical weights; see base.Checker."""

    def __init__(self, workload: Workload, device: str, precision: str) -> None:
        keras = _keras()
        self.network, self.recipe = workload.network, workload.recipe
        self._device = device
        self._dtype = precision
        with keras.device(device):
            builder = _Builder(init=None, weight_decay=0.0, dtype=precision)
            self.model = builder.model(self.network)
        self.bindings = _bindings(self.network, builder)
        self.norms = _norms(builder)
        self.loss_fn = make_loss(self.network, self.recipe)

    def trainable_params(self) -> int:
        return _count(self.model.trainable_weights)

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        _load_canonical(self.bindings, self.norms, weights, self._device)

    def _canonical(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Canonical values from arrays aligned with ``model.trainable_variables``."""
        index = {id(variable): i for i, variable in enumerate(self.model.trainable_variables)}
        out = {}
        for binding in self.bindings:
            value = arrays[index[id(binding.variable)]]
            piece = value[binding.row] if binding.row is not None else value
            out[binding.name] = np.ascontiguousarray(binding.to_canonical(np.asarray(piece))).copy()
        return out

    def export_weights(self) -> dict[str, np.ndarray]:
        keras = _keras()
        return self._canonical([keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables])

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        keras = _keras()
        x = _to_keras_inputs(self.network, inputs, self._dtype)
        with keras.device(self._device):
            if keras.backend.backend() == "jax":
                import jax

                # Eager JAX compiles every op on its own; one jit of the whole forward is far quicker.
                forward = jax.jit(lambda trainable, non_trainable, x: self.model.stateless_call(
                    trainable, non_trainable, x, training=False)[0])
                logits = forward(*self._jax_state(), x)
            else:
                logits = self.model(x, training=False)
        return np.asarray(keras.ops.convert_to_numpy(logits))

    def _jax_state(self) -> tuple[list[Any], list[Any]]:
        return ([v.value for v in self.model.trainable_variables],
                [v.value for v in self.model.non_trainable_variables])

    def loss_and_gradients(self, inputs: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """The backend's own autodiff of the recipe's loss through the model in inference mode."""
        keras = _keras()
        x, y = _to_keras_inputs(self.network, inputs, self._dtype), labels.astype(np.int32)
        model, loss_fn, variables = self.model, self.loss_fn, self.model.trainable_variables
        backend = keras.backend.backend()
        with keras.device(self._device):
            if backend == "jax":
                import jax

                trainable, non_trainable = self._jax_state()

                def loss_of(trainable: list[Any]) -> Any:
                    logits, _ = model.stateless_call(trainable, non_trainable, x, training=False)
                    return loss_fn(y, logits)

                loss, grads = jax.jit(jax.value_and_grad(loss_of))(trainable)
            elif backend == "tensorflow":
                import tensorflow as tf

                with tf.GradientTape() as tape:
                    loss = loss_fn(y, model(x, training=False))
                grads = tape.gradient(loss, variables)
            else:
                model.zero_grad()
                x_t, y_t = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
                loss = loss_fn(y_t, model(x_t, training=False))
                loss.backward()
                grads = [v.value.grad for v in variables]
        arrays = [np.zeros(v.shape, v.dtype) if g is None else keras.ops.convert_to_numpy(g)
                  for v, g in zip(variables, grads, strict=True)]
        return float(keras.ops.convert_to_numpy(loss)), self._canonical(arrays)


# --------------------------------------------------------------------------------------------------
# Accuracy: the train step fed real batches


class Trainer(Runner):
    """The train runner's step fed real batches, and an inference step to test with; see base.Trainer.

    Both steps are the ones the train and infer scenarios time (``TRAIN_LOOP``, ``INFER_PATH``),
    each compiled once for the fixed batch size. Keras passes ``training`` to every call, so there
    is no mode to switch back after ``predict``.
    """

    def __init__(
        self, runner: Runner, infer: _Step, network: Network, bindings: list[_Binding], norms: list[Any],
        device: str,
    ) -> None:
        super().__init__(runner.model, runner._step, runner._batch, runner._image, runner._on_gpu, runner._scope)
        self._infer = infer
        self._network = network
        self._bindings = bindings
        self._norms = norms
        self._device = device

    def _tensors(self, inputs: np.ndarray, labels: np.ndarray | None = None) -> tuple[Any, ...]:
        """Canonical arrays as tensors on the device, in the dtypes of the synthetic batch the steps
        were built for (int32 labels and token ids)."""
        convert = _keras().ops.convert_to_tensor
        x = convert(_to_keras_inputs(self._network, inputs, "float32"))
        return (x,) if labels is None else (x, convert(labels.astype(np.int32)))

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        state = self._step.state
        if state is not None:
            state.write()  # the Keras variables may hold arrays a step has donated since
        _load_canonical(self._bindings, self._norms, weights, self._device)
        if state is not None:
            state.read()

    def train_step(self, inputs: np.ndarray, labels: np.ndarray) -> Any:
        return self._step.run(*self._tensors(inputs, labels))

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        # Under JAX a custom step keeps the state outside the Keras variables (a custom forward
        # shares the custom train step's); where only one step does, the state crosses over.
        trained, read = self._step.state, self._infer.state
        if read is not None and trained is None:
            read.read()  # train_on_batch keeps the trained state in the variables
        if trained is not None and read is None:
            # predict_on_batch takes the state from the variables, donates it to its jitted step
            # and puts the new arrays back: the custom train step must take those.
            trained.write()
            logits = self._infer.run(*self._tensors(inputs))
            trained.read()
        else:
            logits = self._infer.run(*self._tensors(inputs))
        return np.asarray(_keras().ops.convert_to_numpy(logits))

    def parity(self) -> Parity:
        parity = super().parity()
        parity.details["predict"] = self._infer.execution
        return parity


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


class Backend:
    """Keras 3 on one backend; the backend is fixed for the process by the first keras import."""

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

    def _device(self, name: str) -> str:
        """The Keras device name for a cell's device.

        The torch backend gets torch's own names: under ``keras.device("cpu:0")`` it moves each new
        parameter ``.to("cpu:0")``, which torch treats as another device and answers with a copy
        that is no longer a leaf parameter (no gradients, and integer states fail to register).
        """
        torch_names = self.backend == "torch"
        if name == "cuda":
            if not self._gpu_visible():
                raise Unavailable(f"Keras' {self.backend} backend sees no GPU")
            return "cuda" if torch_names else "gpu:0"
        if name == "cpu":
            return "cpu" if torch_names else "cpu:0"
        raise Unsupported(f"the Keras backend runs on {' or '.join(DEVICES)}, not {name!r}")

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

    def checker(self, workload: Workload, device: str, precision: str = "float32") -> Checker:
        require_check_precision(precision, "Keras")
        if precision == "float64":
            _compute_in_float64(self.backend)
        return Checker(workload, self._device(device), precision)

    def prepare(self, request: StepRequest) -> Runner:
        return self._prepare(request)[0]

    def trainer(self, request: StepRequest) -> Trainer:
        """The train runner, fed real batches, with the infer scenario's step to test with."""
        runner, builder = self._prepare(replace(request, scenario="train"))
        sync = _device_sync(self.backend, request.device == "cuda")
        # Under JAX a custom forward reads the state the custom train step holds, not a copy of it.
        infer = self._infer_step(runner.model, sync, runner._step.state)
        network = request.workload.network
        return Trainer(runner, infer, network, _bindings(network, builder), _norms(builder),
                       self._device(request.device))

    def _prepare(self, request: StepRequest) -> tuple[Runner, _Builder]:
        """The runner, and the builder that knows where each canonical parameter lives in its model."""
        require(request, "Keras")
        device = self._device(request.device)
        keras = _keras()
        network, recipe = request.workload.network, request.workload.recipe
        # Not keras.utils.set_random_seed: it imports TensorFlow whatever the backend. Every Keras
        # initializer and dropout layer built without a seed draws one from Python's random module,
        # except that the torch backend's dropout without a seed draws its masks from torch's own.
        random.seed(request.seed)
        if self.backend == "torch":
            import torch

            torch.manual_seed(request.seed)
        # A worker runs one cell: the device scope stays entered while its steps run, and is left
        # at exit, before the interpreter tears down the modules its context manager needs.
        scope = contextlib.ExitStack()
        scope.enter_context(keras.device(device))
        atexit.register(scope.close)
        train = request.scenario == "train"
        builder = _Builder(recipe.init, recipe.optimizer.weight_decay if train else 0.0)
        model = builder.model(network)
        optimizer, loss_fn = make_optimizer(recipe), make_loss(network, recipe)
        model.compile(optimizer=optimizer, loss=loss_fn, jit_compile="auto")
        inputs, labels = synthetic_batch(network, request.batch_size, request.seed)
        on_gpu = request.device == "cuda"
        sync = _device_sync(self.backend, on_gpu)
        batch: tuple[Any, ...] = (inputs, labels) if train else (inputs,)
        if not train:
            step = self._infer_step(model, sync)
        elif self.train_loop == "train_on_batch":
            step = _keras_train_step(model, sync)
        else:
            step = _custom_train_step(model, optimizer, loss_fn, sync)
        return Runner(model, step, batch, network.input_kind == "image", on_gpu, scope), builder

    def _infer_step(self, model: Any, sync: Callable[[], None], state: _JaxState | None = None) -> _Step:
        if self.infer_path == "predict_on_batch":
            return _keras_infer_step(model, sync)
        return _custom_infer_step(model, sync, state)
