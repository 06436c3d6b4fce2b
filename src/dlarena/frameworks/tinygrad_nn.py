"""tinygrad (``tinygrad``): the spec's network from ``tinygrad.nn`` layers and ``Tensor`` methods, trained
with ``tinygrad.nn.optim``, every timed step a ``TinyJit`` function.

Only a worker process imports this module, after it has set thread limits and CPU affinity.
tinygrad is lazy: a step builds a graph of UOps that is scheduled into kernels, which its CPU device
renders as C and compiles with clang (a system package). ``TinyJit`` captures the kernels of a
function at its second call and replays them from the third on, with the inputs' buffers swapped in:
so the first steps carry the compile (the worker's first_step_s), and a timed step runs the captured
kernels only. Training is the tinygrad idiom: ``Context(TRAINING=1)`` (dropout on, batch norm on batch
statistics and updating its running ones; the optimizers refuse to step without it), the loss's
gradient with respect to the parameters, and ``optimizer.step()``. tinygrad's optimizers are used
where their rule is the recipe's (SGD with momentum and Nesterov, Adam); a recipe they cannot honour
(Adadelta, RMSprop, Adam with L2 weight decay) is unsupported.

Layouts are PyTorch's, which tinygrad.nn copies: Linear ``(out, in)``, Conv2d ``OIHW``; the LSTM and GRU
layers are written here in PyTorch's layout (``(4H, in)``, gates i, f, g, o; the GRU in cuDNN's form).
The kernel (kernel.py) supplies the starting weights, the batch and the runners.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tinygrad.helpers
from tinygrad import nn
from tinygrad.device import Device
from tinygrad.dtype import dtypes
from tinygrad.engine.jit import TinyJit
from tinygrad.helpers import NUM_CPU_THREADS, Context
from tinygrad.tensor import Tensor

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

# recipe optimizer -> tinygrad.nn.optim function and keywords. SGD's rule (classic=False) is
# torch.optim's: v = m*v + g (+ weight decay added to g first), step g + m*v with Nesterov, else v.
# Adam's is torch's without weight decay (tinygrad's AdamW decouples it, which torch's Adam does not):
# a recipe's Adam with weight decay is refused by kernel.optimizer_arguments. No Adadelta, no RMSprop.
SPELLING: kernel.OptimizerSpelling = {
    "sgd": ("SGD", {"lr": "lr", "momentum": "momentum", "nesterov": "nesterov", "weight_decay": "weight_decay"}),
    "adam": ("Adam", {"lr": "lr", "beta1": "b1", "beta2": "b2", "eps": "eps"}),
}

Layerfn = Callable[[Tensor], Tensor]

# tinygrad keeps compiled kernels in a SQLite file (``tinygrad.helpers.CACHEDB``, by default
# ~/.cache/tinygrad/cache.db), opened at the first compile: in a cold cell the Backend points it into
# the worker's private cache folder (worker.PRIVATE_CACHE_VARIABLE, repeated here as theano_setup
# does), so that no earlier process's kernels are found and the first step carries every compile.
PRIVATE_CACHE_VARIABLE = "DLARENA_COMPILE_CACHE_DIR"


def _realize(tensors: list[Tensor]) -> None:
    if tensors:
        tensors[0].realize(*tensors[1:])


def _dtype(precision: str) -> Any:
    return {"float32": dtypes.float32, "float64": dtypes.float64}[precision]


class Sequence:
    """Layers applied in turn (``Tensor.sequential``)."""

    def __init__(self, layers: list[Layerfn]) -> None:
        self.layers = layers

    def __call__(self, x: Tensor) -> Tensor:
        return x.sequential(self.layers)


class ResidualBlock:
    def __init__(self, body: Sequence, shortcut: Sequence) -> None:
        self.body, self.shortcut = body, shortcut

    def __call__(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)


class ConcatBlock:
    def __init__(self, branches: list[Sequence]) -> None:
        self.branches = branches

    def __call__(self, x: Tensor) -> Tensor:
        first, *rest = (branch(x) for branch in self.branches)
        return first.cat(*rest, dim=1)


class RecurrentCell:
    """One LSTM or GRU layer in PyTorch's layout: ``(G*H, in)`` and ``(G*H, H)`` weights, an input bias
    and (the GRU only) a recurrent bias; the LSTM's gates i, f, g, o with one bias per gate, the GRU's
    r, z, n in cuDNN's form (the reset gate multiplies the recurrent product with its bias).

    Written here rather than with ``nn.LSTMCell`` for the shape of the graph tinygrad schedules: the
    input product of every step is one matrix product over the whole sequence, and each step's
    pre-activations are made contiguous in the backward pass. Without that, tinygrad fused the
    recurrent weight's gradient of all steps into one kernel with a reduction per step, which took
    minutes to lower, and a replayed training step of lstm32-small took 3.8 s (0.22 s written so).
    """

    def __init__(self, lstm: bool, input_size: int, hidden_size: int) -> None:
        gates = 4 if lstm else 3
        self.lstm, self.hidden = lstm, hidden_size
        self.weight_ih = Tensor.zeros(gates * hidden_size, input_size).contiguous()
        self.weight_hh = Tensor.zeros(gates * hidden_size, hidden_size).contiguous()
        self.bias_ih = Tensor.zeros(gates * hidden_size).contiguous()
        self.bias_hh: Tensor | None = None if lstm else Tensor.zeros(gates * hidden_size).contiguous()

    def __call__(self, x: Tensor) -> Tensor:
        """The hidden state at every step of a batch-first sequence, from a zero initial state."""
        inputs = x.linear(self.weight_ih.T, self.bias_ih)
        h = Tensor.zeros(x.shape[0], self.hidden, dtype=x.dtype)
        c = h
        outputs = []
        for t in range(x.shape[1]):
            recurrent = h.linear(self.weight_hh.T, self.bias_hh).contiguous_backward()
            if self.lstm:
                i, f, g, o = (inputs[:, t] + recurrent).chunk(4, dim=1)
                c = (f.sigmoid() * c + i.sigmoid() * g.tanh()).contiguous()
                h = (o.sigmoid() * c.tanh()).contiguous()
            else:
                xr, xz, xn = inputs[:, t].chunk(3, dim=1)
                hr, hz, hn = recurrent.chunk(3, dim=1)
                r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
                h = ((1 - z) * (xn + r * hn).tanh() + z * h).contiguous()
            outputs.append(h)
        return outputs[0].stack(*outputs[1:], dim=1)


class Recurrent:
    """Stacked LSTM or GRU layers over a batch-first sequence, zero initial state, unrolled over time
    (tinygrad has no loop op: the JIT captures the unrolled kernels)."""

    def __init__(self, layer: LSTM | GRU, n_in: int) -> None:
        self.return_sequences = layer.return_sequences
        self.cells = [RecurrentCell(isinstance(layer, LSTM), n_in if k == 0 else layer.hidden, layer.hidden)
                      for k in range(layer.layers)]

    def __call__(self, x: Tensor) -> Tensor:
        for cell in self.cells:
            x = cell(x)
        return x if self.return_sequences else x[:, -1]


def _pool_padding_fits(layer: MaxPool2D | AvgPool2D) -> bool:
    return all(2 * p <= k for k, p in zip(pair(layer.kernel), pair(layer.padding), strict=True))


def _build_layer(layer: Layer, shape: Shape) -> Layerfn:
    if isinstance(layer, Dense):
        return nn.Linear(shape[-1], layer.units, bias=layer.bias)
    if isinstance(layer, Conv2D):
        return nn.Conv2d(shape[0], layer.filters, pair(layer.kernel), stride=pair(layer.stride),
                         padding=pair(layer.padding), bias=layer.bias)
    if isinstance(layer, MaxPool2D | AvgPool2D):
        if not _pool_padding_fits(layer):  # as PyTorch, whose pooling tinygrad's follows
            raise Unsupported(f"tinygrad pooling is held to PyTorch's padding of at most half the kernel; "
                              f"{type(layer).__name__} has kernel {layer.kernel} and padding {layer.padding}")
        kernel_size, stride = pair(layer.kernel), pair(layer.stride if layer.stride is not None else layer.kernel)
        padding = pair(layer.padding)
        if isinstance(layer, MaxPool2D):
            return lambda x: x.max_pool2d(kernel_size, stride=stride, padding=padding)  # type: ignore[return-value]
        return lambda x: x.avg_pool2d(kernel_size, stride=stride, padding=padding, count_include_pad=True)
    if isinstance(layer, GlobalAvgPool2D):
        return lambda x: x.mean(axis=(2, 3))
    if isinstance(layer, BatchNorm):
        return nn.BatchNorm(shape[0], eps=layer.eps, momentum=layer.momentum)
    if isinstance(layer, Activation):
        return {"relu": Tensor.relu, "sigmoid": Tensor.sigmoid, "tanh": Tensor.tanh}[layer.function]
    if isinstance(layer, Dropout):
        rate = layer.rate
        return lambda x: x.dropout(rate)  # the identity unless Context(TRAINING=1)
    if isinstance(layer, Flatten):
        return lambda x: x.flatten(1)
    if isinstance(layer, Embedding):
        return nn.Embedding(layer.vocab, layer.dim)
    if isinstance(layer, LSTM | GRU):
        return Recurrent(layer, shape[-1])
    if isinstance(layer, Residual):
        shortcut = build_sequence(layer.shortcut, shape) if layer.shortcut else Sequence([])
        return ResidualBlock(build_sequence(layer.body, shape), shortcut)
    if isinstance(layer, Concat):
        return ConcatBlock([build_sequence(branch, shape) for branch in layer.branches])
    raise Unsupported(f"the tinygrad backend has no translation for the layer type {type(layer).__name__}")


def build_sequence(layers: tuple[Layer, ...], shape: Shape) -> Sequence:
    built = []
    for layer in layers:
        built.append(_build_layer(layer, shape))
        shape = layer.out_shape(shape)
    return Sequence(built)


def _module_at(net: Sequence, path: str) -> Any:
    """The object built for the spec layer at ``path`` ("7.body.0", "9.branches.2.1")."""
    module: Any = net
    for part in path.split("."):
        if part.isdigit():
            module = module[int(part)] if isinstance(module, list) else module.layers[int(part)]
        else:
            module = getattr(module, part)
    return module


def _handle(module: Any, layer: Layer, role: str, sublayer: str) -> tuple[Any, str]:
    """(object, attribute) holding a canonical parameter."""
    if isinstance(layer, LSTM | GRU):
        cell = module.cells[int(sublayer.removeprefix("layer"))]
        return cell, {"input_kernel": "weight_ih", "recurrent_kernel": "weight_hh", "bias": "bias_ih",
                      "input_bias": "bias_ih", "recurrent_bias": "bias_hh"}[role]
    return module, {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias", "table": "weight"}[role]


class Model(kernel.Model):
    conventions = kernel.Conventions(dense_kernel="out_in", conv_kernel="oihw", recurrent_kernel="out_in")

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        self.tdtype = _dtype(precision)
        self.net = build_sequence(self.network.layers, self.network.input_shape)
        self.handles: dict[str, Tensor] = {}
        for path, layer, shape in walk(self.network.layers, self.network.input_shape):
            module = _module_at(self.net, path)
            for spec in layer_params(path, layer, shape):
                sublayer = spec.name[len(path) + 1:].rpartition(".")[0]
                owner, attribute = _handle(module, layer, spec.role, sublayer)
                # Zeros in place of tinygrad's random initialisers: the kernel loads the weights.
                tensor = Tensor.zeros(*getattr(owner, attribute).shape, dtype=self.tdtype).contiguous()
                setattr(owner, attribute, tensor)
                self.handles[spec.name] = tensor
        self.norms = [m for m in _modules(self.net) if isinstance(m, nn.BatchNorm)]
        for norm in self.norms:  # buffers (not parameters) in the Model's precision
            norm.running_mean = Tensor.zeros(*norm.running_mean.shape, dtype=self.tdtype).contiguous()
            norm.running_var = Tensor.ones(*norm.running_var.shape, dtype=self.tdtype).contiguous()
            norm.running_mean.is_param_(False)
            norm.running_var.is_param_(False)
        self.params = list(self.handles.values())
        _realize([*self.params, *self._statistics()])
        self.optimizer: Any = None
        if training:
            name, arguments = kernel.optimizer_arguments(self.recipe.optimizer, SPELLING, "tinygrad")
            # The optimizer also realises the batch norms' running statistics (its buffers) each step.
            self.optimizer = getattr(nn.optim, name)([*self.params, *self._statistics()], **arguments)
        # One TinyJit per batch shape: a jitted function replays the kernels it captured for the shapes
        # of its first calls, and refuses others.
        self._train_jits: dict[tuple[int, ...], Any] = {}
        self._infer_jits: dict[tuple[int, ...], Any] = {}

    def _statistics(self) -> list[Tensor]:
        return [t for norm in self.norms for t in (norm.running_mean, norm.running_var)]

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        summed = logits.reshape(-1, self.network.classes).sparse_categorical_crossentropy(
            labels.reshape(-1), reduction="sum")
        return summed / kernel.loss_divisor(self.network, self.recipe, int(labels.shape[0]))

    def _forward(self, inputs: Tensor) -> Tensor:
        out: Tensor = self.net(inputs).realize()
        return out

    def _train(self, inputs: Tensor, labels: Tensor) -> Tensor:
        with Context(TRAINING=1):  # type: ignore[no-untyped-call]
            self.optimizer.zero_grad()
            loss = self._loss(self.net(inputs), labels)
            grads = loss.gradient(*self.params)
            clip = self.recipe.grad_clip_norm
            if clip is not None:  # kernel.clip_scale's rule, in the graph
                norm = Tensor.stack(*[(g * g).sum() for g in grads]).sum().sqrt()
                scale = (norm > clip).where(clip / norm, 1.0)
                grads = [g * scale for g in grads]
            for param, grad in zip(self.params, grads, strict=True):
                param.grad = grad
            self.optimizer.step()
            return loss.realize()

    # ---- the kernel's contract

    def bindings(self) -> list[kernel.Binding]:
        return self.bind(self.handles)

    def read(self, handle: Tensor) -> np.ndarray:
        return np.array(handle.numpy())

    def write(self, handle: Tensor, value: np.ndarray) -> None:
        handle.assign(Tensor(value, dtype=self.tdtype)).realize()

    def device_batch(self, array: np.ndarray) -> Tensor:
        return Tensor(np.ascontiguousarray(array)).realize()

    def reset_statistics(self) -> None:
        for norm in self.norms:
            norm.running_mean.assign(Tensor.zeros(norm.running_mean.shape, dtype=self.tdtype))
            norm.running_var.assign(Tensor.ones(norm.running_var.shape, dtype=self.tdtype))
        _realize(self._statistics())

    def logits(self, inputs: Tensor) -> np.ndarray:
        return np.array(self.net(inputs).numpy())  # not jitted: the checker's batches vary in size

    def infer_step(self, inputs: Tensor) -> Tensor:
        shape = tuple(int(size) for size in inputs.shape)
        if shape not in self._infer_jits:
            self._infer_jits[shape] = TinyJit(self._forward)
        out: Tensor = self._infer_jits[shape](inputs)
        return out

    def gradients(self, inputs: Tensor, labels: Tensor) -> tuple[float, dict[str, np.ndarray]]:
        loss = self._loss(self.net(inputs), labels)
        grads = loss.gradient(*self.params)
        _realize([loss, *grads])
        return float(loss.item()), {name: np.array(g.numpy()) for name, g in zip(self.handles, grads, strict=True)}

    def train_step(self, inputs: Tensor, labels: Tensor) -> np.ndarray:
        """One jitted step; the loss is copied out, because a replayed TinyJit writes every call's
        outputs into the same buffers (a loss kept as a Tensor would read the last step's)."""
        shape = tuple(int(size) for size in inputs.shape)
        if shape not in self._train_jits:
            self._train_jits[shape] = TinyJit(self._train)
        return np.array(self._train_jits[shape](inputs, labels).numpy())

    def trainable_params(self) -> int:
        return sum(int(p.numel()) for p in self.params)

    def parity(self) -> Parity:
        details: dict[str, Any] = {
            "device": Device.DEFAULT,
            "threads_source": "tinygrad.helpers.NUM_CPU_THREADS",
            "jit": "TinyJit",
            "compiler": "clang",
            "kernel_cache": tinygrad.helpers.CACHEDB,
        }
        return Parity(threads=int(NUM_CPU_THREADS.value), execution="tinyjit", details=details)


def _modules(root: Any) -> Iterator[Any]:
    """Every object of the built network, depth first."""
    yield root
    children: list[Any] = []
    if isinstance(root, Sequence):
        children = root.layers
    elif isinstance(root, ResidualBlock):
        children = [root.body, root.shortcut]
    elif isinstance(root, ConcatBlock):
        children = list(root.branches)
    for child in children:
        yield from _modules(child)


class Backend(kernel.KernelBackend):
    """tinygrad on its CPU device (clang), TinyJit steps (``tinygrad``)."""

    name = "tinygrad"
    model_class = Model

    def __init__(self, threads: int, **options: Any) -> None:
        super().__init__(threads, **options)
        if Device.DEFAULT != "CPU":
            raise Unsupported(f"dlarena runs tinygrad on its CPU device; this one defaults to {Device.DEFAULT}")
        # The CPU device runs a kernel's global loop on NUM_CPU_THREADS threads (its default is every
        # core of the machine, not the process's affinity), read when kernels are rendered.
        NUM_CPU_THREADS.value = threads
        private = os.environ.get(PRIVATE_CACHE_VARIABLE)
        if private:
            tinygrad.helpers.CACHEDB = os.path.join(private, "tinygrad", "cache.db")

    def version(self) -> str:
        import importlib.metadata

        return importlib.metadata.version("tinygrad")

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        self._device(device)
        return np.array((Tensor(a) @ Tensor(b)).numpy())
