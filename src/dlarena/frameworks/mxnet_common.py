"""What the ``mxnet`` (symbolic Module API) and ``gluon`` (hybridized Gluon) modules share.

Only their workers import this, in the managed ``legacy`` environment (MXNet 1.9.1 needs NumPy < 1.24).
MXNet's layouts are PyTorch's: images NCHW, convolution kernels OIHW, ``FullyConnected`` weights
``(out, in)``, and the fused ``RNN`` operator (the cuDNN kernel's CPU twin) takes one flat vector of
``(G*H, in)`` and ``(G*H, H)`` matrices with gates in cuDNN's order, which is the canonical one
(LSTM ``i, f, g, o``; GRU ``r, z, n`` with the reset gate inside ``r * (U_n h + b_hn)``).

Threads: MXNet 1.9 has no Python setting for them. Its operators size their OpenMP teams from
``omp_get_max_threads()`` when ``OMP_NUM_THREADS`` is set before it is imported (src/engine/openmp.cc),
which the worker does; the registry's ``MXNET_ENGINE_TYPE=NaiveEngine`` runs every operator in the
calling thread instead of a pool of engine workers. The parity record reads the count back from the
OpenMP runtime MXNet links (the system's libgomp).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import mxnet as mx
import numpy as np

from dlarena.frameworks import kernel
from dlarena.frameworks.base import Parity, Unsupported
from dlarena.spec.layers import BatchNorm, Layer
from dlarena.spec.recipe import Optimizer
from dlarena.spec.weights import ParamSpec

CONVENTIONS = kernel.Conventions(dense_kernel="out_in", recurrent_kernel="out_in")

# mx.optimizer names and keywords. ``wd`` is added to the gradient (L2, as torch.optim's weight_decay)
# by SGD, Adam and RMSProp; AdaDelta subtracts wd * weight after its step (decoupled), so its weight
# decay is left unmapped (a recipe that sets it is unsupported). SGD with momentum is torch's at a
# constant rate (v = m*v - lr*g; w += v); Nesterov is a separate optimizer (NAG), so ``nesterov`` is left
# unmapped too. Adam adds eps to the uncorrected sqrt(v) (as TensorFlow and Keras), RMSProp inside the
# root (Tieleman and Hinton's form, ``centered=False``).
SPELLING: kernel.OptimizerSpelling = {
    "sgd": ("sgd", {"lr": "learning_rate", "weight_decay": "wd"}),
    "sgd_momentum": ("sgd", {"lr": "learning_rate", "momentum": "momentum", "weight_decay": "wd"}),
    "adam": ("adam", {"lr": "learning_rate", "beta1": "beta1", "beta2": "beta2", "eps": "epsilon",
                      "weight_decay": "wd"}),
    "rmsprop": ("rmsprop", {"lr": "learning_rate", "rho": "gamma1", "eps": "epsilon", "weight_decay": "wd"}),
    # learning_rate reaches only the Optimizer base class: AdaDelta's update never reads it (below).
    "adadelta": ("adadelta", {"lr": "learning_rate", "rho": "rho", "eps": "epsilon"}),
}
# MXNet's AdaDelta applies its step unscaled (optimizer.py, AdaDelta.update): Zeiler's learning rate 1.
ADADELTA_IMPLIED_LR = 1.0


def optimizer(recipe_optimizer: Optimizer, framework: str) -> tuple[str, dict[str, Any]]:
    """The mx.optimizer name and keywords for the recipe. The loss is already divided by the recipe's
    divisor, so ``rescale_grad`` is 1 (Module would otherwise default it to 1 / batch size)."""
    name, arguments = kernel.optimizer_arguments(recipe_optimizer, SPELLING, framework)
    if name == "adadelta" and arguments["learning_rate"] != ADADELTA_IMPLIED_LR:
        raise Unsupported(f"{framework}'s AdaDelta has no learning rate (it steps by {ADADELTA_IMPLIED_LR:g}), "
                          f"and the recipe sets lr to {arguments['learning_rate']}")
    return name, {**arguments, "rescale_grad": 1.0}


def batch_norm_momentum(layer: BatchNorm) -> float:
    """MXNet's momentum is the weight of the old running value; the spec's (PyTorch's) that of the new
    batch statistic."""
    return 1.0 - layer.momentum


def parameter_suffix(path: str, layer: Layer, spec: ParamSpec) -> str:
    """The name MXNet gives a canonical parameter, after its layer's prefix: ``weight``, ``gamma``;
    ``l0_i2h_weight`` for a recurrent layer's matrices and biases (Gluon's own names)."""
    sublayer = spec.name[len(path) + 1:].rpartition(".")[0]
    if sublayer:  # "layerK" of a recurrent layer
        k = sublayer.removeprefix("layer")
        return {"input_kernel": f"l{k}_i2h_weight", "recurrent_kernel": f"l{k}_h2h_weight", "bias": f"l{k}_i2h_bias",
                "input_bias": f"l{k}_i2h_bias", "recurrent_bias": f"l{k}_h2h_bias"}[spec.role]
    return {"kernel": "weight", "bias": "bias", "gamma": "gamma", "beta": "beta", "table": "weight"}[spec.role]


def context(device: str) -> Any:
    return mx.cpu() if device == "cpu" else mx.gpu()


def omp_threads() -> int:
    """``omp_get_max_threads()`` of the libgomp that libmxnet links (found by its soname, already loaded)."""
    return int(ctypes.CDLL("libgomp.so.1").omp_get_max_threads())


def parity(execution: str, **details: Any) -> Parity:
    features = mx.runtime.Features()
    return Parity(threads=omp_threads(), execution=execution, details={
        "threads_source": "omp_get_max_threads() of the libgomp libmxnet links, set by OMP_NUM_THREADS before "
                          "import (MXNet 1.9 has no thread setting of its own)",
        "engine": os.environ.get("MXNET_ENGINE_TYPE", "ThreadedEnginePerDevice"),
        "mkldnn": bool(features.is_enabled("MKLDNN")),
        "blas": "openblas" if features.is_enabled("BLAS_OPEN") else "other",
        **details,
    })


class Backend(kernel.KernelBackend):
    """What both MXNet backends share: the CPU (this build has no CUDA), the thread check, the probe."""

    devices = ("cpu",)

    def __init__(self, threads: int, **options: Any) -> None:
        super().__init__(threads, **options)
        # MXNet read its threads when imported: a count that differs would measure another cell.
        if omp_threads() != threads:
            raise Unsupported(f"MXNet takes its thread count from OMP_NUM_THREADS before it is imported; its "
                              f"OpenMP runtime has {omp_threads()} threads, not the cell's {threads}")

    def version(self) -> str:
        return str(mx.__version__)

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        # FullyConnected, as every Dense layer runs (MKL-DNN's inner product on this build); weight (out, in).
        where = context(self._device(device))
        product = mx.nd.FullyConnected(mx.nd.array(a, ctx=where), mx.nd.array(b.T, ctx=where), no_bias=True,
                                       num_hidden=b.shape[1])
        return np.asarray(product.asnumpy())


class LazyLoss:
    """A step's loss as MXNet left it (an NDArray of one element), read as a number only when asked."""

    def __init__(self, array: Any) -> None:
        self.array = array

    def __float__(self) -> float:
        return float(self.array.asscalar())
