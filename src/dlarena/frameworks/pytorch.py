"""PyTorch: eager ``torch.nn`` modules with ``torch.optim`` (``torch``), or the same through
``torch.compile`` with Inductor (``torch-compile``).

Only a worker process imports this module, after it has set thread limits and CPU affinity.
The network is built as an ordinary ``nn.Module`` tree from the spec, the way a PyTorch user would
write it, and stepped with the usual loop: ``zero_grad``, forward, loss, ``backward``, ``step``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
from dlarena.spec.weights import layer_params, walk

DEVICES: tuple[str, ...] = ("cpu", "cuda")

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


# --------------------------------------------------------------------------------------------------
# Building blocks the spec has and torch.nn has not


class ResidualBlock(nn.Module):
    """``body(x) + shortcut(x)``; the shortcut is ``nn.Identity`` when the spec leaves it empty."""

    def __init__(self, body: nn.Module, shortcut: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.body(x) + self.shortcut(x)
        return out


class ConcatBlock(nn.Module):
    """Branches over the same input, concatenated along the channel axis (axis 1 with the batch)."""

    def __init__(self, branches: Iterable[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class GlobalAvgPool(nn.Module):
    """Mean over the spatial axes: ``(N, C, H, W) -> (N, C)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class RecurrentOutput(nn.Module):
    """An ``nn.LSTM`` or ``nn.GRU`` (batch first, zero initial state) that returns only its output:
    every time step, or the last one when the spec asks for no sequence."""

    def __init__(self, rnn: nn.LSTM | nn.GRU, return_sequences: bool) -> None:
        super().__init__()
        self.rnn = rnn
        self.return_sequences = return_sequences

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.rnn(x)[0]
        return out if self.return_sequences else out[:, -1]


# --------------------------------------------------------------------------------------------------
# Spec -> nn.Module


def _pool_padding_fits(kernel: int | tuple[int, int], padding: int | tuple[int, int]) -> bool:
    kernels = (kernel, kernel) if isinstance(kernel, int) else kernel
    paddings = (padding, padding) if isinstance(padding, int) else padding
    return all(2 * p <= k for k, p in zip(kernels, paddings, strict=True))


def _lstm(layer: LSTM, n_in: int) -> nn.LSTM:
    rnn = nn.LSTM(n_in, layer.hidden, num_layers=layer.layers, batch_first=True)
    # The spec's LSTM has one bias per gate; PyTorch's has two (b_ih and b_hh) that it simply adds.
    # Keeping nn.LSTM (its fused CPU and cuDNN kernels) and freezing every b_hh at zero computes
    # exactly the spec's LSTM with exactly its parameter count: b_hh is no longer trainable.
    for name, param in rnn.named_parameters():
        if name.startswith("bias_hh"):
            nn.init.zeros_(param)
            param.requires_grad_(False)
    return rnn


def _build_layer(layer: Layer, shape: Shape) -> nn.Module:
    """The module for one spec layer whose per-sample input shape is ``shape``."""
    if isinstance(layer, Dense):
        return nn.Linear(shape[-1], layer.units, bias=layer.bias)  # over the last axis, sequences too
    if isinstance(layer, Conv2D):
        return nn.Conv2d(
            shape[0], layer.filters, layer.kernel, stride=layer.stride, padding=layer.padding,
            bias=layer.bias,
        )
    if isinstance(layer, (MaxPool2D, AvgPool2D)):
        if not _pool_padding_fits(layer.kernel, layer.padding):
            raise Unsupported(
                f"PyTorch pooling needs padding at most half the kernel; {type(layer).__name__} has "
                f"kernel {layer.kernel} and padding {layer.padding}"
            )
        if isinstance(layer, MaxPool2D):
            return nn.MaxPool2d(layer.kernel, stride=layer.stride, padding=layer.padding)
        return nn.AvgPool2d(layer.kernel, stride=layer.stride, padding=layer.padding, count_include_pad=True)
    if isinstance(layer, GlobalAvgPool2D):
        return GlobalAvgPool()
    if isinstance(layer, BatchNorm):
        norm = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        return norm(shape[0], eps=layer.eps, momentum=layer.momentum)
    if isinstance(layer, Activation):
        return _ACTIVATIONS[layer.function]()
    if isinstance(layer, Dropout):
        return nn.Dropout(layer.rate)
    if isinstance(layer, Flatten):
        return nn.Flatten()
    if isinstance(layer, Embedding):
        return nn.Embedding(layer.vocab, layer.dim)
    if isinstance(layer, LSTM):
        return RecurrentOutput(_lstm(layer, shape[-1]), layer.return_sequences)
    if isinstance(layer, GRU):
        # The spec's GRU is the cuDNN / PyTorch form with two biases per gate: nn.GRU as it is.
        gru = nn.GRU(shape[-1], layer.hidden, num_layers=layer.layers, batch_first=True)
        return RecurrentOutput(gru, layer.return_sequences)
    if isinstance(layer, Residual):
        shortcut = build_sequence(layer.shortcut, shape) if layer.shortcut else nn.Identity()
        return ResidualBlock(build_sequence(layer.body, shape), shortcut)
    if isinstance(layer, Concat):
        return ConcatBlock(build_sequence(branch, shape) for branch in layer.branches)
    raise Unsupported(f"the PyTorch backend has no translation for the layer type {type(layer).__name__}")


def build_sequence(layers: tuple[Layer, ...], shape: Shape) -> nn.Sequential:
    modules = []
    for layer in layers:
        modules.append(_build_layer(layer, shape))
        shape = layer.out_shape(shape)
    return nn.Sequential(*modules)


def build_model(network: Network) -> nn.Sequential:
    """The network as an ``nn.Sequential`` mapping a batch of inputs to logits."""
    return build_sequence(network.layers, network.input_shape)


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def initialise(model: nn.Module, recipe: Recipe) -> None:
    """Apply the recipe's initialisation to every trainable parameter (the caller seeds torch).

    Batch norm always starts at gamma 1, beta 0; frozen parameters (the LSTM's b_hh) stay zero.
    ``glorot_uniform`` and ``he_normal`` act on weight matrices and kernels (tensors of rank 2 or
    more, the embedding table included) and set biases to zero.
    """
    init = recipe.init
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters()}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _NORMS):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if init.name == "framework_default":
            return
        for param in model.parameters():
            if not param.requires_grad or id(param) in norm_params:
                continue
            if init.name == "uniform":
                nn.init.uniform_(param, -init.scale, init.scale)
            elif param.dim() < 2:
                nn.init.zeros_(param)
            elif init.name == "glorot_uniform":
                nn.init.xavier_uniform_(param)
            elif init.name == "he_normal":
                nn.init.kaiming_normal_(param, mode="fan_in", nonlinearity="relu")
            else:
                raise Unsupported(f"the PyTorch backend does not know the initialisation {init.name!r}")


def make_optimizer(params: list[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    opt = recipe.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(
            params, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay
        )
    if opt.name == "adam":
        return torch.optim.Adam(
            params, lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps, weight_decay=opt.weight_decay
        )
    if opt.name == "adadelta":
        return torch.optim.Adadelta(
            params, lr=opt.lr, rho=opt.rho, eps=opt.eps, weight_decay=opt.weight_decay
        )
    if opt.name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=opt.lr, alpha=opt.rho, eps=opt.eps, weight_decay=opt.weight_decay
        )
    raise Unsupported(f"the PyTorch backend does not know the optimizer {opt.name!r}")


LossFn = Callable[[Tensor, Tensor], Tensor]


def make_loss(network: Network, recipe: Recipe, batch_size: int) -> LossFn:
    """Softmax cross-entropy on logits, reduced as the recipe says."""
    if network.label_kind == "token":
        classes = network.classes
        if recipe.loss_reduction == "sum_over_batch":
            def token_sum_over_batch(logits: Tensor, labels: Tensor) -> Tensor:
                loss = F.cross_entropy(logits.reshape(-1, classes), labels.reshape(-1), reduction="sum")
                return loss / batch_size

            return token_sum_over_batch

        def token_mean(logits: Tensor, labels: Tensor) -> Tensor:
            return F.cross_entropy(logits.reshape(-1, classes), labels.reshape(-1))

        return token_mean
    if recipe.loss_reduction == "sum_over_batch":
        def sample_sum_over_batch(logits: Tensor, labels: Tensor) -> Tensor:
            return F.cross_entropy(logits, labels, reduction="sum") / batch_size

        return sample_sum_over_batch
    return F.cross_entropy


def synthetic_batch(
    network: Network, batch_size: int, device: torch.device, seed: int
) -> tuple[Tensor, Tensor]:
    """Inputs and labels made once, on the device, from a seeded generator."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (batch_size, *network.input_shape)
    if network.input_kind == "tokens":
        inputs = torch.randint(0, network.vocab, shape, generator=gen, device=device, dtype=torch.int64)
    else:
        inputs = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    label_shape = (batch_size, *network.label_shape)
    labels = torch.randint(0, network.classes, label_shape, generator=gen, device=device, dtype=torch.int64)
    return inputs, labels


def _blas() -> str | None:
    match = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return match.group(1) if match else None


# --------------------------------------------------------------------------------------------------
# Runners


def _no_sync() -> None:
    return None


# Dynamo's counters of this process's lookups in Inductor's FX-graph cache and AOTAutograd's cache:
# hits mean compiled code came from an earlier process (a warm cache; the worker's compile_cache
# record says whether the cache could be warm at all).
_CACHE_COUNTERS = (("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss"),
                   ("aot_autograd", "autograd_cache_hit"), ("aot_autograd", "autograd_cache_miss"))


def _compile_cache_counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {name: int(counters[group][name]) for group, name in _CACHE_COUNTERS}


class _Runner:
    """What train and infer runners share: the model, its batch, the device and the parity record."""

    def __init__(
        self, model: nn.Module, inputs: Tensor, labels: Tensor, device: torch.device, compiled: bool
    ) -> None:
        self.model = model
        self.inputs = inputs
        self.labels = labels
        self.device = device
        self.compiled = compiled
        self._sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else _no_sync
        self._image = inputs.dim() == 4

    def sync(self) -> None:
        self._sync()

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def device_memory_peak_bytes(self) -> int | None:
        """The caching allocator's peak on a GPU (what tensors held, not what it reserved)."""
        return int(torch.cuda.max_memory_allocated(self.device)) if self.device.type == "cuda" else None

    def parity(self) -> Parity:
        on_cuda = self.device.type == "cuda"
        first = next(self.model.parameters(), None)
        details: dict[str, Any] = {
            "interop_threads": torch.get_num_interop_threads(),
            "mkldnn": torch.backends.mkldnn.is_available(),  # type: ignore[no-untyped-call]
            "blas": _blas(),
        }
        if self.compiled:
            details["compile_cache"] = _compile_cache_counters()
        if on_cuda:
            # cuDNN convolutions use TF32 by default (torch.backends.cudnn.allow_tf32), matmuls do not.
            details["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
            details["device_name"] = torch.cuda.get_device_name(self.device)
        return Parity(
            threads=torch.get_num_threads(),
            dtype=str(first.dtype).removeprefix("torch.") if first is not None else None,
            layout="NCHW" if self._image else None,
            execution="inductor" if self.compiled else "eager",
            tf32=torch.backends.cuda.matmul.allow_tf32 if on_cuda else None,
            cudnn_benchmark=torch.backends.cudnn.benchmark if on_cuda else None,
            details=details,
        )


class TrainRunner(_Runner):
    """One step is ``zero_grad``, forward and loss, ``backward``, optional clipping, ``step``."""

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        device: torch.device,
        compiled: bool,
        loss_of: Callable[[Tensor, Tensor], Tensor],
        optimizer: torch.optim.Optimizer,
        clip_norm: float | None,
    ) -> None:
        super().__init__(model, inputs, labels, device, compiled)
        self.loss_of = loss_of  # inputs, labels -> loss: the model's forward and the loss together
        self.optimizer = optimizer
        self.clip_norm = clip_norm
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.loss: Tensor | None = None  # the last step's loss, kept without a device sync
        model.train()

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_of(self.inputs, self.labels)
        loss.backward()  # type: ignore[no-untyped-call]
        if self.clip_norm is not None:
            nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        self.loss = loss


class InferRunner(_Runner):
    """One step is a forward pass under ``torch.inference_mode`` with the model in eval mode."""

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        device: torch.device,
        compiled: bool,
        forward: Callable[[Tensor], Tensor],
    ) -> None:
        super().__init__(model, inputs, labels, device, compiled)
        self.forward = forward
        self.output: Tensor | None = None  # the last step's logits
        model.eval()

    def step(self) -> None:
        with torch.inference_mode():
            self.output = self.forward(self.inputs)


class Trainer(TrainRunner):
    """The train runner fed real batches (the accuracy scenario); see base.Trainer."""

    def __init__(
        self, runner: TrainRunner, forward: Callable[[Tensor], Tensor], network: Network,
    ) -> None:
        super().__init__(runner.model, runner.inputs, runner.labels, runner.device, runner.compiled,
                         runner.loss_of, runner.optimizer, runner.clip_norm)
        self.forward = forward
        self.bindings = canonical_bindings(self.model, network)

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        load_canonical(self.model, self.bindings, weights)

    def train_step(self, inputs: np.ndarray, labels: np.ndarray) -> Tensor:
        self.inputs = torch.from_numpy(inputs).to(self.device)
        self.labels = torch.from_numpy(labels).to(self.device)
        self.step()
        assert self.loss is not None
        return self.loss.detach()

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        self.model.eval()
        try:
            # no_grad rather than inference_mode: tensors made under inference_mode cannot meet
            # autograd later, and torch.compile guards would recompile for each mode switch.
            with torch.no_grad():
                logits: np.ndarray = self.forward(torch.from_numpy(inputs).to(self.device)).cpu().numpy()
        finally:
            self.model.train()
        return logits


# --------------------------------------------------------------------------------------------------
# Verification: canonical weights in and out


def _module_at(model: nn.Module, path: str) -> nn.Module:
    """The module built for the spec layer at ``path`` ("7.body.0", "9.branches.2.1")."""
    module: Any = model
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    if isinstance(module, RecurrentOutput):
        return module.rnn
    return module  # type: ignore[no-any-return]


# How each canonical parameter sits in torch: (attribute of the module, canonical -> torch transform).
# Dense kernels are stored transposed (out, in); recurrent kernels too, with the same gate order.
_TRANSPOSED = {"kernel", "input_kernel", "recurrent_kernel"}


def _torch_name(layer: Layer, role: str, sublayer: str) -> str:
    if isinstance(layer, LSTM | GRU):
        k = sublayer.removeprefix("layer")
        return {"input_kernel": f"weight_ih_l{k}", "recurrent_kernel": f"weight_hh_l{k}", "bias": f"bias_ih_l{k}",
                "input_bias": f"bias_ih_l{k}", "recurrent_bias": f"bias_hh_l{k}"}[role]
    return {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias", "table": "weight"}[role]


Bindings = list[tuple[str, Tensor, bool]]  # canonical name, torch tensor, stored transposed


def canonical_bindings(model: nn.Module, network: Network) -> Bindings:
    """Where each canonical parameter of ``network`` lives in ``model``."""
    bindings: Bindings = []
    for path, layer, shape in walk(network.layers, network.input_shape):
        module = _module_at(model, path)
        for spec in layer_params(path, layer, shape):
            sublayer = spec.name[len(path) + 1:].rpartition(".")[0]
            tensor = getattr(module, _torch_name(layer, spec.role, sublayer))
            transposed = spec.role in _TRANSPOSED and not isinstance(layer, Conv2D)
            bindings.append((spec.name, tensor, transposed))
    return bindings


def load_canonical(model: nn.Module, bindings: Bindings, weights: dict[str, np.ndarray]) -> None:
    """Copy canonical weights in; batch norm's running statistics restart at mean 0, variance 1."""
    with torch.no_grad():
        for name, tensor, transposed in bindings:
            value = weights[name].T if transposed else weights[name]
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))
        for module in model.modules():
            if isinstance(module, _NORMS):
                module.reset_running_stats()


class Checker:
    """The network in inference mode with canonical weights; see base.Checker."""

    def __init__(self, workload: Workload, device: torch.device, compile: bool, precision: str) -> None:
        self.network, self.recipe = workload.network, workload.recipe
        self.device = device
        self.model = build_model(self.network).to(device=device, dtype=getattr(torch, precision))
        self.model.eval()
        # torch-compile is verified through its compiled graph, not the eager module it came from.
        # One verify worker builds every network in turn, and Dynamo counts the compiled variants of
        # nn.Sequential.forward across all of them: past its recompile_limit (8) it runs the rest
        # eagerly, silently (measured: the 5th network of a worker ran eager). A reset starts each
        # network's Dynamo state afresh, as a new process would; Inductor's compiled code is kept.
        if compile:
            torch._dynamo.reset()
        self.run: Callable[[Tensor], Tensor] = torch.compile(self.model) if compile else self.model
        self.bindings = canonical_bindings(self.model, self.network)

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        load_canonical(self.model, self.bindings, weights)

    def export_weights(self) -> dict[str, np.ndarray]:
        return {name: (tensor.detach().cpu().numpy().T if transposed else tensor.detach().cpu().numpy()).copy()
                for name, tensor, transposed in self.bindings}

    def _inputs(self, inputs: np.ndarray) -> Tensor:
        return torch.from_numpy(inputs).to(self.device)

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits: np.ndarray = self.run(self._inputs(inputs)).cpu().numpy()
        return logits

    def loss_and_gradients(self, inputs: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        loss_fn = make_loss(self.network, self.recipe, inputs.shape[0])
        self.model.zero_grad(set_to_none=True)
        loss = loss_fn(self.run(self._inputs(inputs)), torch.from_numpy(labels).to(self.device))
        loss.backward()  # type: ignore[no-untyped-call]
        grads = {}
        for name, tensor, transposed in self.bindings:
            value = tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)
            grad = value.detach().cpu().numpy()
            grads[name] = (grad.T if transposed else grad).copy()
        return float(loss.detach()), grads


# --------------------------------------------------------------------------------------------------
# Backend


def flush_denormals() -> str:
    """torch's switch (also Keras' on its torch backend): the CPU's mode; on a GPU the probe shows the device's.

    It sets FTZ/DAZ in the calling thread; measured here at 2 threads, torch's intra-op threads
    flushed too, even when their pool had started before the call (each cell's probe checks it)."""
    if not torch.set_flush_denormal(True):
        raise Unsupported("this CPU has no denormals-are-zero mode, so torch.set_flush_denormal cannot flush")
    return "torch.set_flush_denormal(True)"


class Backend:
    """PyTorch eager (``torch``) or through ``torch.compile`` with Inductor (``torch-compile``)."""

    def __init__(self, threads: int, compile: bool = False) -> None:
        self.compile = compile
        self.name = "torch-compile" if compile else "torch"
        torch.set_num_threads(threads)
        # Possible only once, before any inter-op parallel work; otherwise the pool stays as it is.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(threads)

    def version(self) -> str:
        return str(torch.__version__)

    def _device(self, name: str) -> torch.device:
        if name == "cuda":
            if not torch.cuda.is_available():
                raise Unavailable(f"CUDA is not available to this PyTorch {torch.__version__}")
            return torch.device("cuda")
        if name == "cpu":
            return torch.device("cpu")
        raise Unsupported(f"the PyTorch backend runs on {' or '.join(DEVICES)}, not {name!r}")

    def flush_denormals(self) -> str:
        return flush_denormals()

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        # Eager for torch-compile too: Inductor's CPU kernels and the matrix products it calls run in
        # the same intra-op threads, whose state the probe reads.
        where = self._device(device)
        product: np.ndarray = torch.mm(torch.from_numpy(a).to(where), torch.from_numpy(b).to(where)).cpu().numpy()
        return product

    def checker(self, workload: Workload, device: str, precision: str = "float32") -> Checker:
        require_check_precision(precision, "PyTorch")
        return Checker(workload, self._device(device), self.compile, precision)

    def prepare(self, request: StepRequest) -> TrainRunner | InferRunner:
        require(request, "PyTorch")
        device = self._device(request.device)
        workload = request.workload
        network, recipe = workload.network, workload.recipe

        torch.manual_seed(request.seed)
        model = build_model(network)
        initialise(model, recipe)
        model.to(device)
        inputs, labels = synthetic_batch(network, request.batch_size, device, request.seed)

        if request.scenario == "infer":
            forward: Callable[[Tensor], Tensor] = torch.compile(model) if self.compile else model
            return InferRunner(model, inputs, labels, device, self.compile, forward)

        loss_fn = make_loss(network, recipe, request.batch_size)

        def loss_of(x: Tensor, y: Tensor) -> Tensor:
            return loss_fn(model(x), y)

        # Compiled, forward and loss form one graph and AOTAutograd derives its backward graph; the
        # optimizer step stays eager.
        compiled_loss: LossFn = torch.compile(loss_of) if self.compile else loss_of
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], recipe)
        return TrainRunner(
            model, inputs, labels, device, self.compile, compiled_loss, optimizer, recipe.grad_clip_norm
        )

    def trainer(self, request: StepRequest) -> Trainer:
        runner = self.prepare(replace(request, scenario="train"))
        assert isinstance(runner, TrainRunner)
        forward: Callable[[Tensor], Tensor] = torch.compile(runner.model) if self.compile else runner.model
        return Trainer(runner, forward, request.workload.network)
