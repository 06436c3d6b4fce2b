"""Keras 2.3.1 on one of its own backends (``keras2-theano``: Karmanov's and Shatnawi's "Keras (Theano)").

The network is a functional ``keras.models.Model`` of Keras 2 layers, compiled with a
``keras.optimizers`` optimizer and the loss; the timed steps are Keras' own ``train_on_batch`` and
``predict_on_batch`` (what those studies timed), the checker's gradients come from ``K.gradients``
under one ``K.function``. Everything that depends on the backend goes through ``HOOKS[backend]``
(configuration before import, the backend's float type, thread read-back, whether its ``conv2d``
flips kernels), so that another Keras 2 backend (CNTK) is one more entry there; the rest of this
module speaks only Keras' backend-neutral API (``keras.backend``).

Choices, each because the spec asks for it:

* Images stay channels-first (``data_format="channels_first"`` on every image layer): Theano's and
  CNTK's own layout, so no transposes in the graph. Kernels are Keras' ``(kh, kw, in, out)`` whatever
  the data format. ``Flatten`` is given ``data_format="channels_last"``, which means "flatten as the
  tensor lies": with ``channels_first`` Keras 2.3 would first permute to channels-last order.
* Keras 2's Theano ``conv2d`` is a true convolution (Theano's ``filter_flip``); the spec's is a
  cross-correlation, so the kernel is stored flipped in height and width (``read``/``write``).
* Padding Keras' ``"same"``/``"valid"`` cannot express: ``ZeroPadding2D`` before a convolution or an
  average pool (the padded zeros then count in the average, as the spec wants), and minus-infinity
  padding before a max pool (``_neg_inf_padding_class``), so that a padded position never wins.
* ``BatchNormalization``'s momentum is the weight of the old running statistic: ``1 - momentum``.
* ``LSTM`` has one bias per gate in the order ``i, f, c, o``; ``unit_forget_bias=False`` because the
  starting weights come from the kernel. ``GRU(reset_after=True)`` is the spec's cuDNN form, with its
  two biases as the rows of one ``(2, 3H)`` bias and the gates in Keras' order ``z, r, h``.
* The loss is the summed softmax cross-entropy written with ``K.logsumexp``: Keras 2's own
  ``sparse_categorical_crossentropy(from_logits=True)`` on Theano takes the softmax and clips
  probabilities to [1e-7, 1 - 1e-7], which changes loss and gradients wherever a probability is that
  small. ``clipnorm`` is global-norm clipping in Keras 2 (one norm over every gradient).
"""

from __future__ import annotations

import collections
import collections.abc
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlarena.frameworks import kernel, layout, theano_setup
from dlarena.frameworks.base import Parity, Unsupported
from dlarena.spec import Workload
from dlarena.spec import layers as spec

SPELLING: kernel.OptimizerSpelling = {
    "sgd": ("SGD", {"lr": "learning_rate"}),
    "sgd_momentum": ("SGD", {"lr": "learning_rate", "momentum": "momentum", "nesterov": "nesterov"}),
    "adam": ("Adam", {"lr": "learning_rate", "beta1": "beta_1", "beta2": "beta_2", "eps": "epsilon"}),
    "rmsprop": ("RMSprop", {"lr": "learning_rate", "rho": "rho", "eps": "epsilon"}),
    "adadelta": ("Adadelta", {"lr": "learning_rate", "rho": "rho", "eps": "epsilon"}),
}


@dataclass(frozen=True)
class Hooks:
    """What differs between Keras 2 backends."""

    configure: Callable[[int], None]  # before keras (and so the backend) is imported, given the threads
    set_precision: Callable[[str], None]  # the backend's own default float type, besides Keras' floatx
    threads: Callable[[], tuple[int | None, dict[str, Any]]]  # threads and parity details, read back
    version: Callable[[], str]
    flips_kernels: bool  # its conv2d is a true convolution (the kernel is stored flipped)


def _theano_configure(threads: int) -> None:
    theano_setup.configure(threads)
    theano_setup.require_compiler()


def _theano_precision(precision: str) -> None:
    # Keras' Theano backend makes some constants in Theano's floatX (the zeros of ZeroPadding2D).
    import theano

    theano.config.floatX = precision


def _theano_threads() -> tuple[int | None, dict[str, Any]]:
    threads, source = theano_setup.blas_threads()
    return threads, {"threads_source": source, **theano_setup.config_record()}


HOOKS: dict[str, Hooks] = {
    "theano": Hooks(_theano_configure, _theano_precision, _theano_threads,
                    lambda: f"Theano {theano_setup.theano_version()}", flips_kernels=True),
}


def _filled(value: float) -> Callable[..., np.ndarray]:
    """An initializer giving a NumPy array (the kernel loads the starting weights anyway). Keras' own
    ``"zeros"`` makes a backend constant that ``K.variable`` then evaluates: on Theano a compiled
    function per weight, which made building resnet50-small take 378 s instead of 5 s."""
    return lambda shape, dtype=None: np.full(shape, value, dtype)


_zeros, _ones = _filled(0.0), _filled(1.0)


def _keras() -> Any:
    """The keras module, imported by ``Backend.__init__`` once the backend was configured."""
    import keras

    return keras


@functools.cache
def _neg_inf_padding_class() -> type:
    """A channels-first layer padding H and W with minus infinity (blocks concatenated on each side),
    so that a padded position never wins a max pool. The blocks are ``zeros_like(...) - inf``: no
    product with infinity, so the gradient through them is zero, not NaN."""
    keras = _keras()
    K = keras.backend

    class NegInfPadding2D(keras.layers.Layer):  # type: ignore[misc,name-defined]
        def __init__(self, padding: tuple[int, int], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.padding = padding

        def call(self, x: Any) -> Any:
            ph, pw = self.padding
            if ph:
                block = K.zeros_like(x[:, :, :ph, :]) - np.inf
                x = K.concatenate([block, x, block], axis=2)
            if pw:
                block = K.zeros_like(x[:, :, :, :pw]) - np.inf
                x = K.concatenate([block, x, block], axis=3)
            return x

        def compute_output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
            ph, pw = self.padding
            batch, channels, height, width = shape
            return (batch, channels, None if height is None else height + 2 * ph,
                    None if width is None else width + 2 * pw)

    return NegInfPadding2D


class _Builder:
    """The spec's layers with the functional API; ``handles`` maps each canonical parameter name to
    ``(weight variable, row or None, flipped)``: a GRU's two biases are rows 0 and 1 of one weight."""

    def __init__(self, flips_kernels: bool, dtype: np.dtype[Any]) -> None:
        self.keras, self.flips, self.dtype = _keras(), flips_kernels, dtype
        self.handles: dict[str, tuple[Any, int | None, bool]] = {}
        self.norms: list[Any] = []

    def sequence(self, layers: tuple[spec.Layer, ...], x: Any, shape: spec.Shape, prefix: str) -> Any:
        index = 0
        while index < len(layers):
            layer, follower = layers[index], layers[index + 1] if index + 1 < len(layers) else None
            # Keras' idiom: the activation is the Dense or Conv2D layer's own ``activation``.
            fold = isinstance(layer, (spec.Dense, spec.Conv2D)) and isinstance(follower, spec.Activation)
            activation = follower.function if fold and isinstance(follower, spec.Activation) else None
            x = self.layer(layer, x, shape, f"{prefix}{index}", activation)
            shape = layer.out_shape(shape)
            index += 2 if fold else 1
        return x

    def layer(self, layer: spec.Layer, x: Any, shape: spec.Shape, path: str, activation: str | None) -> Any:
        kl = self.keras.layers
        zeros = {"kernel_initializer": _zeros, "bias_initializer": _zeros}
        if isinstance(layer, spec.Dense):
            dense = kl.Dense(layer.units, activation=activation, use_bias=layer.bias, **zeros)
            x = dense(x)
            self._bind(path, dense, layer.bias, flipped=False)
            return x
        if isinstance(layer, spec.Conv2D):
            kernel, stride, padding = spec.pair(layer.kernel), spec.pair(layer.stride), spec.pair(layer.padding)
            mode = "valid"
            if stride == (1, 1) and all(2 * p == k - 1 for k, p in zip(kernel, padding, strict=True)):
                mode = "same"  # stride 1 and k = 2p + 1: "same" pads p on both sides, the spec's padding
            elif padding != (0, 0):
                x = kl.ZeroPadding2D(padding, data_format="channels_first")(x)
            conv = kl.Conv2D(layer.filters, kernel, strides=stride, padding=mode, data_format="channels_first",
                             activation=activation, use_bias=layer.bias, **zeros)
            x = conv(x)
            self._bind(path, conv, layer.bias, flipped=self.flips)
            return x
        if isinstance(layer, (spec.MaxPool2D, spec.AvgPool2D)):
            kernel, padding = spec.pair(layer.kernel), spec.pair(layer.padding)
            stride = spec.pair(layer.stride if layer.stride is not None else layer.kernel)
            if isinstance(layer, spec.MaxPool2D):
                if padding != (0, 0):
                    x = _neg_inf_padding_class()(padding)(x)
                return kl.MaxPooling2D(kernel, stride, "valid", data_format="channels_first")(x)
            if padding != (0, 0):
                x = kl.ZeroPadding2D(padding, data_format="channels_first")(x)
            return kl.AveragePooling2D(kernel, stride, "valid", data_format="channels_first")(x)
        if isinstance(layer, spec.GlobalAvgPool2D):
            return kl.GlobalAveragePooling2D(data_format="channels_first")(x)
        if isinstance(layer, spec.BatchNorm):
            norm = kl.BatchNormalization(axis=1, momentum=1.0 - layer.momentum, epsilon=self._epsilon(layer.eps),
                                         beta_initializer=_zeros, gamma_initializer=_ones,
                                         moving_mean_initializer=_zeros, moving_variance_initializer=_ones)
            x = norm(x)
            self.handles[f"{path}.gamma"] = (norm.gamma, None, False)
            self.handles[f"{path}.beta"] = (norm.beta, None, False)
            self.norms.append(norm)
            return x
        if isinstance(layer, spec.Activation):
            return kl.Activation(layer.function)(x)
        if isinstance(layer, spec.Dropout):
            return kl.Dropout(layer.rate)(x)
        if isinstance(layer, spec.Flatten):
            return kl.Flatten(data_format="channels_last")(x)  # as the tensor lies: (C, H, W) order
        if isinstance(layer, spec.Embedding):
            embedding = kl.Embedding(layer.vocab, layer.dim, embeddings_initializer=_zeros)
            x = embedding(x)
            self.handles[f"{path}.table"] = (embedding.embeddings, None, False)
            return x
        if isinstance(layer, (spec.LSTM, spec.GRU)):
            for k in range(layer.layers):
                common = dict(return_sequences=layer.return_sequences or k < layer.layers - 1,
                              activation="tanh", recurrent_activation="sigmoid", kernel_initializer=_zeros,
                              recurrent_initializer=_zeros, bias_initializer=_zeros)
                if isinstance(layer, spec.LSTM):
                    cell = kl.LSTM(layer.hidden, unit_forget_bias=False, **common)
                else:
                    cell = kl.GRU(layer.hidden, reset_after=True, **common)
                x = cell(x)
                name = f"{path}.layer{k}"
                self.handles[f"{name}.input_kernel"] = (cell.cell.kernel, None, False)
                self.handles[f"{name}.recurrent_kernel"] = (cell.cell.recurrent_kernel, None, False)
                if isinstance(layer, spec.LSTM):
                    self.handles[f"{name}.bias"] = (cell.cell.bias, None, False)
                else:
                    self.handles[f"{name}.input_bias"] = (cell.cell.bias, 0, False)
                    self.handles[f"{name}.recurrent_bias"] = (cell.cell.bias, 1, False)
            return x
        if isinstance(layer, spec.Residual):
            body = self.sequence(layer.body, x, shape, f"{path}.body.")
            shortcut = self.sequence(layer.shortcut, x, shape, f"{path}.shortcut.") if layer.shortcut else x
            return kl.Add()([body, shortcut])
        if isinstance(layer, spec.Concat):
            return kl.Concatenate(axis=1)([self.sequence(branch, x, shape, f"{path}.branches.{i}.")
                                          for i, branch in enumerate(layer.branches)])
        raise Unsupported(f"the keras2 module has no mapping for the layer type {type(layer).__name__}")

    def _epsilon(self, eps: float) -> float:
        """``eps`` as the smallest value of the model's precision not below it. Theano's batch-norm ops
        round epsilon to floatX and refuse one under 1e-5 (a cuDNN limit): float32(1e-5) rounds down
        to 9.99999975e-06, so the spec's 1e-5 is passed as the float32 one ulp above (1.00000007e-05,
        which moves a normalised value by under 4e-13 relative). In float64, 1e-5 stays as it is."""
        value = self.dtype.type(eps)
        return float(np.nextafter(value, self.dtype.type(np.inf)) if value < eps else value)

    def _bind(self, path: str, owner: Any, bias: bool, flipped: bool) -> None:
        self.handles[f"{path}.kernel"] = (owner.kernel, None, flipped)
        if bias:
            self.handles[f"{path}.bias"] = (owner.bias, None, False)


class Model(kernel.Model):
    # Channels-first images; Keras kernels (kh, kw, in, out) whatever the data format; GRU gates z, r, h.
    conventions = kernel.Conventions(conv_kernel="hwio", gru_gates=layout.GRU_KERAS)

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool,
                 backend: str = "theano") -> None:
        super().__init__(workload, precision, device, batch_size, training)
        keras, self.hooks = _keras(), HOOKS[backend]
        K = self.K = keras.backend
        K.set_floatx(precision)
        self.hooks.set_precision(precision)
        network = self.network
        tokens = network.input_kind == "tokens"
        inputs = keras.layers.Input(shape=network.input_shape, dtype="int32" if tokens else precision)
        builder = _Builder(self.hooks.flips_kernels, self.dtype)
        self.model = keras.models.Model(inputs, builder.sequence(network.layers, inputs, network.input_shape, ""))
        self.handles, self.norms = builder.handles, builder.norms
        self._gradients_fn: Any = None
        if training:
            name, arguments = kernel.optimizer_arguments(self.recipe.optimizer, SPELLING, "keras2")
            if self.recipe.grad_clip_norm is not None:
                arguments["clipnorm"] = self.recipe.grad_clip_norm  # one norm over every gradient
            self.model.compile(optimizer=getattr(keras.optimizers, name)(**arguments), loss=self._loss)

    def _loss(self, y_true: Any, y_pred: Any) -> Any:
        """Per sample: the summed softmax cross-entropy of its label positions over
        ``loss_divisor(batch 1)``; Keras averages it over the batch. Labels come as ``(..., 1)``."""
        K = self.K
        labels = K.cast(y_true[..., 0], "int32")
        entropy = K.logsumexp(y_pred, axis=-1) - K.sum(K.one_hot(labels, self.network.classes) * y_pred, axis=-1)
        if K.ndim(entropy) > 1:
            entropy = K.sum(entropy, axis=list(range(1, K.ndim(entropy))))
        return entropy / kernel.loss_divisor(self.network, self.recipe, 1)

    def bindings(self) -> list[kernel.Binding]:
        return self.bind(self.handles)

    def read(self, handle: Any) -> np.ndarray:
        variable, row, flipped = handle
        value = self.K.get_value(variable)
        value = value[row] if row is not None else value
        return np.ascontiguousarray(value[::-1, ::-1] if flipped else value)

    def write(self, handle: Any, value: np.ndarray) -> None:
        variable, row, flipped = handle
        value = value[::-1, ::-1] if flipped else value
        if row is not None:
            whole = self.K.get_value(variable).copy()
            whole[row] = value
            value = whole
        self.K.set_value(variable, np.ascontiguousarray(value))

    def reset_statistics(self) -> None:
        for norm in self.norms:
            self.K.set_value(norm.moving_mean, np.zeros(self.K.int_shape(norm.moving_mean), self.dtype))
            self.K.set_value(norm.moving_variance, np.ones(self.K.int_shape(norm.moving_variance), self.dtype))

    def logits(self, inputs: Any) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(inputs))

    def gradients(self, inputs: Any, labels: Any) -> tuple[float, dict[str, np.ndarray]]:
        K = self.K
        names = list(self.handles)
        variables = list(dict.fromkeys(self.handles[name][0] for name in names))  # a GRU bias appears twice
        if self._gradients_fn is None:
            target = K.placeholder(ndim=K.ndim(self.model.output))
            loss = K.mean(self._loss(target, self.model.output))
            self._gradients_fn = K.function([self.model.input, target, K.learning_phase()],
                                            [loss, *K.gradients(loss, variables)])
        loss, *values = self._gradients_fn([inputs, labels[..., np.newaxis], 0])  # learning phase 0: inference
        by_variable = dict(zip(variables, values, strict=True))
        found = {}
        for name in names:
            variable, row, flipped = self.handles[name]
            value = by_variable[variable]
            value = value[row] if row is not None else value
            found[name] = np.ascontiguousarray(value[::-1, ::-1] if flipped else value)
        return float(loss), found

    def train_step(self, inputs: Any, labels: Any) -> Any:
        return self.model.train_on_batch(inputs, labels[..., np.newaxis])

    def infer_step(self, inputs: Any) -> Any:
        return self.model.predict_on_batch(inputs)

    def trainable_params(self) -> int:
        return int(sum(self.K.count_params(weight) for weight in self.model.trainable_weights))

    def parity(self) -> Parity:
        threads, details = self.hooks.threads()
        return Parity(threads=threads, execution="graph", details=details)


def _collections_shim() -> None:
    """Keras 2.3 does ``from collections import Iterable`` (and Mapping, ...): those names moved to
    ``collections.abc`` in Python 3.3 and left ``collections`` in 3.10. Copying them back before
    ``import keras`` lets Keras 2.3.1 run unchanged on the environment's Python 3.11."""
    for name in collections.abc.__all__:
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


class Backend(kernel.KernelBackend):
    name = "keras2"
    model_class = Model

    def __init__(self, threads: int, backend: str = "theano", **options: Any) -> None:
        if backend not in HOOKS:
            raise Unsupported(f"the keras2 module knows the Keras 2 backends {', '.join(HOOKS)}, not {backend!r}")
        self.backend = backend
        self.name = f"keras2-{backend}"
        HOOKS[backend].configure(threads)  # before the backend is imported
        os.environ["KERAS_BACKEND"] = backend  # Keras 2 reads it at import (the registry sets it too)
        super().__init__(threads, backend=backend, **options)
        _collections_shim()
        keras = _keras()
        if keras.backend.backend() != backend:
            raise Unsupported(f"Keras runs on {keras.backend.backend()}, not {backend}: it was imported before")

    def version(self) -> str:
        return f"{_keras().__version__} ({HOOKS[self.backend].version()})"

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        K = _keras().backend
        left, right = K.placeholder(ndim=2, dtype=str(a.dtype)), K.placeholder(ndim=2, dtype=str(b.dtype))
        return np.asarray(K.function([left, right], [K.dot(left, right)])([a, b])[0])
