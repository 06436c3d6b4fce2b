"""The Theano family's symbolic graph, shared by Theano 1.0.5 (theano_graph) and its successor PyTensor 3
(pytensor_graph), which kept Theano's programming model and most of its names.

As Theano's documentation of its time taught (the deeplearning.net tutorials), and PyTensor's still
does: parameters are shared variables, the network is a symbolic expression built layer by layer,
``scan`` runs recurrent layers, the optimizer is a list of update expressions that
``function(..., updates=...)`` applies in the same compiled call as the forward and backward pass.
One graph is built per Model; each function is compiled once, on first use, so the first step carries
the compile time and timed steps never recompile.

Parameters keep the canonical layouts (Dense ``in x out``, kernels ``out x in x kh x kw``, gates
``i, f, g, o`` and ``r, z, n``), so the kernel converts nothing. Every variable and constant is made in
the Model's precision, so a float64 Model is float64 throughout whatever the library's floatX.

What differs between the two libraries is a subclass's: the library and its tensor module
(``_library``), and the ops whose names or existence changed (convolution, pooling, the activations,
the cross-entropy, the dropout mask, ``scan``'s return value).
"""

from __future__ import annotations

from abc import abstractmethod
from collections import OrderedDict
from typing import Any, ClassVar

import numpy as np

from dlarena.frameworks import kernel
from dlarena.frameworks.base import Unsupported
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
    MaxPool2D,
    Residual,
)
from dlarena.spec.weights import layer_params, walk

# The recipe's optimizers as update rules (``updates``); each rule is PyTorch's (torch.optim's
# documented algorithms), the framework every other one's training is compared with.
SPELLING: kernel.OptimizerSpelling = {
    "sgd": ("sgd", {"lr": "lr", "weight_decay": "weight_decay"}),
    "sgd_momentum": ("momentum", {"lr": "lr", "momentum": "momentum", "nesterov": "nesterov",
                                  "weight_decay": "weight_decay"}),
    "adam": ("adam", {"lr": "lr", "beta1": "beta1", "beta2": "beta2", "eps": "eps", "weight_decay": "weight_decay"}),
    "adadelta": ("adadelta", {"lr": "lr", "rho": "rho", "eps": "eps", "weight_decay": "weight_decay"}),
    "rmsprop": ("rmsprop", {"lr": "lr", "rho": "rho", "eps": "eps", "weight_decay": "weight_decay"}),
}
# Seed of the dropout masks' random stream. The kernel gives a Model no seed; dropout masks are
# never verified (verification runs in inference mode), and a fixed stream keeps runs alike.
DROPOUT_SEED = 1234


class GraphModel(kernel.Model):
    """The spec's network as one symbolic graph of a Theano-family library (a subclass names it)."""

    framework: ClassVar[str] = ""  # its name in messages and in optimizer refusals

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool,
                 **options: Any) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        self.lib, self.T = self._library()
        T = self.T
        self.params: dict[str, Any] = {}  # canonical name -> shared variable
        self.running: dict[str, tuple[Any, Any]] = {}  # batch norm path -> (mean, var) shared variables
        network = self.network
        self.inputs = T.TensorType("int64" if network.input_kind == "tokens" else precision,
                                   (False,) * (len(network.input_shape) + 1))("inputs")
        self.labels = T.TensorType("int64", (False,) * (len(network.label_shape) + 1))("labels")
        for path, layer, shape in walk(network.layers, network.input_shape):
            for spec in layer_params(path, layer, shape):
                self.params[spec.name] = self.lib.shared(np.zeros(spec.shape, self.dtype), name=spec.name)
        # Inference graph (dropout off, batch norm on running statistics): logits and gradients.
        logits, _ = self._sequence(network.layers, self.inputs, "", False)
        self.logits_expr = logits
        self.loss = self._loss(logits)
        self.functions: dict[str, Any] = {}
        if training:
            name, arguments = kernel.optimizer_arguments(self.recipe.optimizer, SPELLING, self.framework)
            train_logits, state_updates = self._sequence(network.layers, self.inputs, "", True)
            train_loss = self._loss(train_logits)
            params = list(self.params.values())
            grads = self._clip(T.grad(train_loss, params))
            self.train_updates = (state_updates + self._random_updates()
                                  + updates(self.lib, T, name, params, grads, self.c, **arguments))
            self.train_loss = train_loss

    # ---- what differs between Theano and PyTensor ------------------------------------------------

    @abstractmethod
    def _library(self) -> tuple[Any, Any]:
        """The library (``shared``, ``function``, ``scan``) and its tensor module, imported."""

    @abstractmethod
    def _conv2d(self, layer: Conv2D, x: Any, kernel_value: Any) -> Any:
        """The spec's convolution (a cross-correlation) of ``x`` (N, C, H, W) with an OIHW kernel, no bias."""

    @abstractmethod
    def _pool(self, layer: MaxPool2D | AvgPool2D, x: Any) -> Any:
        """The spec's pooling (padding never wins a max; padded positions count in an average)."""

    @abstractmethod
    def _relu(self, x: Any) -> Any: ...

    @abstractmethod
    def _sigmoid(self, x: Any) -> Any: ...

    @abstractmethod
    def _cross_entropy(self, logits: Any, labels: Any) -> Any:
        """Softmax cross-entropy of each row of ``logits`` (rows, classes) with its integer label."""

    @abstractmethod
    def _dropout_mask(self, x: Any, keep: Any) -> Any:
        """A 0/1 mask of ``x``'s shape in the Model's precision, 1 with probability ``keep``."""

    def _random_updates(self) -> list[tuple[Any, Any]]:
        """Updates of the random generators' states that the dropout masks drew from (none where the
        library applies them by itself)."""
        return []

    @abstractmethod
    def _scan(self, step: Any, **arguments: Any) -> Any:
        """``scan``'s outputs (without its updates)."""

    # ---- graph building --------------------------------------------------------------------------

    def c(self, value: float) -> Any:
        """A constant in the Model's precision (a Python float would become a floatX constant)."""
        return np.asarray(value, dtype=self.dtype)

    def _sequence(self, layers: tuple[Layer, ...], x: Any, prefix: str, training: bool) -> tuple[Any, list[Any]]:
        updates: list[Any] = []
        for index, layer in enumerate(layers):
            path = f"{prefix}{index}"
            if isinstance(layer, Residual):
                body, body_updates = self._sequence(layer.body, x, f"{path}.body.", training)
                short, short_updates = self._sequence(layer.shortcut, x, f"{path}.shortcut.", training)
                x, updates = body + short, updates + body_updates + short_updates
            elif isinstance(layer, Concat):
                outs = [self._sequence(branch, x, f"{path}.branches.{i}.", training)
                        for i, branch in enumerate(layer.branches)]
                x = self.T.concatenate([out for out, _ in outs], axis=1)
                updates += [update for _, branch_updates in outs for update in branch_updates]
            else:
                x, layer_updates = self._layer(layer, x, path, training)
                updates += layer_updates
        return x, updates

    def _layer(self, layer: Layer, x: Any, path: str, training: bool) -> tuple[Any, list[Any]]:
        T, p = self.T, self.params
        if isinstance(layer, Dense):
            out = T.dot(x, p[f"{path}.kernel"])
            return (out + p[f"{path}.bias"] if layer.bias else out), []
        if isinstance(layer, Conv2D):
            out = self._conv2d(layer, x, p[f"{path}.kernel"])
            return (out + p[f"{path}.bias"].dimshuffle("x", 0, "x", "x") if layer.bias else out), []
        if isinstance(layer, MaxPool2D | AvgPool2D):
            return self._pool(layer, x), []
        if isinstance(layer, GlobalAvgPool2D):
            return x.mean(axis=(2, 3)), []
        if isinstance(layer, BatchNorm):
            return self._batch_norm(layer, x, path, training)
        if isinstance(layer, Activation):
            functions = {"relu": self._relu, "sigmoid": self._sigmoid, "tanh": T.tanh}
            return functions[layer.function](x), []
        if isinstance(layer, Dropout):
            if not training or layer.rate == 0:
                return x, []
            keep = self.c(1.0 - layer.rate)
            return x * self._dropout_mask(x, keep) / keep, []
        if isinstance(layer, Flatten):
            return x.flatten(2), []
        if isinstance(layer, Embedding):
            return p[f"{path}.table"][x], []
        if isinstance(layer, LSTM | GRU):
            return self._recurrent(layer, x, path), []
        raise Unsupported(f"the {self.framework} module has no {type(layer).__name__} layer")

    def _batch_norm(self, layer: BatchNorm, x: Any, path: str, training: bool) -> tuple[Any, list[Any]]:
        # The plain formula: theano.tensor.nnet.bn refuses an epsilon below 1e-5 (cuDNN's limit),
        # compared after a cast to floatX, so it refuses 1e-5 itself; PyTensor has no batch norm op.
        T = self.T
        axes = (0, 2, 3) if x.ndim == 4 else (0,)  # statistics per channel: over the batch and the image
        pattern = ("x", 0, "x", "x") if x.ndim == 4 else ("x", 0)
        gamma, beta = (self.params[f"{path}.{role}"].dimshuffle(*pattern) for role in ("gamma", "beta"))
        mean, var = self._running(path, int(self.params[f"{path}.gamma"].get_value().shape[0]))
        if not training:
            scale = gamma / T.sqrt(var.dimshuffle(*pattern) + self.c(layer.eps))
            return (x - mean.dimshuffle(*pattern)) * scale + beta, []
        batch_mean = x.mean(axis=axes, keepdims=True)
        batch_var = T.sqr(x - batch_mean).mean(axis=axes, keepdims=True)
        out = (x - batch_mean) / T.sqrt(batch_var + self.c(layer.eps)) * gamma + beta
        # The running variance takes the unbiased batch variance, as PyTorch's; momentum is the
        # weight of the new statistic (the spec's convention).
        count = T.cast(T.prod([x.shape[axis] for axis in axes]), self.precision)
        unbiased = batch_var.flatten() * count / (count - self.c(1.0))
        keep, new = self.c(1.0 - layer.momentum), self.c(layer.momentum)
        return out, [(mean, keep * mean + new * batch_mean.flatten()), (var, keep * var + new * unbiased)]

    def _running(self, path: str, channels: int) -> tuple[Any, Any]:
        """A batch norm's running (mean, variance), shared by the inference and the training graph."""
        if path not in self.running:
            self.running[path] = (self.lib.shared(np.zeros(channels, self.dtype), name=f"{path}.running_mean"),
                                  self.lib.shared(np.ones(channels, self.dtype), name=f"{path}.running_var"))
        return self.running[path]

    def _recurrent(self, layer: LSTM | GRU, x: Any, path: str) -> Any:
        T, p, H = self.T, self.params, layer.hidden
        sigmoid = self._sigmoid
        for k in range(layer.layers):
            name = f"{path}.layer{k}"
            w_rec = p[f"{name}.recurrent_kernel"]
            # The input projection of every time step is one product outside the loop; scan runs
            # only the recurrent product and the gates, over time-major sequences.
            bias = p[f"{name}.bias"] if isinstance(layer, LSTM) else p[f"{name}.input_bias"]
            projected = (T.dot(x, p[f"{name}.input_kernel"]) + bias).dimshuffle(1, 0, 2)
            zeros = T.zeros((x.shape[0], H), dtype=self.precision)
            if isinstance(layer, LSTM):
                def lstm_step(gates_in: Any, h: Any, c: Any, w: Any) -> tuple[Any, Any]:
                    gates = gates_in + T.dot(h, w)
                    i, f, g, o = (gates[:, n * H:(n + 1) * H] for n in range(4))
                    c = sigmoid(f) * c + sigmoid(i) * T.tanh(g)
                    return sigmoid(o) * T.tanh(c), c

                hs, _ = self._scan(lstm_step, sequences=[projected], outputs_info=[zeros, zeros],
                                   non_sequences=[w_rec], strict=True)
            else:
                def gru_step(from_input: Any, h: Any, w: Any, b: Any) -> Any:
                    from_state = T.dot(h, w) + b
                    xr, xz, xn = (from_input[:, n * H:(n + 1) * H] for n in range(3))
                    hr, hz, hn = (from_state[:, n * H:(n + 1) * H] for n in range(3))
                    r, z = sigmoid(xr + hr), sigmoid(xz + hz)
                    # cuDNN's GRU: the reset gate multiplies the recurrent product with its bias.
                    return (self.c(1.0) - z) * T.tanh(xn + r * hn) + z * h

                hs = self._scan(gru_step, sequences=[projected], outputs_info=[zeros],
                                non_sequences=[w_rec, p[f"{name}.recurrent_bias"]], strict=True)
            x = hs.dimshuffle(1, 0, 2)
        return x if layer.return_sequences else x[:, -1]

    def _loss(self, logits: Any) -> Any:
        T = self.T
        losses = self._cross_entropy(logits.reshape((-1, self.network.classes)), self.labels.flatten())
        # The divisor of a batch of symbolic size: the kernel's rule applied to inputs.shape[0].
        divisor = kernel.loss_divisor(self.network, self.recipe, self.inputs.shape[0])
        return losses.sum() / T.cast(divisor, self.precision)

    def _clip(self, grads: list[Any]) -> list[Any]:
        clip = self.recipe.grad_clip_norm
        if clip is None:
            return grads
        T = self.T
        norm = T.sqrt(sum(T.sum(T.sqr(g)) for g in grads))
        scale = T.switch(norm > self.c(clip), self.c(clip) / norm, self.c(1.0))  # kernel.clip_scale's rule
        return [g * scale for g in grads]

    # ---- compiled functions ----------------------------------------------------------------------

    def _compile(self, inputs: list[Any], outputs: Any, name: str, **arguments: Any) -> Any:
        """``function``: a subclass passes its compile mode here."""
        return self.lib.function(inputs, outputs, name=name, **arguments)

    def _function(self, key: str) -> Any:
        if key not in self.functions:
            x, y = self.inputs, self.labels
            if key == "logits":
                self.functions[key] = self._compile([x], self.logits_expr, "logits")
            elif key == "gradients":
                grads = self.T.grad(self.loss, list(self.params.values()))
                self.functions[key] = self._compile([x, y], [self.loss, *grads], "gradients")
            else:
                self.functions[key] = self._compile([x, y], self.train_loss, "train",
                                                    updates=OrderedDict(self.train_updates))
        return self.functions[key]

    def bindings(self) -> list[kernel.Binding]:
        return self.bind(self.params)

    def read(self, handle: Any) -> np.ndarray:
        return np.asarray(handle.get_value())

    def write(self, handle: Any, value: np.ndarray) -> None:
        handle.set_value(np.asarray(value, dtype=self.dtype))

    def device_batch(self, array: np.ndarray) -> Any:
        return array.astype(np.int64) if array.dtype.kind in "iu" else array.astype(self.dtype)

    def logits(self, inputs: Any) -> np.ndarray:
        return np.asarray(self._function("logits")(inputs))

    def gradients(self, inputs: Any, labels: Any) -> tuple[float, dict[str, np.ndarray]]:
        loss, *grads = self._function("gradients")(inputs, labels)
        return float(loss), dict(zip(self.params, grads, strict=True))

    def train_step(self, inputs: Any, labels: Any) -> Any:
        return self._function("train")(inputs, labels)

    def reset_statistics(self) -> None:
        for mean, var in self.running.values():
            mean.set_value(np.zeros_like(mean.get_value()))
            var.set_value(np.ones_like(var.get_value()))


def updates(lib: Any, T: Any, name: str, params: list[Any], grads: list[Any], c: Any, lr: float,
            weight_decay: float = 0.0, momentum: float = 0.0, nesterov: bool = False, beta1: float = 0.9,
            beta2: float = 0.999, rho: float = 0.9, eps: float = 1e-8) -> list[tuple[Any, Any]]:
    """The optimizer as update pairs (shared variable, new value) of the library ``lib`` (its tensor
    module ``T``): torch.optim's algorithms, weight decay added to the gradient (L2, as torch.optim)."""

    def slot(param: Any, fill: float = 0.0) -> Any:
        value = param.get_value(borrow=True)
        return lib.shared(np.full(value.shape, fill, value.dtype), name=f"{param.name}.{name}")

    pairs: list[tuple[Any, Any]] = []
    step = None
    if name == "adam":
        step = lib.shared(np.asarray(0.0, params[0].dtype), name="adam.step")
        pairs.append((step, step + c(1.0)))
    for param, grad in zip(params, grads, strict=True):
        if weight_decay:
            grad = grad + c(weight_decay) * param
        if name == "sgd":
            pairs.append((param, param - c(lr) * grad))
        elif name == "momentum":
            velocity = slot(param)
            new_velocity = c(momentum) * velocity + grad
            direction = grad + c(momentum) * new_velocity if nesterov else new_velocity
            pairs += [(velocity, new_velocity), (param, param - c(lr) * direction)]
        elif name == "adam":
            m, v, t = slot(param), slot(param), step + c(1.0)
            new_m = c(beta1) * m + c(1.0 - beta1) * grad
            new_v = c(beta2) * v + c(1.0 - beta2) * T.sqr(grad)
            denom = T.sqrt(new_v) / T.sqrt(c(1.0) - c(beta2) ** t) + c(eps)
            pairs += [(m, new_m), (v, new_v),
                      (param, param - c(lr) / (c(1.0) - c(beta1) ** t) * new_m / denom)]
        elif name == "rmsprop":
            square = slot(param)
            new_square = c(rho) * square + c(1.0 - rho) * T.sqr(grad)
            pairs += [(square, new_square), (param, param - c(lr) * grad / (T.sqrt(new_square) + c(eps)))]
        else:  # adadelta
            square, delta_square = slot(param), slot(param)
            new_square = c(rho) * square + c(1.0 - rho) * T.sqr(grad)
            delta = T.sqrt(delta_square + c(eps)) / T.sqrt(new_square + c(eps)) * grad
            pairs += [(square, new_square), (delta_square, c(rho) * delta_square + c(1.0 - rho) * T.sqr(delta)),
                      (param, param - c(lr) * delta)]
    return pairs
