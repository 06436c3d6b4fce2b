"""Chainer 7.8.1, define-by-run: a ``chainer.Sequential`` of ``chainer.links`` built from the spec,
stepped with ``chainer.optimizers`` (``cleargrads``, forward and loss, ``backward``, ``update``).

Only a worker process imports this module; it runs in the managed ``legacy`` environment (NumPy 1.23).
On the CPU Chainer computes with NumPy: its matrix products and convolutions (im2col and ``tensordot``)
call NumPy's bundled OpenBLAS, whose thread count the worker sets through ``OPENBLAS_NUM_THREADS`` and
``OMP_NUM_THREADS`` before NumPy is imported; Chainer has no thread setting of its own. iDeep
(``chainer.config.use_ideep``, MKL-DNN) is not installed in the environment, so it stays off; the
parity record says whether it was available.

Chainer's layouts: ``L.Linear.W`` is ``(out, in)``; convolutions ``(out, in, kh, kw)``; ``L.NStepLSTM``
and ``L.NStepGRU`` keep one ``(H, in)`` matrix and one bias per gate and input (``w0..w7`` and
``b0..b7``; ``w0..w5`` and ``b0..b5``): a canonical kernel binds to the tuple of its gates' matrices,
transposed and split.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from typing import Any

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np

from dlarena.frameworks import kernel
from dlarena.frameworks.base import Parity, Unsupported
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
    Shape,
    pair,
)
from dlarena.spec.weights import layer_params, walk

_ACTIVATIONS: dict[str, Callable[[Any], Any]] = {"relu": F.relu, "sigmoid": F.sigmoid, "tanh": F.tanh}

# Pseudo-keywords of SPELLING that are not constructor arguments: weight decay is the optimizer hook
# WeightDecay (it adds rate * param to each gradient, as torch.optim's weight_decay; Adam's own
# weight_decay_rate is decoupled, AdamW's, so it is not used), and AdaDelta has no learning rate.
_WEIGHT_DECAY = "weight_decay hook"
_ADADELTA_LR = "adadelta lr"
# Chainer's AdaDelta applies its step dx unscaled: the learning rate 1 of Zeiler's paper and torch's default.
_ADADELTA_IMPLIED_LR = 1.0

SPELLING: kernel.OptimizerSpelling = {
    "sgd": ("SGD", {"lr": "lr", "weight_decay": _WEIGHT_DECAY}),
    # MomentumSGD's v = m*v - lr*g; p += v is torch's SGD with momentum at a constant rate. Chainer's
    # NesterovAG is another formulation than torch's nesterov=True, so nesterov is left unmapped
    # (a recipe that sets it is unsupported, not silently changed).
    "sgd_momentum": ("MomentumSGD", {"lr": "lr", "momentum": "momentum", "weight_decay": _WEIGHT_DECAY}),
    # Adam's alpha is the learning rate; its eps is added to the uncorrected sqrt(v) (Kingma and Ba's
    # Algorithm 1 rearranged, as TensorFlow and Keras do), not to the bias-corrected one as torch.
    "adam": ("Adam", {"lr": "alpha", "beta1": "beta1", "beta2": "beta2", "eps": "eps",
                      "weight_decay": _WEIGHT_DECAY}),
    # RMSprop's alpha is the decay rate of the mean square (the recipe's rho); eps outside the root, as torch.
    "rmsprop": ("RMSprop", {"lr": "lr", "rho": "alpha", "eps": "eps", "weight_decay": _WEIGHT_DECAY}),
    "adadelta": ("AdaDelta", {"lr": _ADADELTA_LR, "rho": "rho", "eps": "eps", "weight_decay": _WEIGHT_DECAY}),
}


# --------------------------------------------------------------------------------------------------
# Links the spec has and chainer.links has not


class _Dense(L.Linear):  # type: ignore[misc]
    """``L.Linear`` over the last axis: a vector, or every time step of a sequence."""

    def forward(self, x: Any) -> Any:
        return super().forward(x, n_batch_axes=x.ndim - 1)


class _Residual(chainer.Chain):  # type: ignore[misc]
    """``body(x) + shortcut(x)``; no shortcut link is the identity."""

    def __init__(self, body: chainer.Sequential, shortcut: chainer.Sequential | None) -> None:
        super().__init__()
        with self.init_scope():
            self.body = body
            self.shortcut = shortcut

    def forward(self, x: Any) -> Any:
        return self.body(x) + (self.shortcut(x) if self.shortcut is not None else x)


class _Concat(chainer.ChainList):  # type: ignore[misc]
    """Branches over the same input, concatenated along the channel axis."""

    def forward(self, x: Any) -> Any:
        return F.concat([branch(x) for branch in self], axis=1)


class _Recurrent(chainer.Chain):  # type: ignore[misc]
    """``L.NStepLSTM`` or ``L.NStepGRU`` on a ``(B, T, F)`` batch: the link takes a list of sequences,
    starts from zero states (``None``) and returns the last layer's outputs per sequence."""

    def __init__(self, rnn: Any, return_sequences: bool) -> None:
        super().__init__()
        with self.init_scope():
            self.rnn = rnn
        self.return_sequences = return_sequences

    def forward(self, x: Any) -> Any:
        sequences = F.separate(x, axis=0)
        outputs = self.rnn(None, None, sequences)[-1] if isinstance(self.rnn, L.NStepLSTM) else \
            self.rnn(None, sequences)[-1]
        y = F.stack(outputs, axis=0)
        return y if self.return_sequences else y[:, -1]


def _flatten(x: Any) -> Any:
    return F.reshape(x, (x.shape[0], -1))


def _lstm(layer: LSTM, n_in: int, dtype: np.dtype[Any]) -> Any:
    """``L.NStepLSTM`` with the spec's single bias per gate.

    Chainer adds two biases per gate (``b0..b3`` with the input, ``b4..b7`` with the state). The
    second four are taken out of the link's parameters and replaced, in the arrays the link hands to
    ``F.n_step_lstm``, by constant zeros: never trained, never counted, outside the clipping norm,
    and the link keeps Chainer's own kernel."""
    rnn = L.NStepLSTM(layer.layers, n_in, layer.hidden, dropout=0.0)
    for k, cell in enumerate(rnn):
        for j in range(4, 8):
            delattr(cell, f"b{j}")
            rnn.bs[k][j] = np.zeros(layer.hidden, dtype)
    return rnn


# --------------------------------------------------------------------------------------------------
# The model


class Model(kernel.Model):
    """The spec's network as a ``chainer.Sequential`` (``self.net``) with its optimizer."""

    # Gates in the canonical orders: LSTM i, f, g, o and GRU r, z, n. F.n_step_lstm's docstring names
    # W2 the output gate, but its code stacks w2 as the cell input (chainer.functions.lstm's "a") and
    # w3 as the output gate; the float64 logits match the oracle to 4e-16 this way, 1.0 off with i, f, o, g.
    conventions = kernel.Conventions(dense_kernel="out_in", recurrent_kernel="out_in")

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        self.links: dict[str, Any] = {}  # spec path -> the link built for it
        # Links create their parameters in chainer.config.dtype: float64 for a float64 checker.
        with chainer.using_config("dtype", self.dtype):
            self.net = self._sequence(self.network.layers, self.network.input_shape, "")
        self._bindings = self._bind()
        self.optimizer: Any = None
        if training:
            self.optimizer = self._optimizer()
            self.divisor = kernel.loss_divisor(self.network, self.recipe, batch_size)

    # Building ---------------------------------------------------------------------------------------

    def _sequence(self, layers: tuple[Layer, ...], shape: Shape, prefix: str) -> chainer.Sequential:
        steps = []
        for index, layer in enumerate(layers):
            steps.append(self._layer(layer, shape, f"{prefix}{index}"))
            shape = layer.out_shape(shape)
        return chainer.Sequential(*steps)

    def _layer(self, layer: Layer, shape: Shape, path: str) -> Any:
        if isinstance(layer, Residual):
            shortcut = self._sequence(layer.shortcut, shape, f"{path}.shortcut.") if layer.shortcut else None
            return _Residual(self._sequence(layer.body, shape, f"{path}.body."), shortcut)
        if isinstance(layer, Concat):
            return _Concat(*(self._sequence(branch, shape, f"{path}.branches.{index}.")
                             for index, branch in enumerate(layer.branches)))
        if isinstance(layer, MaxPool2D | AvgPool2D):
            stride = layer.stride if layer.stride is not None else layer.kernel
            if isinstance(layer, MaxPool2D):  # cover_all=False: the spec's floor((n + 2p - k) / s) + 1
                return functools.partial(F.max_pooling_2d, ksize=layer.kernel, stride=stride, pad=layer.padding,
                                         cover_all=False)
            # Chainer's 2-D average pooling counts padded positions as zeros (count_include_pad).
            return functools.partial(F.average_pooling_2d, ksize=layer.kernel, stride=stride, pad=layer.padding)
        if isinstance(layer, GlobalAvgPool2D):
            return functools.partial(F.mean, axis=(2, 3))
        if isinstance(layer, Activation):
            return _ACTIVATIONS[layer.function]
        if isinstance(layer, Dropout):
            return functools.partial(F.dropout, ratio=layer.rate)  # inverted; identity when config.train is off
        if isinstance(layer, Flatten):
            return _flatten
        link = self._link(layer, shape)
        self.links[path] = link
        return link

    def _link(self, layer: Layer, shape: Shape) -> Any:
        if isinstance(layer, Dense):
            return _Dense(shape[-1], layer.units, nobias=not layer.bias)
        if isinstance(layer, Conv2D):
            return L.Convolution2D(shape[0], layer.filters, ksize=pair(layer.kernel), stride=pair(layer.stride),
                                   pad=pair(layer.padding), nobias=not layer.bias)
        if isinstance(layer, BatchNorm):
            # Chainer's decay is the weight of the running statistic: 1 - the spec's (PyTorch's) momentum.
            # Its running variance takes the unbiased batch variance, as PyTorch's.
            return L.BatchNormalization(shape[0], decay=1.0 - layer.momentum, eps=layer.eps, dtype=self.dtype)
        if isinstance(layer, Embedding):
            return L.EmbedID(layer.vocab, layer.dim)
        if isinstance(layer, LSTM):
            return _Recurrent(_lstm(layer, shape[-1], self.dtype), layer.return_sequences)
        if isinstance(layer, GRU):
            # The spec's GRU is Chainer's: b3..b5 sit inside the reset gate's product (r * (W5 h + b5)).
            return _Recurrent(L.NStepGRU(layer.layers, shape[-1], layer.hidden, dropout=0.0),
                              layer.return_sequences)
        raise Unsupported(f"the chainer backend has no translation for the layer type {type(layer).__name__}")

    def _optimizer(self) -> Any:
        name, arguments = kernel.optimizer_arguments(self.recipe.optimizer, SPELLING, "chainer")
        decay = arguments.pop(_WEIGHT_DECAY, 0.0)
        lr = arguments.pop(_ADADELTA_LR, _ADADELTA_IMPLIED_LR)
        if lr != _ADADELTA_IMPLIED_LR:
            raise Unsupported(f"chainer's AdaDelta has no learning rate (it steps by {_ADADELTA_IMPLIED_LR:g}), "
                              f"and the recipe sets lr to {lr}")
        optimizer = getattr(chainer.optimizers, name)(**arguments)
        optimizer.setup(self.net)
        # Hooks run in the order added: clipping sees the loss's gradients, then weight decay adds to them
        # (torch's order: clip_grad_norm_ before the optimizer's step adds its weight decay).
        if self.recipe.grad_clip_norm is not None:
            optimizer.add_hook(chainer.optimizer_hooks.GradientClipping(self.recipe.grad_clip_norm))
        if decay:
            optimizer.add_hook(chainer.optimizer_hooks.WeightDecay(decay))
        return optimizer

    def _bind(self) -> list[kernel.Binding]:
        """Canonical name -> a tuple of Chainer parameters (one, or one per gate of a recurrent layer)."""
        handles: dict[str, tuple[Any, ...]] = {}
        for path, layer, shape in walk(self.network.layers, self.network.input_shape):
            link: Any = self.links.get(path)  # None for a layer without parameters
            for spec in layer_params(path, layer, shape):
                if isinstance(layer, LSTM | GRU):
                    cell = link.rnn[int(spec.name.rpartition(".layer")[2].partition(".")[0])]
                    gates = layer.gates
                    first = {"input_kernel": 0, "recurrent_kernel": gates, "bias": 0, "input_bias": 0,
                             "recurrent_bias": gates}[spec.role]
                    letter = "w" if spec.role.endswith("kernel") else "b"
                    handles[spec.name] = tuple(getattr(cell, f"{letter}{j}") for j in range(first, first + gates))
                else:
                    attribute = {"kernel": "W", "bias": "b", "gamma": "gamma", "beta": "beta", "table": "W"}
                    handles[spec.name] = (getattr(link, attribute[spec.role]),)
        return self.bind(handles)

    # The kernel's contract ----------------------------------------------------------------------------

    def bindings(self) -> list[kernel.Binding]:
        return self._bindings

    def read(self, handle: tuple[Any, ...]) -> np.ndarray:
        return np.concatenate([param.array for param in handle], axis=0)

    def write(self, handle: tuple[Any, ...], value: np.ndarray) -> None:
        for param, block in zip(handle, np.split(value, len(handle), axis=0), strict=True):
            param.array[...] = block

    def _gradient(self, handle: tuple[Any, ...]) -> np.ndarray:
        return np.concatenate([param.grad if param.grad is not None else np.zeros_like(param.array)
                               for param in handle], axis=0)

    def _loss(self, inputs: Any, labels: np.ndarray, divisor: int) -> Any:
        logits = self.net(inputs)
        per_label = F.softmax_cross_entropy(F.reshape(logits, (-1, logits.shape[-1])), labels.reshape(-1),
                                            reduce="no")
        return F.sum(per_label) / divisor

    def logits(self, inputs: Any) -> np.ndarray:
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            return np.asarray(self.net(inputs).array)

    def gradients(self, inputs: Any, labels: Any) -> tuple[float, dict[str, np.ndarray]]:
        self.net.cleargrads()
        with chainer.using_config("train", False):
            loss = self._loss(inputs, labels, kernel.loss_divisor(self.network, self.recipe, len(labels)))
        loss.backward()
        return float(loss.array), {binding.name: self._gradient(binding.handle) for binding in self._bindings}

    def train_step(self, inputs: Any, labels: Any) -> Any:
        self.net.cleargrads()
        with chainer.using_config("train", True):
            loss = self._loss(inputs, labels, self.divisor)
        loss.backward()
        self.optimizer.update()
        return loss.array

    def reset_statistics(self) -> None:
        for link in self.links.values():
            if isinstance(link, L.BatchNormalization):
                link.avg_mean[...] = 0
                link.avg_var[...] = 1

    def trainable_params(self) -> int:
        # Every parameter the optimizer updates; the LSTM's zero second biases are not parameters.
        return sum(int(param.size) for param in self.net.params())

    def parity(self) -> Parity:
        threads, source = openblas_threads()
        return Parity(threads=threads, execution="eager", details={
            "threads_source": source,
            "ideep_available": bool(chainer.backends.intel64.is_ideep_available()),
            "use_ideep": chainer.config.use_ideep,
            "type_check": bool(chainer.config.type_check),
        })


def openblas_threads() -> tuple[int | None, str]:
    """The thread count of the OpenBLAS that NumPy (and so Chainer on the CPU) calls, asked of the
    library itself; NumPy's wheels bundle it with 64-bit integers and the symbol suffix ``64_``."""
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1].lower()})
    for path in paths:
        library = ctypes.CDLL(path)
        for symbol in ("openblas_get_num_threads64_", "openblas_get_num_threads"):
            if hasattr(library, symbol):
                return int(getattr(library, symbol)()), f"{symbol}() of NumPy's {os.path.basename(path)}"
    return None, "no OpenBLAS loaded: NumPy's BLAS does not report its threads"


class Backend(kernel.KernelBackend):
    """Chainer on the CPU (CuPy, its GPU array library, is not in the environment)."""

    name = "chainer"
    model_class = Model
    devices = ("cpu",)

    def version(self) -> str:
        return str(chainer.__version__)

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        self._device(device)
        return np.asarray(F.matmul(a, b).array)
