"""PyTorch's answers to the capability probes (``torch``, and ``torch-compile`` through torch.compile).

Each function solves the problem that probes/checks.py poses, in PyTorch's own API, and hands its
answer to the same check as every other framework.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.multiprocessing.spawn import ProcessException, start_processes

from dlarena.probes import checks
from dlarena.probes.runner import ProbeContext


def _compiled(context: ProbeContext, function: Callable[..., Any]) -> Callable[..., Any]:
    """The function as the framework asked runs it: through torch.compile for torch-compile."""
    if context.framework == "torch-compile":
        return torch.compile(function)
    return function


def custom_layer(context: ProbeContext) -> dict[str, Any]:
    problem = checks.custom_layer_problem()

    def activation(x: torch.Tensor) -> torch.Tensor:  # the new layer, from PyTorch's own ops
        return x * torch.sigmoid(checks.ALPHA * x)

    def loss(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (weights * activation(x)).sum()

    x = torch.tensor(problem.x, requires_grad=True)
    _compiled(context, loss)(x, torch.tensor(problem.weights)).backward()
    assert x.grad is not None
    error = checks.check("the gradient of x * sigmoid(1.5 x)", x.grad.numpy(), problem.reference_gradient())
    return {"gradient_error": error, "mode": "torch.compile" if context.framework == "torch-compile" else "eager"}


def _hessian_loss(inputs: torch.Tensor, labels: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                  b2: torch.Tensor) -> torch.Tensor:
    """The Hessian problem's loss (checks.hessian_problem): a tanh MLP, mean softmax cross-entropy."""
    return torch.nn.functional.cross_entropy(torch.tanh(inputs @ w1 + b1) @ w2 + b2, labels)


def higher_order(context: ProbeContext) -> dict[str, Any]:
    problem = checks.hessian_problem()
    loss = functools.partial(_hessian_loss, torch.tensor(problem.inputs), torch.tensor(problem.labels))
    params = tuple(torch.tensor(p) for p in problem.params)
    vector = tuple(torch.tensor(v) for v in problem.vector)
    def hessian_vector(params: tuple[torch.Tensor, ...], vector: tuple[torch.Tensor, ...]) -> Any:
        # forward-over-reverse through torch.func
        return torch.func.jvp(lambda *p: torch.func.grad(loss, argnums=(0, 1, 2, 3))(*p), params, vector)[1]

    hvp = _compiled(context, hessian_vector)(params, vector)
    answer = tuple(np.asarray(part.detach().numpy()) for part in hvp)
    return {"hvp_error": checks.check_hvp(problem, answer), "method": "torch.func.jvp(grad)"}


def dynamic_loop(context: ProbeContext) -> dict[str, Any]:
    """A Python while loop on tensors: eager PyTorch runs it as written; torch.compile traces through
    it (the data-dependent condition breaks the graph and recompiles per step count)."""
    problem = checks.loop_problem()

    def loop(matrix: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steps = torch.zeros((), dtype=torch.int64)
        while bool(torch.linalg.vector_norm(x) > checks.LOOP_THRESHOLD) and int(steps) < checks.LOOP_LIMIT:
            x = torch.tanh(matrix @ x)
            steps = steps + 1
        return steps, x

    matrix = torch.tensor(problem.matrix)
    figures: dict[str, Any] = {}
    modes = {"eager": loop}
    if context.framework == "torch-compile":
        modes["torch.compile"] = torch.compile(loop)
    errors = []
    for mode, function in modes.items():
        answer = [(int(steps), x.detach().numpy()) for steps, x in
                  (function(matrix, torch.tensor(start)) for start in problem.starts)]
        errors.append(checks.check_loop(problem, mode, answer))
    leaf = torch.tensor(problem.matrix, requires_grad=True)
    _, final = modes[list(modes)[-1]](leaf, torch.tensor(problem.starts[-1]))
    (torch.tensor(problem.weights) * final).sum().backward()  # type: ignore[no-untyped-call]
    assert leaf.grad is not None
    figures["gradient_error"] = checks.check("the gradient through the loop", leaf.grad.numpy(),
                                             problem.reference_gradient())
    figures.update(error=max(errors), modes=", ".join(modes), gradient=True)
    return figures


def variable_length(context: ProbeContext) -> dict[str, Any]:
    """torch.nn.LSTM over a packed batch (pack_padded_sequence): its final state is each sequence's own."""
    problem = checks.sequence_problem()
    lstm = torch.nn.LSTM(problem.inputs.shape[2], problem.hidden, batch_first=True)
    values = {"weight_ih_l0": problem.input_kernel, "weight_hh_l0": problem.recurrent_kernel,
              "bias_ih_l0": problem.bias, "bias_hh_l0": np.zeros_like(problem.bias)}  # one bias per gate
    with torch.no_grad():
        for name, value in values.items():
            getattr(lstm, name).copy_(torch.tensor(value))
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(problem.inputs), torch.tensor(problem.lengths),
                                                     batch_first=True, enforce_sorted=False)
    function = torch.compile(lstm) if context.framework == "torch-compile" else lstm
    _, (hidden, _) = function(packed)
    error = checks.check("the final hidden states", hidden[0].detach().numpy(), problem.reference())
    return {"error": error, "method": "pack_padded_sequence"}


# --- multi-device --------------------------------------------------------------------------------

# Two spawned interpreters import torch and, for torch-compile, compile the step: the whole probe took
# 25-63 s (torch) and 87-174 s (torch-compile) on this 2-core machine under load. Longer is a stuck
# rendezvous or step; under the probe's own 300 s, so that this failure, not the worker's kill, reports it.
DDP_TIMEOUT_S = 240.0


class _HessianNet(torch.nn.Module):
    """The Hessian problem's network with its loss as the output: the module DDP wraps."""

    def __init__(self, params: Sequence[np.ndarray]) -> None:
        super().__init__()
        self.params = torch.nn.ParameterList(torch.tensor(p) for p in params)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _hessian_loss(inputs, labels, *self.params)


def _ddp_step(rank: int, framework: str, port: int, answer: str) -> None:
    """One process's training step on its half of the batch; DDP's backward averages the gradients."""
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)  # one core per "device"
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=checks.DEVICES, timeout=timedelta(seconds=DDP_TIMEOUT_S))
    problem = checks.hessian_problem()
    half = np.array_split(np.arange(len(problem.labels)), checks.DEVICES)[rank]
    net = _HessianNet(problem.params)
    model = DistributedDataParallel(net)
    step = torch.compile(model) if framework == "torch-compile" else model
    loss = step(torch.tensor(problem.inputs[half]), torch.tensor(problem.labels[half]))
    loss.backward()
    total = loss.detach()  # the halves are equal: the global batch's mean loss is the halves' mean
    torch.distributed.all_reduce(total)
    if rank == 0:
        np.savez(answer, total.numpy() / checks.DEVICES, *(p.grad.numpy() for p in net.params if p.grad is not None))
    torch.distributed.destroy_process_group()


def multi_device(context: ProbeContext) -> dict[str, Any]:
    """DistributedDataParallel over gloo: two spawned processes, each half of the global batch."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    answer = Path(context.folder) / "ddp.npz"
    spawned = start_processes(_ddp_step, (context.framework, port, str(answer)), nprocs=checks.DEVICES,  # type: ignore[no-untyped-call]
                              join=False, start_method="spawn")
    deadline = time.monotonic() + DDP_TIMEOUT_S
    try:
        while not spawned.join(max(0.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise checks.ProbeFailure(f"the DDP processes did not finish within {DDP_TIMEOUT_S:.0f} s")
    except ProcessException as failure:
        raise checks.ProbeFailure(f"a DDP process failed: {str(failure).strip().splitlines()[-1]}"[:500]) from None
    finally:
        for process in spawned.processes:
            if process.is_alive():
                process.terminate()
    with np.load(answer) as stored:
        loss, *gradients = (stored[f"arr_{i}"] for i in range(len(stored.files)))
    error = checks.check_data_parallel(checks.hessian_problem(), "DDP", float(loss), gradients)
    method = "DistributedDataParallel, gloo, 2 processes" + (", torch.compile" if context.framework == "torch-compile"
                                                              else "")
    return {"gradient_error": error, "devices": checks.DEVICES, "method": method}


# --- the deployment probes' hooks (probes/deployment.py) ------------------------------------------


def deployable(checker: Any, inputs: np.ndarray) -> tuple[torch.nn.Module, np.ndarray]:
    # The checker's nn.Module, eager for torch-compile too: torch.compile's wrapper is no artefact,
    # every exporter traces the module itself (torch.export), and the compiled model's output is the same.
    net: torch.nn.Module = checker.model.net
    return net.eval(), inputs


def _runs(module: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    def run(inputs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(inputs)).numpy()

    return run


def save(model: torch.nn.Module, native_inputs: np.ndarray, path: Path) -> str:
    torch.save(model.state_dict(), path)
    return "torch.save state_dict"


def load(path: str | Path, workload: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A state dict holds weights only: the network is rebuilt from its code (the backend's builder)."""
    from dlarena.frameworks.pytorch import build_sequence

    net = build_sequence(workload.network.layers, workload.network.input_shape)
    net.load_state_dict(torch.load(path))  # weights_only, torch's default
    return _runs(net.eval())


def export_onnx(model: torch.nn.Module, native_inputs: np.ndarray, path: Path) -> str:
    # external_data=False: one self-contained file (the default writes the weights beside it).
    torch.onnx.export(model, (torch.from_numpy(native_inputs),), path, dynamo=True, external_data=False,
                      verbose=False)
    return "torch.onnx.export (dynamo)"


def aot_export(model: torch.nn.Module, native_inputs: np.ndarray, path: Path) -> str:
    torch.export.save(torch.export.export(model, (torch.from_numpy(native_inputs),)), path)
    return "torch.export.export + torch.export.save (.pt2)"


def aot_load(path: str | Path, workload: Any) -> Callable[[np.ndarray], np.ndarray]:
    return _runs(torch.export.load(path).module())


def mobile_export(model: torch.nn.Module, native_inputs: np.ndarray, path: Path) -> str:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (  # type: ignore[import-untyped]
        XnnpackPartitioner,
    )
    from executorch.exir import to_edge_transform_and_lower  # type: ignore[import-untyped]

    # The slow part: lstm32-small's LSTM, unrolled over its 32 steps, lowers to 67 XNNPACK partitions
    # (the gate split and squeezes stay on portable kernels), 86 s on this machine idle, ~4 min loaded.
    exported = torch.export.export(model, (torch.from_numpy(native_inputs),))
    path.write_bytes(to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    return "ExecuTorch .pte, XNNPACK delegate"


def mobile_load(path: str | Path, workload: Any) -> Callable[[np.ndarray], np.ndarray]:
    from executorch.runtime import Runtime  # type: ignore[import-untyped]

    method = Runtime.get().load_program(path).load_method("forward")
    return lambda inputs: method.execute([torch.from_numpy(inputs)])[0].numpy()
