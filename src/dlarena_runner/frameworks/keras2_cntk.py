"""Keras 2.3.1 on its CNTK backend (``keras2-cntk``: Karmanov's "Keras (CNTK)").

Runs in the ``cntk`` environment (Python 3.6) under ``dlarena_runner.job_worker``, with
``KERAS_BACKEND=cntk`` (the registry's variables; set here too before Keras is imported). The network
is a functional ``keras.models.Model`` of Keras 2 layers compiled with a ``keras.optimizers``
optimizer; the timed steps are Keras' own ``train_on_batch`` and ``predict_on_batch``, as in the
Theano-backend module (``dlarena.frameworks.keras2``), whose choices this one shares: channels-first
images, ``Flatten(data_format="channels_last")`` (flatten as the tensor lies), explicit zero or
minus-infinity padding where ``"same"``/``"valid"`` cannot express the spec's, batch norm's momentum
as ``1 - momentum``, ``LSTM(unit_forget_bias=False)``, ``GRU(reset_after=True)``, and the loss as a
``logsumexp`` softmax cross-entropy. What differs on CNTK:

* CNTK's convolution is a cross-correlation, as the spec's: kernels are not flipped.
* Training runs in float32 only: Keras' CNTK optimizers make float32 gradient placeholders and
  constants whatever ``floatx`` says (float64 steps fail with a data-type error), and float32 is what
  the timed cells run. Keras' ``clipnorm`` is refused (see ``Model.__init__``).
* Recurrent layers are unrolled (``unroll=True``: Keras' loop over the fixed number of time steps).
  Keras' CNTK ``rnn`` with CNTK's own recurrence loop computes another function: an LSTM's first
  step from zero state already differs from the formula by 0.4, while the same cell called outside the
  loop and the unrolled layer agree with it to 3e-8 (measured; keras-team/keras#14653 reports the same).
* ``K.gradients`` on CNTK returns placeholders that only its trainer fills, so the checker's
  gradients come from CNTK itself: ``Function.grad`` of the same loss expression, with respect to the
  Keras weights, which are CNTK parameters.
"""

import os
import warnings
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import numpy as np

from dlarena_runner.model import Layer, Unsupported
from dlarena_runner.model import Model as BaseModel

os.environ.setdefault("KERAS_BACKEND", "cntk")
with warnings.catch_warnings():
    # CNTK warns at import that Debian is not Ubuntu and that the GPU libraries are missing, and
    # Keras that CNTK runs without a GPU: all true, none matters to a CPU run.
    warnings.simplefilter("ignore")
    import cntk as C
    import keras

K = keras.backend
C.device.try_set_default_device(C.device.cpu())

# recipe optimizer -> (Keras optimizer, {recipe field: its keyword}); "sgd_momentum" for SGD with momentum.
SPELLING = {
    "sgd": ("SGD", {"lr": "learning_rate"}),
    "sgd_momentum": ("SGD", {"lr": "learning_rate", "momentum": "momentum", "nesterov": "nesterov"}),
    "adam": ("Adam", {"lr": "learning_rate", "beta1": "beta_1", "beta2": "beta_2", "eps": "epsilon"}),
    "rmsprop": ("RMSprop", {"lr": "learning_rate", "rho": "rho", "eps": "epsilon"}),
    "adadelta": ("Adadelta", {"lr": "learning_rate", "rho": "rho", "eps": "epsilon"}),
}
_FIELDS = {"sgd": ("lr", "momentum", "nesterov", "weight_decay"),
           "adam": ("lr", "beta1", "beta2", "eps", "weight_decay"),
           "adadelta": ("lr", "rho", "eps", "weight_decay"), "rmsprop": ("lr", "rho", "eps", "weight_decay")}
_DEFAULTS = {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.999, "rho": 0.9,
             "eps": 1e-8}


def version() -> str:
    from dlarena_runner.frameworks.cntk_layers import version as cntk_version

    return f"{keras.__version__} (CNTK {cntk_version()})"


def set_threads(threads: int) -> Optional[int]:
    C.cntk_py.set_max_num_cputhreads(threads)
    return int(C.cntk_py.get_max_num_cputhreads())


def denormal_product(a: Any, b: Any) -> Any:
    left, right = K.placeholder(ndim=2, dtype=str(a.dtype)), K.variable(b, dtype=str(b.dtype))
    return np.asarray(K.function([left], [K.dot(left, right)])([a])[0])


def optimizer_arguments(optimizer: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """The Keras optimizer and its keyword arguments; a recipe field Keras lacks must be at its default."""
    name = optimizer["name"]
    key = "sgd_momentum" if name == "sgd" and optimizer.get("momentum") else name
    keras_name, keywords = SPELLING[key]
    arguments = {}
    for field in _FIELDS[name]:
        value = optimizer.get(field, _DEFAULTS.get(field))
        if field in keywords:
            arguments[keywords[field]] = value
        elif value != _DEFAULTS[field]:
            raise Unsupported(f"keras2-cntk's {keras_name} has no {field} setting, and the recipe sets it to {value}")
    return keras_name, arguments


def _filled(value: float) -> Any:
    return lambda shape, dtype=None: np.full(shape, value, dtype)


_zeros, _ones = _filled(0.0), _filled(1.0)
_NEG_INF_PADDING: List[Any] = []


def _neg_inf_padding(padding: Tuple[int, int]) -> Any:
    """A channels-first layer padding H and W with minus infinity (a padded position never wins a
    max pool): blocks of ``zeros_like(...) - inf`` concatenated on each side."""
    if not _NEG_INF_PADDING:
        class NegInfPadding2D(keras.layers.Layer):  # type: ignore[misc]
            def __init__(self, padding: Tuple[int, int], **kwargs: Any) -> None:
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

            def compute_output_shape(self, shape: Any) -> Any:
                ph, pw = self.padding
                batch, channels, height, width = shape
                return (batch, channels, None if height is None else height + 2 * ph,
                        None if width is None else width + 2 * pw)

        _NEG_INF_PADDING.append(NegInfPadding2D)
    return _NEG_INF_PADDING[0](padding)


class _Builder:
    """The spec's layers with Keras' functional API; ``handles``: canonical name -> (weight, row)."""

    def __init__(self) -> None:
        self.handles: Dict[str, Tuple[Any, Optional[int]]] = {}
        self.norms: List[Any] = []

    def sequence(self, layers: List[Layer], x: Any) -> Any:
        index = 0
        while index < len(layers):
            layer = layers[index]
            follower = layers[index + 1] if index + 1 < len(layers) else None
            fold = layer.type in ("Dense", "Conv2D") and follower is not None and follower.type == "Activation"
            x = self.layer(layer, x, follower.function if fold and follower is not None else None)
            index += 2 if fold else 1
        return x

    def layer(self, layer: Layer, x: Any, activation: Optional[str]) -> Any:
        kl, kind, first = keras.layers, layer.type, "channels_first"
        zeros = {"kernel_initializer": _zeros, "bias_initializer": _zeros}
        if kind == "Dense":
            dense = kl.Dense(layer.units, activation=activation, use_bias=layer.bias, **zeros)
            x = dense(x)
            self._bind(layer, dense)
            return x
        if kind == "Conv2D":
            kernel, stride, padding = tuple(layer.kernel), tuple(layer.stride), tuple(layer.padding)
            mode = "valid"
            if stride == (1, 1) and all(2 * p == k - 1 for k, p in zip(kernel, padding)):
                mode = "same"
            elif padding != (0, 0):
                x = kl.ZeroPadding2D(padding, data_format=first)(x)
            conv = kl.Conv2D(layer.filters, kernel, strides=stride, padding=mode, data_format=first,
                             activation=activation, use_bias=layer.bias, **zeros)
            x = conv(x)
            self._bind(layer, conv)
            return x
        if kind in ("MaxPool2D", "AvgPool2D"):
            kernel, stride, padding = tuple(layer.kernel), tuple(layer.stride), tuple(layer.padding)
            if kind == "MaxPool2D":
                if padding != (0, 0):
                    x = _neg_inf_padding(padding)(x)
                return kl.MaxPooling2D(kernel, stride, "valid", data_format=first)(x)
            if padding != (0, 0):
                x = kl.ZeroPadding2D(padding, data_format=first)(x)
            return kl.AveragePooling2D(kernel, stride, "valid", data_format=first)(x)
        if kind == "GlobalAvgPool2D":
            return kl.GlobalAveragePooling2D(data_format=first)(x)
        if kind == "BatchNorm":
            norm = kl.BatchNormalization(axis=1, momentum=1.0 - layer.momentum, epsilon=layer.eps,
                                         beta_initializer=_zeros, gamma_initializer=_ones,
                                         moving_mean_initializer=_zeros, moving_variance_initializer=_ones)
            x = norm(x)
            self.handles[layer.path + ".gamma"] = (norm.gamma, None)
            self.handles[layer.path + ".beta"] = (norm.beta, None)
            self.norms.append(norm)
            return x
        if kind == "Activation":
            return kl.Activation(layer.function)(x)
        if kind == "Dropout":
            return kl.Dropout(layer.rate)(x)
        if kind == "Flatten":
            return kl.Flatten(data_format="channels_last")(x)  # as the tensor lies: (C, H, W) order
        if kind == "Embedding":
            embedding = kl.Embedding(layer.vocab, layer.dim, embeddings_initializer=_zeros)
            x = embedding(x)
            self.handles[layer.path + ".table"] = (embedding.embeddings, None)
            return x
        if kind in ("LSTM", "GRU"):
            for k in range(layer.layers):
                common = dict(return_sequences=layer.return_sequences or k < layer.layers - 1, activation="tanh",
                              recurrent_activation="sigmoid", kernel_initializer=_zeros,
                              recurrent_initializer=_zeros, bias_initializer=_zeros, unroll=True)
                if kind == "LSTM":
                    cell = kl.LSTM(layer.hidden, unit_forget_bias=False, **common)
                else:
                    cell = kl.GRU(layer.hidden, reset_after=True, **common)
                x = cell(x)
                name = f"{layer.path}.layer{k}"
                self.handles[name + ".input_kernel"] = (cell.cell.kernel, None)
                self.handles[name + ".recurrent_kernel"] = (cell.cell.recurrent_kernel, None)
                if kind == "LSTM":
                    self.handles[name + ".bias"] = (cell.cell.bias, None)
                else:
                    self.handles[name + ".input_bias"] = (cell.cell.bias, 0)
                    self.handles[name + ".recurrent_bias"] = (cell.cell.bias, 1)
            return x
        if kind == "Residual":
            body = self.sequence(layer.body, x)
            return kl.Add()([body, self.sequence(layer.shortcut, x) if layer.shortcut else x])
        if kind == "Concat":
            return kl.Concatenate(axis=1)([self.sequence(branch, x) for branch in layer.branches])
        raise Unsupported(f"keras2-cntk has no mapping for the layer type {kind}")

    def _bind(self, layer: Layer, owner: Any) -> None:
        self.handles[layer.path + ".kernel"] = (owner.kernel, None)
        if layer.bias:
            self.handles[layer.path + ".bias"] = (owner.bias, None)


class Model(BaseModel):
    # Keras kernels are (kh, kw, in, out) whatever the data format; its GRU gates are z, r, h.
    conventions: ClassVar[Dict[str, str]] = {"conv_kernel": "hwio", "gru_gates": "zrn"}

    def __init__(self, network: Any, recipe: Dict[str, Any], precision: str, batch_size: int, training: bool,
                 loss_divisor: int) -> None:
        super().__init__(network, recipe, precision, batch_size, training, loss_divisor)
        K.set_floatx(precision)
        # Token ids as floats of the model's precision: CNTK's inputs are floating point (Keras casts an
        # integer batch to float32, which a float64 table's gather refuses); ids below 2**24 are exact.
        inputs = keras.layers.Input(shape=network.input_shape, dtype=precision)
        builder = _Builder()
        self.model = keras.models.Model(inputs, builder.sequence(network.layers, inputs))
        self.handles_, self.norms = builder.handles, builder.norms
        # What one sample's loss is divided by, so that Keras' mean over the batch is the recipe's loss.
        labels = int(np.prod(network.input_shape[:1])) if network.label_kind == "token" else 1
        self.per_sample_divisor = labels if recipe.get("loss_reduction", "mean") == "mean" else 1
        self._checker: Any = None
        if training:
            name, arguments = optimizer_arguments(recipe["optimizer"])
            if recipe.get("grad_clip_norm") is not None:
                raise Unsupported("Keras 2.3.1's clipnorm leaves every weight unchanged on its CNTK backend once "
                                  "the gradients' norm exceeds it (measured: the loss stayed where it started), "
                                  "so the recipe's global-norm clipping cannot run")
            self.model.compile(optimizer=getattr(keras.optimizers, name)(**arguments), loss=self._loss)

    def _loss(self, y_true: Any, y_pred: Any) -> Any:
        """Per sample: its summed softmax cross-entropy over ``per_sample_divisor``; labels come ``(..., 1)``."""
        # On CNTK ``y_true[..., 0]`` keeps its size-1 axis (labels (T, 1) against logits (T, C) broadcast
        # to a language model's T times its loss: measured), so the one-hot rows are made of the labels
        # as they come and that axis summed away; the label's logit is picked by its one-hot row.
        targets = K.sum(K.one_hot(K.cast(y_true, "int32"), self.network.classes), axis=-2)
        entropy = K.sum(targets * (K.logsumexp(y_pred, axis=-1, keepdims=True) - y_pred), axis=-1)
        if K.ndim(entropy) > 1:
            entropy = K.sum(entropy, axis=list(range(1, K.ndim(entropy))))
        return entropy / self.per_sample_divisor

    def handles(self) -> Dict[str, Any]:
        return dict(self.handles_)

    def read(self, handle: Any) -> Any:
        variable, row = handle
        value = K.get_value(variable)
        return np.ascontiguousarray(value[row] if row is not None else value)

    def write(self, handle: Any, value: Any) -> None:
        variable, row = handle
        if row is not None:
            whole = K.get_value(variable).copy()
            whole[row] = value
            value = whole
        K.set_value(variable, np.ascontiguousarray(value))

    def reset_statistics(self) -> None:
        for norm in self.norms:
            K.set_value(norm.moving_mean, np.zeros(K.int_shape(norm.moving_mean), self.dtype))
            K.set_value(norm.moving_variance, np.ones(K.int_shape(norm.moving_variance), self.dtype))

    def device_batch(self, array: Any) -> Any:
        return np.ascontiguousarray(array, dtype=self.dtype) if array.dtype.kind in "iu" else array

    def logits(self, inputs: Any) -> Any:
        return np.asarray(self.model.predict_on_batch(self.device_batch(inputs)))

    def infer_step(self, inputs: Any) -> Any:
        return self.model.predict_on_batch(inputs)

    def gradients(self, inputs: Any, labels: Any) -> Tuple[float, Dict[str, Any]]:
        if self._checker is None:
            K.set_learning_phase(0)  # inference: dropout off, batch norm on its running statistics
            output = self.model(self.model.inputs[0])
            target = K.placeholder(ndim=K.ndim(output))
            self._checker = (self._loss(target, output), target)
        loss, target = self._checker
        variables = list({id(variable): variable for variable, _ in self.handles_.values()}.values())
        values_in = self.device_batch(inputs)
        feed = {argument: labels[..., np.newaxis].astype(self.dtype) if argument.uid == target.uid else values_in
                for argument in loss.arguments}
        found, values = loss.grad(feed, wrt=variables, outputs=[loss])
        batch = len(inputs)
        by_variable = {variable.uid: found[variable] / batch for variable in variables}
        result = {}
        for name, (variable, row) in self.handles_.items():
            value = np.asarray(by_variable[variable.uid])
            result[name] = value[row] if row is not None else value
        return float(np.sum(values)) / batch, result

    def train_step(self, inputs: Any, labels: Any) -> Any:
        return self.model.train_on_batch(inputs, labels[..., np.newaxis])

    def trainable_params(self) -> int:
        return int(sum(K.count_params(weight) for weight in self.model.trainable_weights))

    def parity(self) -> Dict[str, Any]:
        return {"threads": int(C.cntk_py.get_max_num_cputhreads()), "execution": "graph",
                "details": {"keras_backend": K.backend(), "kmp_blocktime": os.environ.get("KMP_BLOCKTIME")}}
