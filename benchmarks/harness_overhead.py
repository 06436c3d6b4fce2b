"""Issue 4's harness-overhead check: dlarena's step time against a minimal hand-written training loop.

    .venv/bin/python benchmarks/harness_overhead.py [--frameworks torch jax tensorflow]
        [--workloads fcn5-small karmanov-cnn-small] [--rounds 3] [--min-time 2] [--threads 1]

For each framework and workload (train scenario, float32, CPU), it runs dlarena's own cell (``python -m
dlarena.worker --cell ...``, exactly the command an orchestrator runs) and a training loop for the same
network written here by hand, without any of dlarena's framework code: same layer sizes, activation,
loss (mean softmax cross-entropy on integer labels), optimizer, learning rate, batch size, dtype and
thread count. Each side runs in a fresh process pinned by ``dlarena_runner.process.limit_threads`` before the
framework is imported, warms up as dlarena does (one step, then 3), then times steps (clock read around
step + sync) for at least as many steps and seconds as the dlarena cell. The two alternate for ``--rounds``
rounds, each side going first in every other round, so both see the same machine conditions. Where dlarena's step
makes a choice that changes what a step costs but not what it computes (TensorFlow called through its
concrete function with its SGD training ops; no random key carried by a JAX step without dropout), the
hand-written loop makes it too, so that what differs is the harness.

Prints a Markdown table: the median step time of each side over the steady samples of all rounds, the
overhead ``(dlarena - hand) / hand`` and whether it is within the target, then how many cells met it.
A cell whose hand-written network has a different parameter count than dlarena's (or than the
catalogue's) is not reported. A column gives the same comparison in process CPU time per step, which
other processes' load disturbs less. Always exits 0: this is a report; not part of ``make test``.

Both sides pin themselves to the first ``--threads`` cores of the affinity they inherit, so on a shared
machine, where every other single-thread worker also lands on the first core, choose quieter cores with
``taskset -c 1 .venv/bin/python benchmarks/harness_overhead.py``, and use a longer ``--min-time`` and
more ``--rounds`` before trusting a figure. The script re-invokes itself with ``--hand FRAMEWORK
WORKLOAD`` to run one hand-written loop.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Literal

from dlarena.plan.cell import (
    DEFAULT_MAX_STEPS,
    DEFAULT_MAX_TIME_S,
    DEFAULT_MIN_STEPS,
    DEFAULT_TIMEOUT_S,
    DEFAULT_WARMUP_STEPS,
)
from dlarena_runner.process import fix_malloc_thresholds, limit_threads
from dlarena_runner.resources import cpu_seconds

# The most dlarena's harness may add to a hand-written loop's median step time (issue 4: the harness
# adds no overhead; 2% is the tolerance within which "none" is claimed).
TARGET_OVERHEAD = 0.02

FRAMEWORKS: tuple[str, ...] = ("torch", "jax", "tensorflow")
WORKLOADS: tuple[str, ...] = ("fcn5-small", "karmanov-cnn-small")
DEFAULT_ROUNDS = 3
DEFAULT_MIN_TIME_S = 2.0
DEFAULT_THREADS = 1
# What the report keeps of a failed process's standard error.
ERROR_TAIL_CHARS = 2000

StepFn = Callable[[], None]


# --------------------------------------------------------------------------------------------------
# The networks, written out by hand (not read from dlarena's spec; the parent checks they agree)


@dataclass(frozen=True)
class HandNet:
    """One workload as the hand-written loops build it.

    ``fcn``: ``widths`` sigmoid Dense layers, then a Dense to the logits. ``cnn`` (Karmanov's VGG-style
    net): two pairs of 3x3 padded convs of ``widths[0]`` and ``widths[1]`` channels, the second conv of
    each pair max-pooled 2x2 then ReLU'd and followed by dropout ``dropout[0]``; a ReLU Dense of ``fc``
    units with dropout ``dropout[1]``; a Dense to the logits. Optimizer: SGD, classic momentum.
    """

    kind: Literal["fcn", "cnn"]
    input_shape: tuple[int, ...]  # per sample; images channels-first (C, H, W)
    widths: tuple[int, ...]
    classes: int
    lr: float
    momentum: float
    # The recipe's: with sigmoids the weights' scale decides how saturated units are, and so the values the
    # arithmetic meets. uniform: every parameter, biases too, in (-init_scale, init_scale); glorot: zero biases.
    init: Literal["uniform", "glorot_uniform"]
    init_scale: float = 0.0
    fc: int = 0
    dropout: tuple[float, float] = (0.0, 0.0)


HAND_NETS: dict[str, HandNet] = {
    "fcn5-small": HandNet(
        "fcn", (1024,), (256, 256, 256), 1024, lr=0.01, momentum=0.0, init="uniform", init_scale=0.5,
    ),
    "karmanov-cnn-small": HandNet(
        "cnn", (3, 16, 16), (12, 25), 10, lr=0.01, momentum=0.9, init="glorot_uniform", fc=64,
        dropout=(0.25, 0.5),
    ),
}


def _cnn_flat(net: HandNet) -> int:
    """Features after the second pool: two 2x2 pools quarter each side."""
    _, height, width = net.input_shape
    return net.widths[1] * (height // 4) * (width // 4)


def _glorot_limit(shape: Sequence[int]) -> float:
    """Half-width of glorot uniform for a Dense ``(in, out)`` or an HWIO conv kernel."""
    receptive = shape[0] * shape[1] if len(shape) == 4 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    return math.sqrt(6.0 / (fan_in + fan_out))


# --------------------------------------------------------------------------------------------------
# Hand-written loops; each returns (trainable parameter count, step, sync, threads the framework uses)

Loop = tuple[int, StepFn, StepFn, int]


def _no_sync() -> None:
    return None


def torch_loop(net: HandNet, batch: int, threads: int) -> Loop:
    """nn.Sequential, torch.optim.SGD, CrossEntropyLoss, loss.backward(). CPU work is synchronous."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    with suppress(RuntimeError):  # only before the first inter-op parallel work
        torch.set_num_interop_threads(threads)
    torch.manual_seed(0)
    if net.kind == "fcn":
        layers: list[nn.Module] = []
        n_in = net.input_shape[0]
        for width in net.widths:
            layers += [nn.Linear(n_in, width), nn.Sigmoid()]
            n_in = width
        model = nn.Sequential(*layers, nn.Linear(n_in, net.classes))
    else:
        channels = net.input_shape[0]
        c1, c2 = net.widths
        model = nn.Sequential(
            nn.Conv2d(channels, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.Dropout(net.dropout[0]),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c2, c2, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.Dropout(net.dropout[0]),
            nn.Flatten(),
            nn.Linear(_cnn_flat(net), net.fc), nn.ReLU(), nn.Dropout(net.dropout[1]),
            nn.Linear(net.fc, net.classes),
        )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                assert module.bias is not None
                if net.init == "uniform":
                    nn.init.uniform_(module.weight, -net.init_scale, net.init_scale)
                    nn.init.uniform_(module.bias, -net.init_scale, net.init_scale)
                else:
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
    x = torch.randn(batch, *net.input_shape)
    y = torch.randint(0, net.classes, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=net.lr, momentum=net.momentum)
    model.train()

    def step() -> None:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    params = sum(p.numel() for p in model.parameters())
    return params, step, _no_sync, torch.get_num_threads()


def jax_loop(net: HandNet, batch: int, threads: int) -> Loop:
    """Plain jax.numpy over a params pytree, jax.value_and_grad, SGD written out, one jax.jit per step
    with the params and momentum buffers donated; sync is block_until_ready on the loss.

    XLA's CPU thread pool follows the CPU affinity (JAX has no thread setting), images are NHWC.
    """
    import jax
    import jax.numpy as jnp

    keys = iter(jax.random.split(jax.random.key(0), 32))

    def dense_or_conv(shape: tuple[int, ...]) -> dict[str, jax.Array]:
        if net.init == "uniform":
            s = net.init_scale
            return {"w": jax.random.uniform(next(keys), shape, jnp.float32, -s, s),
                    "b": jax.random.uniform(next(keys), shape[-1:], jnp.float32, -s, s)}
        limit = _glorot_limit(shape)
        return {"w": jax.random.uniform(next(keys), shape, jnp.float32, -limit, limit),
                "b": jnp.zeros(shape[-1:], jnp.float32)}

    def dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), 0.0)

    def conv(x: jax.Array, layer: dict[str, jax.Array]) -> jax.Array:
        y = jax.lax.conv_general_dilated(x, layer["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + layer["b"]

    def pool(x: jax.Array) -> jax.Array:
        pooled: jax.Array = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return pooled

    params: list[dict[str, jax.Array]] = []
    if net.kind == "fcn":
        n_in = net.input_shape[0]
        for width in (*net.widths, net.classes):
            params.append(dense_or_conv((n_in, width)))
            n_in = width

        def forward(p: list[dict[str, jax.Array]], x: jax.Array, key: jax.Array | None) -> jax.Array:
            for layer in p[:-1]:
                x = jax.nn.sigmoid(x @ layer["w"] + layer["b"])
            return x @ p[-1]["w"] + p[-1]["b"]

        x = jax.random.normal(next(keys), (batch, *net.input_shape), jnp.float32)
    else:
        channels, height, width = net.input_shape
        c1, c2 = net.widths
        for shape in ((3, 3, channels, c1), (3, 3, c1, c1), (3, 3, c1, c2), (3, 3, c2, c2),
                      (_cnn_flat(net), net.fc), (net.fc, net.classes)):
            params.append(dense_or_conv(shape))
        conv_rate, fc_rate = net.dropout

        def forward(p: list[dict[str, jax.Array]], x: jax.Array, key: jax.Array | None) -> jax.Array:
            assert key is not None
            k1, k2, k3 = jax.random.split(key, 3)
            x = jax.nn.relu(conv(x, p[0]))
            x = dropout(jax.nn.relu(pool(conv(x, p[1]))), conv_rate, k1)
            x = jax.nn.relu(conv(x, p[2]))
            x = dropout(jax.nn.relu(pool(conv(x, p[3]))), conv_rate, k2)
            x = x.reshape(x.shape[0], -1)  # NHWC order; the Dense's rows are simply in that order
            x = dropout(jax.nn.relu(x @ p[4]["w"] + p[4]["b"]), fc_rate, k3)
            return x @ p[5]["w"] + p[5]["b"]

        x = jax.random.normal(next(keys), (batch, height, width, channels), jnp.float32)
    y = jax.random.randint(next(keys), (batch,), 0, net.classes, dtype=jnp.int32)

    def loss_fn(p: list[dict[str, jax.Array]], x: jax.Array, y: jax.Array, key: jax.Array | None) -> jax.Array:
        log_probs = jax.nn.log_softmax(forward(p, x, key))
        return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))

    lr, momentum = net.lr, net.momentum

    def train_step(p: Any, velocity: Any, key: jax.Array | None, x: jax.Array, y: jax.Array) -> tuple[Any, ...]:
        dropout_key = None
        if key is not None:
            key, dropout_key = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y, dropout_key)
        if momentum:
            velocity = jax.tree.map(lambda v, g: momentum * v + g, velocity, grads)
            p = jax.tree.map(lambda w, v: w - lr * v, p, velocity)
        else:
            p = jax.tree.map(lambda w, g: w - lr * g, p, grads)
        return p, velocity, key, loss

    compiled = jax.jit(train_step, donate_argnums=(0, 1))
    # A network without dropout carries no random key: passing and splitting one costs about 0.1 ms a
    # step on a 2-core machine, which dlarena's step (no Rngs state without Dropout) does not pay.
    state: dict[str, Any] = {
        "params": params,
        "velocity": jax.tree.map(jnp.zeros_like, params) if momentum else (),
        "key": next(keys) if any(net.dropout) else None,
        "loss": None,
    }
    for leaf in jax.tree.leaves(state):
        leaf.block_until_ready()  # set-up work done before the first step is timed

    def step() -> None:
        state["params"], state["velocity"], state["key"], state["loss"] = compiled(
            state["params"], state["velocity"], state["key"], x, y
        )

    def sync() -> None:
        if state["loss"] is not None:
            state["loss"].block_until_ready()

    count = sum(leaf.size for leaf in jax.tree.leaves(params))
    return count, step, sync, len(os.sched_getaffinity(0))


def tensorflow_loop(net: HandNet, batch: int, threads: int) -> Loop:
    """tf.Variables, tf.GradientTape inside one tf.function, TensorFlow's SGD training ops (no Keras).

    A tf.function call returns once its graph has run on the CPU, so there is nothing to sync.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as dlarena: INFO and WARNING lines off stderr
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.random.set_seed(0)

    def dense_or_conv(shape: tuple[int, ...]) -> tuple[Any, Any]:
        if net.init == "uniform":
            s = net.init_scale
            return (tf.Variable(tf.random.uniform(shape, -s, s)), tf.Variable(tf.random.uniform(shape[-1:], -s, s)))
        limit = _glorot_limit(shape)
        return tf.Variable(tf.random.uniform(shape, -limit, limit)), tf.Variable(tf.zeros(shape[-1:]))

    layers: list[tuple[Any, Any]] = []
    if net.kind == "fcn":
        n_in = net.input_shape[0]
        for width in (*net.widths, net.classes):
            layers.append(dense_or_conv((n_in, width)))
            n_in = width

        def forward(x: Any) -> Any:
            for w, b in layers[:-1]:
                x = tf.math.sigmoid(tf.nn.bias_add(tf.matmul(x, w), b))
            w, b = layers[-1]
            return tf.nn.bias_add(tf.matmul(x, w), b)

        x = tf.random.normal((batch, *net.input_shape))
    else:
        channels, height, width = net.input_shape
        c1, c2 = net.widths
        for shape in ((3, 3, channels, c1), (3, 3, c1, c1), (3, 3, c1, c2), (3, 3, c2, c2),
                      (_cnn_flat(net), net.fc), (net.fc, net.classes)):
            layers.append(dense_or_conv(shape))
        conv_rate, fc_rate = net.dropout

        def conv(x: Any, index: int) -> Any:
            w, b = layers[index]
            return tf.nn.bias_add(tf.nn.conv2d(x, w, strides=1, padding="SAME"), b)

        def pool(x: Any) -> Any:
            return tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")

        def forward(x: Any) -> Any:
            x = tf.nn.relu(conv(x, 0))
            x = tf.nn.dropout(tf.nn.relu(pool(conv(x, 1))), conv_rate)
            x = tf.nn.relu(conv(x, 2))
            x = tf.nn.dropout(tf.nn.relu(pool(conv(x, 3))), conv_rate)
            x = tf.reshape(x, (x.shape[0], -1))  # NHWC order
            w, b = layers[4]
            x = tf.nn.dropout(tf.nn.relu(tf.nn.bias_add(tf.matmul(x, w), b)), fc_rate)
            w, b = layers[5]
            return tf.nn.bias_add(tf.matmul(x, w), b)

        x = tf.random.normal((batch, height, width, channels))
    y = tf.random.uniform((batch,), 0, net.classes, dtype=tf.int32)
    variables = [v for layer in layers for v in layer]
    velocities = [tf.Variable(tf.zeros_like(v)) for v in variables] if net.momentum else []
    lr, momentum = net.lr, net.momentum

    def train_step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=forward(x)))
        gradients = tape.gradient(loss, variables)
        if momentum:
            for v, velocity, g in zip(variables, velocities, gradients, strict=True):
                tf.raw_ops.ResourceApplyMomentum(var=v.handle, accum=velocity.handle, lr=lr, grad=g, momentum=momentum)
        else:
            for v, g in zip(variables, gradients, strict=True):
                tf.raw_ops.ResourceApplyGradientDescent(var=v.handle, alpha=lr, delta=g)
        return loss

    signature = [tf.TensorSpec(x.shape, x.dtype), tf.TensorSpec(y.shape, y.dtype)]
    # Called through its concrete function: the tf.function wrapper binds and checks the arguments
    # at every call, 0.2-0.3 ms a step on a 2-core machine, which dlarena's step does not pay.
    concrete = tf.function(train_step, input_signature=signature).get_concrete_function()

    def step() -> None:
        concrete(x, y)

    count = sum(int(v.shape.num_elements()) for v in variables)
    return count, step, _no_sync, tf.config.threading.get_intra_op_parallelism_threads()


HAND_LOOPS: dict[str, Callable[[HandNet, int, int], Loop]] = {
    "torch": torch_loop, "jax": jax_loop, "tensorflow": tensorflow_loop,
}


def run_hand(framework: str, workload: str, batch: int, threads: int, min_time_s: float) -> dict[str, Any]:
    """Build one hand-written loop and time it as dlarena's worker times a cell with the default
    ``Measurement`` and ``min_time_s`` (the same stopping rule; no resource sampler thread)."""
    fix_malloc_thresholds()  # the same allocator rules as a dlarena worker: not part of the harness overhead
    affinity = limit_threads(threads)  # before the framework is imported
    params, step, sync, framework_threads = HAND_LOOPS[framework](HAND_NETS[workload], batch, threads)
    clock = time.perf_counter
    sync()
    start = clock()
    step()
    sync()
    first_step_s = clock() - start
    for _ in range(DEFAULT_WARMUP_STEPS):
        step()
        sync()
    samples: list[float] = []
    cpu_start, loop_start = cpu_seconds(), clock()  # as dlarena's timing loop reads it
    while len(samples) < DEFAULT_MAX_STEPS:
        start = clock()
        step()
        sync()
        end = clock()
        samples.append(end - start)
        if len(samples) >= DEFAULT_MIN_STEPS and end - loop_start >= min(min_time_s, DEFAULT_MAX_TIME_S):
            break
    loop_cpu_s = cpu_seconds() - cpu_start
    return {
        "status": "ok", "framework": framework, "workload": workload, "batch_size": batch, "params": params,
        "threads": framework_threads, "affinity": affinity, "first_step_s": first_step_s, "samples_s": samples,
        "loop_cpu_s": loop_cpu_s,
    }


# --------------------------------------------------------------------------------------------------
# The comparison


@dataclass
class Side:
    """One side of a cell over all rounds: its steady samples, its parameter count, or what failed."""

    samples: list[float] = field(default_factory=list)
    cpu_s: float = 0.0  # process CPU time of the steady loops, all threads
    params: int | None = None
    threads: int | None = None  # as the framework reports it (dlarena: its parity record)
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def cpu_per_step(self) -> float:
        return self.cpu_s / len(self.samples)


@dataclass
class CellReport:
    framework: str
    workload: str
    batch: int
    spec_params: int
    dlarena: Side = field(default_factory=Side)
    hand: Side = field(default_factory=Side)
    mismatch: str | None = None  # why the hand-written loop is not the same training step

    @property
    def problem(self) -> str | None:
        """Why this cell has no overhead figure; None when it has one."""
        if self.mismatch:
            return self.mismatch
        if self.dlarena.error:
            return f"dlarena: {self.dlarena.error}"
        if self.hand.error:
            return f"hand-written: {self.hand.error}"
        counts = {self.spec_params, self.dlarena.params, self.hand.params}
        if len(counts) != 1:
            return (f"parameter counts differ (catalogue {self.spec_params}, dlarena {self.dlarena.params}, "
                    f"hand-written {self.hand.params})")
        if self.dlarena.threads != self.hand.threads:
            return f"thread counts differ (dlarena {self.dlarena.threads}, hand-written {self.hand.threads})"
        return None

    @property
    def overhead(self) -> float:
        return (self.dlarena.median - self.hand.median) / self.hand.median

    @property
    def cpu_overhead(self) -> float:
        """The same comparison in process CPU time per step: less sensitive to other processes' load."""
        return (self.dlarena.cpu_per_step - self.hand.cpu_per_step) / self.hand.cpu_per_step

    @property
    def met(self) -> bool:
        return self.problem is None and self.overhead <= TARGET_OVERHEAD


def recipe_mismatch(name: str) -> str | None:
    """Why the hand-written net does not train as dlarena's workload does (optimizer, loss, input, classes)."""
    from dlarena.spec.catalogue import get_workload

    workload, net = get_workload(name), HAND_NETS[name]
    recipe, opt = workload.recipe, workload.recipe.optimizer
    hand = ("sgd", net.lr, net.momentum, False, 0.0, None, "mean")
    spec = (opt.name, opt.lr, opt.momentum, opt.nesterov, opt.weight_decay, recipe.grad_clip_norm,
            recipe.loss_reduction)
    if hand != spec:
        return f"hand-written recipe {hand} differs from dlarena's {spec}"
    if workload.network.input_shape != net.input_shape or workload.network.classes != net.classes:
        return "hand-written input shape or classes differ from dlarena's"
    return None


def run_json(command: list[str]) -> dict[str, Any]:
    """Run a measuring process and return the JSON object it printed last; failures become ``error``."""
    try:
        completed = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEFAULT_TIMEOUT_S,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "message": f"no result within {DEFAULT_TIMEOUT_S:g} s"}
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("{"):
            data: dict[str, Any] = json.loads(line)
            return data
    tail = completed.stderr[-ERROR_TAIL_CHARS:].strip()
    return {"status": "failed", "message": f"exit {completed.returncode}, no result; stderr: {tail}"}


def _absorb(side: Side, result: dict[str, Any]) -> None:
    if result.get("status") != "ok":
        side.error = f"{result.get('status')}: {result.get('message', '')}"
        return
    side.samples += result["samples_s"]
    side.cpu_s += result["loop_cpu_s"]
    side.threads = _threads(result)
    if side.params is not None and side.params != result["params"]:
        side.error = f"parameter count changed between rounds ({side.params}, {result['params']})"
    side.params = result["params"]


def _threads(result: dict[str, Any]) -> int:
    """The thread count the framework reports: dlarena's parity record, or the hand-written loop's."""
    threads: int = result["parity"]["threads"] if "parity" in result else result["threads"]
    return threads


def _describe(result: dict[str, Any]) -> str:
    samples = result["samples_s"]
    return (f"{statistics.median(samples) * 1e3:.3f} ms ({len(samples)} steps, {result['params']} params, "
            f"threads {_threads(result)})")


def measure(framework: str, workload: str, rounds: int, min_time_s: float, threads: int) -> CellReport:
    from dlarena.orchestrate.executor import worker_command
    from dlarena.plan.cell import Cell, Measurement
    from dlarena.spec.catalogue import get_workload

    spec = get_workload(workload)
    batch = spec.default_batch_size
    report = CellReport(framework, workload, batch, spec.params, mismatch=recipe_mismatch(workload))
    if report.mismatch:
        return report
    cell = Cell(framework=framework, workload=workload, scenario="train", batch_size=batch, threads=threads,
                measurement=Measurement(min_time_s=min_time_s))
    dlarena_command = worker_command(cell)
    hand_command = [sys.executable, os.path.abspath(__file__), "--hand", framework, workload, "--threads",
                    str(threads), "--batch", str(batch), "--min-time", str(min_time_s)]
    for index in range(rounds):
        # Alternate which side goes first (ABBA...), so that an order effect cancels over the rounds.
        if index % 2 == 0:
            ours, theirs = run_json(dlarena_command), run_json(hand_command)
        else:
            theirs, ours = run_json(hand_command), run_json(dlarena_command)
        _absorb(report.dlarena, ours)
        _absorb(report.hand, theirs)
        if report.dlarena.error or report.hand.error:
            break
        print(f"{framework} {workload} round {index + 1}/{rounds}: dlarena {_describe(ours)}, "
              f"hand-written {_describe(theirs)}", file=sys.stderr, flush=True)
    return report


def print_table(reports: list[CellReport], threads: int) -> None:
    """The Markdown table. The target applies to the wall-clock medians; the CPU-time column (process
    CPU time per steady step, all threads) is there to read them on a loaded machine."""
    header = ("framework", "workload", "batch", "params", "dlarena ms", "hand-written ms", "overhead",
              f"within {TARGET_OVERHEAD:.0%}", "CPU overhead", "note")
    right = {"batch", "params", "dlarena ms", "hand-written ms", "overhead", "CPU overhead"}
    rows: list[tuple[str, ...]] = []
    for r in reports:
        lead = (r.framework, r.workload, str(r.batch), str(r.spec_params))
        problem = r.problem
        if problem is not None:
            rows.append((*lead, "-", "-", "-", "NO", "-", f"not reported: {problem}"))
            continue
        rows.append((*lead, f"{r.dlarena.median * 1e3:.3f}", f"{r.hand.median * 1e3:.3f}", f"{r.overhead:+.1%}",
                     "yes" if r.met else "NO", f"{r.cpu_overhead:+.1%}", ""))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(
            cell.rjust(width) if name in right else cell.ljust(width)
            for cell, width, name in zip(cells, widths, header, strict=True)
        ) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if name in right else "-" * (w + 2)
                          for w, name in zip(widths, header, strict=True)) + "|"
    print(f"Train step, CPU, float32, {threads} thread(s); medians over the steady steps of all rounds.\n")
    print(line(header))
    print(rule)
    for row in rows:
        print(line(row))
    met = sum(r.met for r in reports)
    print(f"\n{met} of {len(reports)} cells met the target of at most {TARGET_OVERHEAD:.0%} harness overhead.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    parser.add_argument("--workloads", nargs="+", choices=sorted(HAND_NETS), default=list(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"default {DEFAULT_ROUNDS}")
    parser.add_argument("--min-time", type=float, default=DEFAULT_MIN_TIME_S,
                        help=f"seconds of timed steps per process (default {DEFAULT_MIN_TIME_S:g})")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=f"default {DEFAULT_THREADS}")
    parser.add_argument("--hand", nargs=2, metavar=("FRAMEWORK", "WORKLOAD"),
                        help="internal: run one hand-written loop and print its result as JSON")
    parser.add_argument("--batch", type=int, help="internal, with --hand: the batch size")
    args = parser.parse_args(argv)
    if args.hand:
        framework, workload = args.hand
        if framework not in HAND_LOOPS or workload not in HAND_NETS or args.batch is None:
            parser.error("--hand needs a known FRAMEWORK and WORKLOAD, and --batch")
        print(json.dumps(run_hand(framework, workload, args.batch, args.threads, args.min_time)))
        return 0
    reports = [measure(framework, workload, args.rounds, args.min_time, args.threads)
               for framework in args.frameworks for workload in args.workloads]
    print_table(reports, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
