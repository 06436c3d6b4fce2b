"""PyTorch: eager ``torch.nn`` modules with ``torch.optim`` (``torch``), or the same through
``torch.compile`` with Inductor (``torch-compile``).

Only a worker process imports this module, after it has set thread limits and CPU affinity.
The network is built as an ordinary ``nn.Module`` tree from the spec, the way a PyTorch user would
write it, and stepped with the usual loop: ``zero_grad``, forward, loss, ``backward``, ``step``.
The kernel (kernel.py) supplies the starting weights, the batch, the layouts and the runners.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlarena.frameworks import kernel
from dlarena.frameworks.base import Parity, Unavailable, Unsupported
from dlarena.frameworks.data_parallel import Replicas
from dlarena.frameworks.registry import TORCH_PRECISIONS
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
    LayerNorm,
    MaxPool2D,
    MultiHeadSelfAttention,
    PositionEmbedding,
    Residual,
    SelectToken,
    Shape,
    TiedOutput,
    TokenTypeEmbedding,
)
from dlarena.spec.weights import layer_params, walk

# recipe optimizer -> torch.optim class and keywords. Adam's two betas travel as one ``betas``
# tuple, which Model.__init__ assembles from the two fields.
SPELLING: kernel.OptimizerSpelling = {
    "sgd": ("SGD", {"lr": "lr", "momentum": "momentum", "nesterov": "nesterov", "weight_decay": "weight_decay"}),
    "adam": ("Adam", {"lr": "lr", "beta1": "beta1", "beta2": "beta2", "eps": "eps", "weight_decay": "weight_decay"}),
    "adamw": ("AdamW", {"lr": "lr", "beta1": "beta1", "beta2": "beta2", "eps": "eps", "weight_decay": "weight_decay"}),
    "adadelta": ("Adadelta", {"lr": "lr", "rho": "rho", "eps": "eps", "weight_decay": "weight_decay"}),
    "rmsprop": ("RMSprop", {"lr": "lr", "rho": "alpha", "eps": "eps", "weight_decay": "weight_decay"}),
}

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


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


class SelfAttention(nn.Module):
    """Multi-head self-attention as nanoGPT and Hugging Face's GPT-2 write it: one fused ``qkv``
    Linear, ``F.scaled_dot_product_attention`` (its fused CPU and flash kernels), a ``proj`` Linear."""

    def __init__(self, width: int, heads: int, causal: bool, dropout: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.heads, self.causal, self.dropout = heads, causal, dropout

    def forward(self, x: Tensor) -> Tensor:
        batch, steps, width = x.shape
        q, k, v = (part.view(batch, steps, self.heads, width // self.heads).transpose(1, 2)
                   for part in self.qkv(x).split(width, dim=-1))
        mixed = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=self.causal)
        out: Tensor = self.proj(mixed.transpose(1, 2).reshape(batch, steps, width))
        return out


class PositionAdd(nn.Module):
    """Adds a learned ``(positions, dim)`` table's first rows, one per step, as GPT-2's ``wpe``."""

    def __init__(self, positions: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(positions, width))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.weight[: x.shape[1]]


class TokenTypeAdd(nn.Module):
    """Adds BERT's token-type embedding of the spec's fixed types (layers.TokenTypeEmbedding)."""

    def __init__(self, types: int, width: int, type_ids: list[int]) -> None:
        super().__init__()
        self.embedding = nn.Embedding(types, width)
        self.register_buffer("type_ids", torch.tensor(type_ids), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        added: Tensor = x + self.embedding(self.type_ids)
        return added


class Token(nn.Module):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: Tensor) -> Tensor:
        return x[:, self.index]


class TiedLinear(nn.Module):
    """Logits through an embedding's own table (``lm_head.weight = wte.weight``, Hugging Face's tie):
    one Parameter, registered twice; ``parameters()`` yields it once and autograd sums both uses."""

    def __init__(self, embedding: nn.Module) -> None:
        super().__init__()
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"a tied output needs an nn.Embedding, got {type(embedding).__name__}")
        self.weight = embedding.weight

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


# --------------------------------------------------------------------------------------------------
# Spec -> nn.Module


def _pool_padding_fits(kernel_size: int | tuple[int, int], padding: int | tuple[int, int]) -> bool:
    kernels = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    paddings = (padding, padding) if isinstance(padding, int) else padding
    return all(2 * p <= k for k, p in zip(kernels, paddings, strict=True))


def _lstm(layer: LSTM, n_in: int) -> nn.LSTM:
    rnn = nn.LSTM(n_in, layer.hidden, num_layers=layer.layers, batch_first=True)
    # The spec's LSTM has one bias per gate; PyTorch's has two (b_ih and b_hh) that it simply adds.
    # Keeping nn.LSTM (its fused CPU and cuDNN kernels) and freezing every b_hh at zero computes
    # exactly the spec's LSTM with exactly its parameter count: b_hh is no longer trainable (and,
    # bound to no canonical parameter, never loaded).
    for name, param in rnn.named_parameters():
        if name.startswith("bias_hh"):
            nn.init.zeros_(param)
            param.requires_grad_(False)
    return rnn


def _build_layer(layer: Layer, shape: Shape, built: nn.Sequential) -> nn.Module:
    """The module for one spec layer whose per-sample input shape is ``shape``; ``built`` holds the
    modules of the layers before it in its sequence (a tied output reads its embedding there)."""
    if isinstance(layer, Dense):
        return nn.Linear(shape[-1], layer.units, bias=layer.bias)  # over the last axis, sequences too
    if isinstance(layer, Conv2D):
        return nn.Conv2d(shape[0], layer.filters, layer.kernel, stride=layer.stride, padding=layer.padding,
                         bias=layer.bias)
    if isinstance(layer, (MaxPool2D, AvgPool2D)):
        if not _pool_padding_fits(layer.kernel, layer.padding):
            raise Unsupported(f"PyTorch pooling needs padding at most half the kernel; {type(layer).__name__} has "
                              f"kernel {layer.kernel} and padding {layer.padding}")
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
    if isinstance(layer, LayerNorm):
        return nn.LayerNorm(shape[-1], eps=layer.eps)
    if isinstance(layer, PositionEmbedding):
        return PositionAdd(layer.positions, shape[-1])
    if isinstance(layer, TokenTypeEmbedding):
        return TokenTypeAdd(layer.types, shape[-1], layer.type_ids(shape[0]))
    if isinstance(layer, MultiHeadSelfAttention):
        return SelfAttention(shape[-1], layer.heads, layer.causal, layer.dropout)
    if isinstance(layer, SelectToken):
        return Token(layer.index)
    if isinstance(layer, TiedOutput):
        return TiedLinear(built[int(layer.tied_to)])  # Network checked that it is an Embedding
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
    sequence = nn.Sequential()
    for layer in layers:
        sequence.append(_build_layer(layer, shape, sequence))
        shape = layer.out_shape(shape)
    return sequence


def _module_at(net: nn.Module, path: str) -> nn.Module:
    """The module built for the spec layer at ``path`` ("7.body.0", "9.branches.2.1")."""
    module: Any = net
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module.rnn if isinstance(module, RecurrentOutput) else module


# Self-attention's canonical parameters, by name, in SelfAttention.
_ATTENTION_NAMES = {"qkv_kernel": ("qkv", "weight"), "qkv_bias": ("qkv", "bias"), "out_kernel": ("proj", "weight"),
                    "out_bias": ("proj", "bias")}


def _handle(module: nn.Module, layer: Layer, name: str, role: str) -> Tensor:
    """The tensor holding a canonical parameter, ``name`` its name within the layer ("kernel", "layer1.bias")."""
    if isinstance(layer, MultiHeadSelfAttention):
        part, attribute = _ATTENTION_NAMES[name]
        tensor: Tensor = getattr(getattr(module, part), attribute)
        return tensor
    if isinstance(module, TokenTypeAdd):
        module = module.embedding
    tensor = getattr(module, _torch_name(layer, role, name.rpartition(".")[0]))
    return tensor


def _torch_name(layer: Layer, role: str, sublayer: str) -> str:
    """The attribute holding a canonical parameter (recurrent ones per stacked layer, ``sublayer`` "layer1")."""
    if isinstance(layer, LSTM | GRU):
        k = sublayer.removeprefix("layer")
        return {"input_kernel": f"weight_ih_l{k}", "recurrent_kernel": f"weight_hh_l{k}", "bias": f"bias_ih_l{k}",
                "input_bias": f"bias_ih_l{k}", "recurrent_bias": f"bias_hh_l{k}"}[role]
    return {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias", "table": "weight"}[role]


# --------------------------------------------------------------------------------------------------
# The kernel's Model


def _widened(logits: Tensor) -> Tensor:
    """Logits for the loss: half-precision ones in float32 (as autocast computes a loss), others as they are."""
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits


def _to_numpy(tensor: Tensor) -> np.ndarray:
    """A tensor on the host as NumPy: bfloat16, which NumPy lacks, as float32 (every value exact)."""
    tensor = tensor.cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _blas() -> str | None:
    match = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return match.group(1) if match else None


# Dynamo's counters of this process's lookups in Inductor's FX-graph cache and AOTAutograd's cache:
# hits mean compiled code came from an earlier process (a warm cache; the worker's compile_cache
# record says whether the cache could be warm at all).
_CACHE_COUNTERS = (("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss"),
                   ("aot_autograd", "autograd_cache_hit"), ("aot_autograd", "autograd_cache_miss"))


def _compile_cache_counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {name: int(counters[group][name]) for group, name in _CACHE_COUNTERS}


class Model(kernel.Model):
    """The spec's network as an ``nn.Sequential`` in NCHW; Linear and recurrent weights are stored
    (out, in), with PyTorch's gate orders (the canonical ones: LSTM i, f, g, o; GRU r, z, n)."""

    conventions = kernel.Conventions(dense_kernel="out_in", conv_kernel="oihw", recurrent_kernel="out_in")

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool,
                 compile: bool = False) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        self.where = torch.device(device)
        self.compiled = compile
        self.weights_dtype = getattr(torch, self.precision_info.weights)
        self.net = build_sequence(self.network.layers, self.network.input_shape).to(
            device=self.where, dtype=self.weights_dtype)
        # mixed-bf16 and mixed-fp16: float32 weights, matrix products in the lower precision
        # (torch.autocast casts each op's inputs as its op lists say; the loss stays float32).
        self.compute_dtype = getattr(torch, self.precision_info.compute)
        self.matmul_dtypes: set[str] = set()  # what the first eager forward's Linear/conv outputs were
        self.net.train(training)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.handles: dict[str, Tensor] = {}
        for path, layer, shape in walk(self.network.layers, self.network.input_shape):
            module = _module_at(self.net, path)
            for spec in layer_params(path, layer, shape):
                self.handles[spec.name] = _handle(module, layer, spec.name[len(path) + 1:], spec.role)
        # torch-compile: in training, forward and loss form one graph and AOTAutograd derives its
        # backward graph (the optimizer step stays eager); in inference, the forward alone. Both
        # compile lazily, at their first call.
        self.forward: Callable[[Tensor], Tensor] = torch.compile(self.net) if compile else self.net
        self.objective: Callable[[Tensor, Tensor], Tensor] = (
            torch.compile(self._objective) if compile else self._objective)
        if training:
            name, arguments = kernel.optimizer_arguments(self.recipe.optimizer, SPELLING, "torch")
            if "beta1" in arguments:
                arguments["betas"] = (arguments.pop("beta1"), arguments.pop("beta2"))
            self.optimizer: torch.optim.Optimizer = getattr(torch.optim, name)(self.params, **arguments)
        # mixed-fp16 trains with loss scaling, as PyTorch's AMP recipe does: float16 gradients of a
        # small loss underflow to zero (float16's smallest normal is 6e-5; bfloat16 has float32's range).
        self.scaler = (torch.amp.GradScaler(self.where.type)
                       if training and self.precision_info.mixed and self.precision_info.compute == "float16"
                       else None)

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Summed softmax cross-entropy over every label position, divided by ``kernel.loss_divisor``."""
        summed = F.cross_entropy(logits.reshape(-1, self.network.classes), labels.reshape(-1), reduction="sum")
        return summed / kernel.loss_divisor(self.network, self.recipe, labels.shape[0])

    def _objective(self, inputs: Tensor, labels: Tensor) -> Tensor:
        with self._autocast():
            logits = self.net(inputs)
        return self._loss(_widened(logits), labels)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.precision_info.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.where.type, dtype=self.compute_dtype)

    def _forward(self, inputs: Tensor) -> Tensor:
        """The (compiled) forward in the cell's precision; the first eager call records the dtypes the
        Linear and convolution layers computed in (parity: what the matrix products really ran in)."""
        with self._autocast():
            if self.compiled or self.matmul_dtypes:
                return self.forward(inputs)
            hooks = [module.register_forward_hook(self._record_dtype) for module in self.net.modules()
                     if isinstance(module, nn.Linear | nn.Conv2d | SelfAttention | TiedLinear)]
            try:
                return self.forward(inputs)
            finally:
                for hook in hooks:
                    hook.remove()

    def _record_dtype(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor):
            self.matmul_dtypes.add(str(output.dtype).removeprefix("torch."))

    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Eval mode (dropout off, batch norm on running statistics), back to training mode after."""
        self.net.eval()
        try:
            yield
        finally:
            self.net.train(self.training)

    # ---- the kernel's contract

    def bindings(self) -> list[kernel.Binding]:
        return self.bind(self.handles)

    def read(self, handle: Tensor) -> np.ndarray:
        # a copy: on the CPU, numpy() shares the parameter; NumPy has no bfloat16, so that reads as float32
        return _to_numpy(handle.detach()).copy()

    def write(self, handle: Tensor, value: np.ndarray) -> None:
        with torch.no_grad():
            handle.copy_(torch.from_numpy(value))

    def device_batch(self, array: np.ndarray) -> Tensor:
        tensor = torch.from_numpy(array).to(self.where)
        return tensor.to(self.weights_dtype) if tensor.is_floating_point() else tensor

    def reset_statistics(self) -> None:
        for module in self.net.modules():
            if isinstance(module, _NORMS):
                module.reset_running_stats()

    def logits(self, inputs: Tensor) -> np.ndarray:
        # no_grad rather than inference_mode: tensors made under inference_mode cannot meet
        # autograd later, and torch.compile guards would recompile for each mode switch.
        with self._evaluating(), torch.no_grad():
            return _to_numpy(self._forward(inputs))

    def infer_step(self, inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return self._forward(inputs)  # a tensor: no copy to the host in the timed step

    def gradients(self, inputs: Tensor, labels: Tensor) -> tuple[float, dict[str, np.ndarray]]:
        # The compiled forward (torch-compile is verified through its compiled graph), the loss eager.
        with self._evaluating():
            self.net.zero_grad(set_to_none=True)
            loss = self._loss(_widened(self._forward(inputs)), labels)
            loss.backward()  # type: ignore[no-untyped-call]
        return float(loss.detach()), {name: _to_numpy((tensor.grad if tensor.grad is not None
                                                       else torch.zeros_like(tensor)).detach())
                                       for name, tensor in self.handles.items()}

    def train_step(self, inputs: Tensor, labels: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.objective(inputs, labels)
        if self.scaler is not None:  # mixed-fp16: scaled backward, unscaled before clipping, skipped on inf
            self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            if self.recipe.grad_clip_norm is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.params, self.recipe.grad_clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return loss.detach()
        loss.backward()  # type: ignore[no-untyped-call]
        if self.recipe.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(self.params, self.recipe.grad_clip_norm)
        self.optimizer.step()
        return loss.detach()

    def sync(self) -> None:
        if self.where.type == "cuda":
            torch.cuda.synchronize(self.where)

    def device_memory_peak_bytes(self) -> int | None:
        """The caching allocator's peak on a GPU (what tensors held, not what it reserved)."""
        return int(torch.cuda.max_memory_allocated(self.where)) if self.where.type == "cuda" else None

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def join(self, replicas: Replicas) -> str:
        """DistributedDataParallel, launched as torchrun would: one process per replica, gloo on the CPU
        and NCCL on GPUs, meeting at replica 0's TCP store; it averages the gradients in backward."""
        import torch.distributed as distributed
        from torch.nn.parallel import DistributedDataParallel

        runtime = "nccl" if self.where.type == "cuda" else "gloo"
        distributed.init_process_group(runtime, init_method=f"tcp://{replicas.address}", rank=replicas.rank,
                                       world_size=replicas.size)
        wrapped = DistributedDataParallel(self.net)  # broadcasts replica 0's weights: the same starting weights
        self.forward = torch.compile(wrapped) if self.compiled else wrapped
        return f"torch.distributed {runtime} DistributedDataParallel"

    def parity(self) -> Parity:
        on_cuda = self.where.type == "cuda"
        details: dict[str, Any] = {
            "threads_source": "torch.get_num_threads()",
            "interop_threads": torch.get_num_interop_threads(),
            "mkldnn": torch.backends.mkldnn.is_available(),  # type: ignore[no-untyped-call]
            "blas": _blas(),
        }
        if self.compiled:
            details["compile_cache"] = _compile_cache_counters()
        if self.scaler is not None:  # GradScaler's loss scale now (it halves on an overflow, doubles after 2000 steps)
            details["loss_scale"] = float(self.scaler.get_scale())
        if self.matmul_dtypes:  # read back from the first eager forward's Linear and convolution outputs
            details["matmul_dtype"] = ", ".join(sorted(self.matmul_dtypes))
        elif self.precision_info.mixed or self.compiled:  # Inductor's graph has no module to hook: the setting
            details["matmul_dtype"] = f"{self.precision_info.compute} (the autocast setting, not observed)"
        if on_cuda:
            # cuDNN convolutions use TF32 by default (torch.backends.cudnn.allow_tf32), matmuls do not.
            details["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
            details["device_name"] = torch.cuda.get_device_name(self.where)
        first = next(self.net.parameters(), None)
        return Parity(
            threads=torch.get_num_threads(),
            dtype=str(first.dtype).removeprefix("torch.") if first is not None else None,
            execution="inductor" if self.compiled else "eager",
            tf32=torch.backends.cuda.matmul.allow_tf32 if on_cuda else None,
            cudnn_benchmark=torch.backends.cudnn.benchmark if on_cuda else None,
            details=details,
        )


# --------------------------------------------------------------------------------------------------
# Backend


def flush_denormals() -> str:
    """torch's switch (also Keras' on its torch backend): the CPU's mode; on a GPU the probe shows the device's.

    It sets FTZ/DAZ in the calling thread; measured here at 2 threads, torch's intra-op threads
    flushed too, even when their pool had started before the call (each cell's probe checks it)."""
    if not torch.set_flush_denormal(True):
        raise Unsupported("this CPU has no denormals-are-zero mode, so torch.set_flush_denormal cannot flush")
    return "torch.set_flush_denormal(True)"


class Backend(kernel.KernelBackend):
    """PyTorch eager (``torch``) or through ``torch.compile`` with Inductor (``torch-compile``)."""

    model_class = Model
    devices = ("cpu", "cuda")
    precisions = TORCH_PRECISIONS

    def __init__(self, threads: int, compile: bool = False) -> None:
        super().__init__(threads, compile=compile)
        self.compile = compile
        self.name = "torch-compile" if compile else "torch"
        torch.set_num_threads(threads)
        # Possible only once, before any inter-op parallel work; otherwise the pool stays as it is.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(threads)

    def version(self) -> str:
        return str(torch.__version__)

    def _device(self, device: str) -> str:
        if device == "cuda" and not torch.cuda.is_available():
            raise Unavailable(f"CUDA is not available to this PyTorch {torch.__version__}")
        return super()._device(device)

    def checker(self, workload: Workload, device: str, precision: str = "float32") -> kernel.KernelChecker:
        # One verify worker builds every network in turn, and Dynamo counts the compiled variants of
        # nn.Sequential.forward across all of them: past its recompile_limit (8) it runs the rest
        # eagerly, silently (measured: the 5th network of a worker ran eager). A reset starts each
        # network's Dynamo state afresh, as a new process would; Inductor's compiled code is kept.
        if self.compile:
            torch._dynamo.reset()
        return super().checker(workload, device, precision)

    def flush_denormals(self) -> str:
        return flush_denormals()

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        # Eager for torch-compile too: Inductor's CPU kernels and the matrix products it calls run in
        # the same intra-op threads, whose state the probe reads.
        where = self._device(device)
        product: np.ndarray = torch.mm(torch.from_numpy(a).to(where), torch.from_numpy(b).to(where)).cpu().numpy()
        return product
