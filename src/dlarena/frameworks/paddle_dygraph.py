"""PaddlePaddle 3 in its dynamic graph (``paddle``).

``paddle.jit.to_static`` as a compiled twin did not pay: it computed the same numbers (float64, six
networks) but a training step took 6.6-7.0 ms against eager's 5.8-6.4 ms on fcn5-small and 13.8-14.2
against 11.5-13.1 ms on karmanov-cnn-small (CPU time per step, 1 thread), after a first step of
0.75-2 s; so dlarena runs the dynamic graph only.

Only a worker process in the ``paddle`` environment imports this module. The network is a
``paddle.nn.Sequential`` of ``paddle.nn`` layers built from the spec, stepped as Paddle's guides write
the loop: forward and ``F.cross_entropy``, ``loss.backward()``, ``opt.step()``, ``opt.clear_grad()``.
The kernel (kernel.py) supplies the starting weights, the batch, the layouts and the runners.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from typing import Any

import numpy as np

# Paddle's C++-extension helper warns at import that ccache is missing; it only speeds up building
# custom operators, which dlarena never does.
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
from paddle import nn  # noqa: E402

from dlarena.frameworks import kernel  # noqa: E402
from dlarena.frameworks.base import Parity, Unavailable, Unsupported  # noqa: E402
from dlarena.spec.layers import (  # noqa: E402
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
from dlarena.spec.weights import layer_params, walk  # noqa: E402

# recipe optimizer -> paddle.optimizer class and keywords. Paddle's RMSProp divides by
# sqrt(r + eps) (PyTorch: sqrt(r) + eps); with the catalogue's eps of 1e-8 the two differ only where
# r is below about 1e-15. A weight decay is an L2 term added to the gradient, as in torch.optim.
SPELLING: kernel.OptimizerSpelling = {
    "sgd": ("SGD", {"lr": "learning_rate", "weight_decay": "weight_decay"}),
    "sgd_momentum": ("Momentum", {"lr": "learning_rate", "momentum": "momentum", "nesterov": "use_nesterov",
                                  "weight_decay": "weight_decay"}),
    "adam": ("Adam", {"lr": "learning_rate", "beta1": "beta1", "beta2": "beta2", "eps": "epsilon",
                      "weight_decay": "weight_decay"}),
    "adadelta": ("Adadelta", {"lr": "learning_rate", "rho": "rho", "eps": "epsilon", "weight_decay": "weight_decay"}),
    "rmsprop": ("RMSProp", {"lr": "learning_rate", "rho": "rho", "eps": "epsilon", "weight_decay": "weight_decay"}),
}

_ACTIVATIONS: dict[str, Any] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
# Canonical role -> attribute of the Paddle layer (recurrent roles take the layer index as a suffix).
_ATTRIBUTES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias", "table": "weight"}
_RECURRENT_ATTRIBUTES = {"input_kernel": "weight_ih_l", "recurrent_kernel": "weight_hh_l", "bias": "bias_ih_l",
                         "input_bias": "bias_ih_l", "recurrent_bias": "bias_hh_l"}


class ResidualBlock(nn.Layer):  # type: ignore[misc]
    """``body(x) + shortcut(x)``; the shortcut is the identity when the spec leaves it empty."""

    def __init__(self, body: Any, shortcut: Any) -> None:
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: Any) -> Any:
        return self.body(x) + self.shortcut(x)


class ConcatBlock(nn.Layer):  # type: ignore[misc]
    """Branches over the same input, concatenated along the channel axis."""

    def __init__(self, branches: list[Any]) -> None:
        super().__init__()
        self.branches = nn.LayerList(branches)

    def forward(self, x: Any) -> Any:
        return paddle.concat([branch(x) for branch in self.branches], axis=1)


class RecurrentOutput(nn.Layer):  # type: ignore[misc]
    """An ``nn.LSTM`` or ``nn.GRU`` (batch first, zero initial state) returning every step or the last."""

    def __init__(self, rnn: Any, return_sequences: bool) -> None:
        super().__init__()
        self.rnn, self.return_sequences = rnn, return_sequences

    def forward(self, x: Any) -> Any:
        out = self.rnn(x)[0]
        return out if self.return_sequences else out[:, -1]


class Objective(nn.Layer):  # type: ignore[misc]
    """The network and its loss as one layer: summed softmax cross-entropy over every label position,
    divided by ``kernel.loss_divisor``."""

    def __init__(self, net: Any, workload: Any) -> None:
        super().__init__()
        self.net, self.network, self.recipe = net, workload.network, workload.recipe

    def forward(self, x: Any, y: Any) -> Any:
        logits = self.net(x)
        divisor = kernel.loss_divisor(self.network, self.recipe, int(y.shape[0]))
        summed = F.cross_entropy(logits.reshape([-1, self.network.classes]), y.reshape([-1]), reduction="sum")
        return summed / divisor


class Model(kernel.Model):
    """The spec's network as ``paddle.nn`` layers in NCHW; Linear weights are (in, out), recurrent
    weights (G*H, in) with PyTorch's gate orders (LSTM i, f, g, o; GRU r, z, n)."""

    conventions = kernel.Conventions(dense_kernel="in_out", conv_kernel="oihw", recurrent_kernel="out_in")

    def __init__(self, workload: Any, precision: str, device: str, batch_size: int, training: bool) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        paddle.set_device("gpu" if device == "cuda" else "cpu")
        paddle.set_default_dtype(precision)  # every parameter and buffer built below is in it
        self.by_path: dict[str, Any] = {}  # spec layer path -> the Paddle layer holding its parameters
        self.frozen: list[Any] = []  # parameters Paddle has and the spec has not (held at zero)
        self.net = self._sequence(self.network.layers, self.network.input_shape, "")
        self.objective = Objective(self.net, workload)
        frozen = {id(p) for p in self.frozen}
        self.params = [p for p in self.net.parameters() if not p.stop_gradient and id(p) not in frozen]
        self.forward, self.loss = self.net, self.objective
        if training:
            name, arguments = kernel.optimizer_arguments(self.recipe.optimizer, SPELLING, "paddle")
            if not arguments.get("weight_decay"):
                arguments.pop("weight_decay", None)  # 0.0 would still add an L2 op to every update
            clip = self.recipe.grad_clip_norm
            self.optimizer = getattr(paddle.optimizer, name)(
                parameters=self.params, grad_clip=nn.ClipGradByGlobalNorm(clip) if clip is not None else None,
                **arguments)
            self.net.train()
        else:
            self.net.eval()

    # ---- building

    def _layer(self, layer: Layer, shape: Shape, path: str) -> Any:
        if isinstance(layer, Dense):
            return nn.Linear(shape[-1], layer.units, bias_attr=None if layer.bias else False)
        if isinstance(layer, Conv2D):
            return nn.Conv2D(shape[0], layer.filters, layer.kernel, stride=layer.stride, padding=layer.padding,
                             bias_attr=None if layer.bias else False)
        if isinstance(layer, MaxPool2D):
            return nn.MaxPool2D(layer.kernel, stride=layer.stride, padding=layer.padding)
        if isinstance(layer, AvgPool2D):  # exclusive=False: padded positions count in the average
            return nn.AvgPool2D(layer.kernel, stride=layer.stride, padding=layer.padding, exclusive=False)
        if isinstance(layer, GlobalAvgPool2D):
            return nn.Sequential(nn.AdaptiveAvgPool2D(1), nn.Flatten())
        if isinstance(layer, BatchNorm):
            # Paddle's momentum is the share of the old running value kept; the spec's (PyTorch's)
            # is the share of the new batch statistic.
            norm = nn.BatchNorm2D if len(shape) == 3 else nn.BatchNorm1D
            return norm(shape[0], momentum=1.0 - layer.momentum, epsilon=layer.eps)
        if isinstance(layer, Activation):
            return _ACTIVATIONS[layer.function]()
        if isinstance(layer, Dropout):
            return nn.Dropout(layer.rate)  # mode upscale_in_train: inverted dropout, as the spec's
        if isinstance(layer, Flatten):
            return nn.Flatten()
        if isinstance(layer, Embedding):
            return nn.Embedding(layer.vocab, layer.dim)
        if isinstance(layer, LSTM):
            # The spec's LSTM has one bias per gate, Paddle's two (bias_ih + bias_hh, added). bias_hh is
            # kept at zero and left out of the optimizer and the count (self.frozen), rather than
            # dropped (bias_hh_attr=False: nn.LSTM then leaves its fused rnn kernel for a Python loop
            # over LSTMCell) or marked stop_gradient (the fused kernel's backward then fails in 3.3.1:
            # "Required tensor shall not be nullptr").
            zero = paddle.ParamAttr(initializer=nn.initializer.Constant(0.0))
            rnn = nn.LSTM(shape[-1], layer.hidden, num_layers=layer.layers, bias_hh_attr=zero)
            self.frozen += [getattr(rnn, f"bias_hh_l{k}") for k in range(layer.layers)]
            return RecurrentOutput(rnn, layer.return_sequences)
        if isinstance(layer, GRU):  # cuDNN form, r multiplying (U_n h + b_hn): nn.GRU as it is
            return RecurrentOutput(nn.GRU(shape[-1], layer.hidden, num_layers=layer.layers), layer.return_sequences)
        if isinstance(layer, Residual):
            shortcut = self._sequence(layer.shortcut, shape, f"{path}.shortcut.") if layer.shortcut else nn.Identity()
            return ResidualBlock(self._sequence(layer.body, shape, f"{path}.body."), shortcut)
        if isinstance(layer, Concat):
            return ConcatBlock([self._sequence(branch, shape, f"{path}.branches.{index}.")
                                for index, branch in enumerate(layer.branches)])
        raise Unsupported(f"the paddle backend has no translation for the layer type {type(layer).__name__}")

    def _sequence(self, layers: tuple[Layer, ...], shape: Shape, prefix: str) -> Any:
        built = []
        for index, layer in enumerate(layers):
            module = self._layer(layer, shape, f"{prefix}{index}")
            self.by_path[f"{prefix}{index}"] = module.rnn if isinstance(module, RecurrentOutput) else module
            built.append(module)
            shape = layer.out_shape(shape)
        return nn.Sequential(*built)

    # ---- the kernel's contract

    def bindings(self) -> list[kernel.Binding]:
        handles = {}
        for path, layer, shape in walk(self.network.layers, self.network.input_shape):
            for spec in layer_params(path, layer, shape):
                if isinstance(layer, LSTM | GRU):
                    index = spec.name.rsplit(".", 2)[-2].removeprefix("layer")
                    attribute = _RECURRENT_ATTRIBUTES[spec.role] + index
                else:
                    attribute = _ATTRIBUTES[spec.role]
                handles[spec.name] = getattr(self.by_path[path], attribute)
        return self.bind(handles)

    def read(self, handle: Any) -> np.ndarray:
        return np.asarray(handle.numpy())

    def write(self, handle: Any, value: np.ndarray) -> None:
        handle.set_value(value)

    def device_batch(self, array: np.ndarray) -> Any:
        return paddle.to_tensor(array)

    def reset_statistics(self) -> None:
        for module in self.net.sublayers():
            if isinstance(module, nn.BatchNorm2D | nn.BatchNorm1D):
                module._mean.set_value(np.zeros(module._mean.shape, self.dtype))
                module._variance.set_value(np.ones(module._variance.shape, self.dtype))

    def logits(self, inputs: Any) -> np.ndarray:
        self.net.eval()
        try:
            with paddle.no_grad():
                return np.asarray(self.forward(inputs).numpy())
        finally:
            if self.training:
                self.net.train()

    def infer_step(self, inputs: Any) -> Any:
        with paddle.no_grad():
            return self.forward(inputs)  # a Paddle tensor: no copy to NumPy in the timed step

    def gradients(self, inputs: Any, labels: Any) -> tuple[float, dict[str, np.ndarray]]:
        self.net.eval()
        # Paddle's fused rnn op keeps what its backward needs only in training mode (in eval mode
        # backward fails: "Tensor holds no memory"). The spec's recurrent layers have no dropout, so
        # training mode computes the same function; the rest of the network stays in eval mode.
        for module in self.net.sublayers():
            if isinstance(module, nn.LSTM | nn.GRU):
                module.train()
        self.net.clear_gradients()
        loss = self.loss(inputs, labels)
        loss.backward()
        grads = {}
        for binding in self.bindings():
            grad = binding.handle.grad
            grads[binding.name] = np.zeros(binding.handle.shape, self.dtype) if grad is None else grad.numpy()
        return float(loss), grads

    def train_step(self, inputs: Any, labels: Any) -> Any:
        loss = self.loss(inputs, labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.clear_grad()
        for param in self.frozen:  # not the optimizer's: its gradient would accumulate
            param.clear_gradient()
        return loss

    def sync(self) -> None:
        if self.device == "cuda":
            paddle.device.synchronize()

    def trainable_params(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.params)

    def parity(self) -> Parity:
        return Parity(
            threads=_openmp_threads(),
            dtype=str(self.params[0].dtype).removeprefix("paddle.") if self.params else None,
            execution="eager",
            details={"threads_source": "omp_get_max_threads() of Paddle's libiomp5, after "
                                       "paddle.base.core.set_num_threads (Paddle has no getter)",
                     "onednn": bool(paddle.get_flags(["FLAGS_use_onednn"])["FLAGS_use_onednn"]),
                     "pir": bool(paddle.get_flags(["FLAGS_enable_pir_api"])["FLAGS_enable_pir_api"])},
        )


def _openmp_threads() -> int | None:
    """The thread count of the OpenMP runtime Paddle's CPU kernels run on (its own libiomp5; loading it
    again by path returns the copy already in the process)."""
    path = os.path.join(os.path.dirname(paddle.__file__), "libs", "libiomp5.so")
    if not os.path.exists(path):
        return None
    return int(ctypes.CDLL(path).omp_get_max_threads())


class Backend(kernel.KernelBackend):
    """``paddle``: the dynamic graph."""

    model_class = Model
    devices = ("cpu", "cuda")

    def __init__(self, threads: int, **options: Any) -> None:
        super().__init__(threads, **options)
        self.name = "paddle"
        # Paddle reads OMP_NUM_THREADS (set by the worker) at import; this sets its math libraries'
        # and OpenMP's count explicitly.
        paddle.base.core.set_num_threads(threads)

    def version(self) -> str:
        return str(paddle.__version__)

    def _device(self, device: str) -> str:
        if device == "cuda" and not paddle.is_compiled_with_cuda():
            raise Unavailable(f"this PaddlePaddle {paddle.__version__} is a CPU build (not compiled with CUDA)")
        return super()._device(device)

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        paddle.set_device("gpu" if self._device(device) == "cuda" else "cpu")
        return np.asarray(paddle.matmul(paddle.to_tensor(a), paddle.to_tensor(b)).numpy())
