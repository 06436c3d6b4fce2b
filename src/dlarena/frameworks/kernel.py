"""The framework core: everything a framework module would otherwise write again.

A framework module built on the kernel writes only what differs between frameworks: a ``Model``
subclass that builds the spec's layers in the framework's own idiomatic API and steps them, a
``Conventions`` record saying how its parameters are laid out, and its optimizer spellings. The
kernel does the rest, the same way for every framework:

* starting weights (``spec.weights.initial_weights``, drawn in NumPy by the recipe's rule) and the
  synthetic batch (``spec.weights.canonical_batch``), so that no framework's random generator or
  initialiser is involved and every framework starts timed steps from the same numbers;
* one binding type (``Binding``): a canonical parameter, where it lives in the framework, and its
  layout plan (transposes, channels-last rows after a Flatten, gate orders), with generic load,
  export and gradient read-back;
* the loss as data (summed softmax cross-entropy over every label, divided by ``loss_divisor``) and
  the optimizer as data (``optimizer_arguments``: the recipe's fields in the framework's spelling,
  refusing a field the framework cannot honour rather than dropping it);
* the runners the worker times, the checker ``dlarena verify`` uses and the trainer of the accuracy
  scenario (base.Runner, base.Checker, base.Trainer), and the backend that makes them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dlarena.frameworks import layout
from dlarena.frameworks.base import (
    CHECK_PRECISIONS,
    PRECISIONS,
    SCENARIOS,
    Parity,
    StepRequest,
    Unsupported,
    require,
    require_check_precision,
)
from dlarena.frameworks.precision import GPU_ONLY_REASON
from dlarena.frameworks.precision import precision as precision_of
from dlarena.spec import Network, Workload
from dlarena.spec.layers import GRU, LSTM, Activation, Conv2D, Dense, Dropout, Flatten, MultiHeadSelfAttention, Shape
from dlarena.spec.recipe import Optimizer, Recipe
from dlarena.spec.weights import canonical_batch, initial_weights, layer_params, walk
from dlarena.spec.workload import DATA_PARALLEL_SCENARIO

if TYPE_CHECKING:
    from dlarena.frameworks.data_parallel import Replicas

# --------------------------------------------------------------------------------------------------
# Layouts: how a framework stores each canonical parameter


@dataclass(frozen=True)
class Conventions:
    """How a framework lays out images and parameters, against the canonical layouts of spec/weights.py."""

    channels_last: bool = False  # images (N, H, W, C); the canonical batch is (N, C, H, W)
    dense_kernel: str = "in_out"  # "out_in": stored transposed (PyTorch Linear, Chainer, MXNet, Theano-free ones)
    conv_kernel: str = "oihw"  # "hwio": TensorFlow, Keras, Flax
    recurrent_kernel: str = "in_out"  # "out_in": (G*H, in), as PyTorch and MXNet's fused RNN
    lstm_gates: str = layout.LSTM_CANONICAL
    gru_gates: str = layout.GRU_CANONICAL


@dataclass(frozen=True)
class ParamLayout:
    """Canonical -> framework for one parameter: rows permuted after a channels-last Flatten, gate
    blocks reordered, then transposed. ``to_canonical`` undoes the same steps in reverse order."""

    rows_chw: Shape | None = None
    gates: tuple[str, str] | None = None  # (canonical order, framework order)
    transpose: tuple[int, ...] | None = None

    def to_framework(self, value: np.ndarray) -> np.ndarray:
        if self.rows_chw is not None:
            value = layout.flattened_rows_channels_last(value, self.rows_chw)
        if self.gates is not None:
            value = layout.reorder_gates(value, *self.gates)
        if self.transpose is not None:
            value = value.transpose(self.transpose)
        return np.ascontiguousarray(value)

    def to_canonical(self, value: np.ndarray) -> np.ndarray:
        if self.transpose is not None:
            value = value.transpose(np.argsort(self.transpose))
        if self.gates is not None:
            value = layout.reorder_gates(value, self.gates[1], self.gates[0])
        if self.rows_chw is not None:
            value = layout.flattened_rows_channels_last(value, self.rows_chw, inverse=True)
        return np.ascontiguousarray(value)


_KERNEL_ROLES = ("kernel", "input_kernel", "recurrent_kernel")
# Layers between a Flatten and its Dense that leave the order of the features as it is.
_ORDER_KEEPING = (Dropout, Activation, Flatten)


def layout_plan(network: Network, conventions: Conventions) -> dict[str, ParamLayout]:
    """Every canonical parameter's layout in a framework with these conventions (the one plan)."""
    plan: dict[str, ParamLayout] = {}
    rows_chw: Shape | None = None  # a channels-last Flatten of a (C, H, W) map waits for its Dense
    for path, layer, shape in walk(network.layers, network.input_shape):
        if isinstance(layer, Flatten):
            rows_chw = shape if conventions.channels_last and len(shape) == 3 else None
        for spec in layer_params(path, layer, shape):
            entry = ParamLayout()
            if isinstance(layer, Conv2D) and spec.role == "kernel" and conventions.conv_kernel == "hwio":
                entry = ParamLayout(transpose=(2, 3, 1, 0))
            elif isinstance(layer, Dense | MultiHeadSelfAttention) and spec.role == "kernel":
                # attention's projections are dense kernels (D, 3D) and (D, D), laid out as the framework's
                entry = ParamLayout(rows_chw=rows_chw,
                                    transpose=(1, 0) if conventions.dense_kernel == "out_in" else None)
            elif isinstance(layer, LSTM | GRU):
                canonical = layout.LSTM_CANONICAL if isinstance(layer, LSTM) else layout.GRU_CANONICAL
                target = conventions.lstm_gates if isinstance(layer, LSTM) else conventions.gru_gates
                gates = (canonical, target) if target != canonical else None
                transposed = spec.role in _KERNEL_ROLES and conventions.recurrent_kernel == "out_in"
                entry = ParamLayout(gates=gates, transpose=(1, 0) if transposed else None)
            elif isinstance(layer, Dense) and rows_chw is not None:
                entry = ParamLayout()  # a bias: one per output, untouched by the rows' order
            plan[spec.name] = entry
        if not isinstance(layer, _ORDER_KEEPING):
            rows_chw = None
    return plan


def flattens_into_dense(network: Network) -> frozenset[str]:
    """The paths of the Flattens of a ``(C, H, W)`` map whose Dense ``layout_plan`` gives channels-last
    rows. A channels-last module flattens these as the map lies, (H, W, C); any other flattened map
    must be put back in (C, H, W) order first, since what follows it (a batch norm, a Dense past a
    layer that is not order-keeping) holds its parameters in canonical feature order."""
    found: set[str] = set()
    pending: str | None = None  # the path of a Flatten of a (C, H, W) map, waiting for its Dense
    for path, layer, shape in walk(network.layers, network.input_shape):
        if isinstance(layer, Flatten):
            pending = path if len(shape) == 3 else None
        elif isinstance(layer, Dense) and pending is not None:
            found.add(pending)
        if not isinstance(layer, _ORDER_KEEPING):
            pending = None
    return frozenset(found)


def batch_to_framework(inputs: np.ndarray, conventions: Conventions) -> np.ndarray:
    """A canonical batch (images channels-first) in the framework's layout."""
    return layout.images_channels_last(inputs) if conventions.channels_last else inputs


@dataclass(frozen=True)
class Binding:
    """One canonical parameter: its name, where it lives in the framework (``handle``, whatever the
    module's ``read``/``write`` take), and its layout plan."""

    name: str
    handle: Any
    layout: ParamLayout = field(default_factory=ParamLayout)


# --------------------------------------------------------------------------------------------------
# Recipes as data


def loss_divisor(network: Network, recipe: Recipe, batch_size: int) -> int:
    """What the summed softmax cross-entropy of a batch is divided by.

    ``mean``: every labelled element (samples, or every token of a language model); ``sum_over_batch``:
    the batch size (TensorFlow's PTB model and DLBench's LSTM sum over time steps)."""
    if recipe.loss_reduction == "sum_over_batch":
        return batch_size
    return batch_size * math.prod(network.label_shape)


# The recipe's defaults (spec/recipe.py). A framework whose spelling lacks a field can run a recipe
# that leaves the field at this value (its spelling must then map every field whose framework default
# differs), and refuses one that changes it.
_DEFAULTS = Optimizer(name="sgd", lr=0.0)
_FIELDS_BY_OPTIMIZER: dict[str, tuple[str, ...]] = {
    "sgd": ("lr", "momentum", "nesterov", "weight_decay"),
    "adam": ("lr", "beta1", "beta2", "eps", "weight_decay"),
    "adamw": ("lr", "beta1", "beta2", "eps", "weight_decay"),
    "adadelta": ("lr", "rho", "eps", "weight_decay"),
    "rmsprop": ("lr", "rho", "eps", "weight_decay"),
}

# name -> (the framework's optimizer, {recipe field: the framework's keyword}). Key "sgd_momentum"
# (when present) is used for SGD with momentum, "sgd" otherwise.
OptimizerSpelling = Mapping[str, tuple[str, Mapping[str, str]]]


def optimizer_arguments(
    optimizer: Optimizer, spelling: OptimizerSpelling, framework: str,
) -> tuple[str, dict[str, Any]]:
    """The framework's optimizer and keyword arguments for the recipe's optimizer.

    A field the spelling does not map must be at the recipe's default, or the cell is unsupported
    with the field named: a recipe is never silently changed."""
    momentum = optimizer.name == "sgd" and bool(optimizer.momentum) and "sgd_momentum" in spelling
    key = "sgd_momentum" if momentum else optimizer.name
    if key not in spelling:
        raise Unsupported(f"{framework} has no spelling of the optimizer {optimizer.name!r}; it has "
                          f"{', '.join(sorted(spelling))}")
    name, keywords = spelling[key]
    arguments: dict[str, Any] = {}
    for field_name in _FIELDS_BY_OPTIMIZER[optimizer.name]:
        value = getattr(optimizer, field_name)
        if field_name in keywords:
            arguments[keywords[field_name]] = value
        elif value != getattr(_DEFAULTS, field_name):
            raise Unsupported(f"{framework}'s {name} has no {field_name} setting, and the recipe sets it to {value}")
    return name, arguments


def clip_scale(gradient_norm: float, clip_norm: float | None) -> float:
    """The factor that global-norm clipping multiplies every gradient by (TensorFlow's clip_by_global_norm)."""
    if clip_norm is None or gradient_norm <= clip_norm:
        return 1.0
    return clip_norm / gradient_norm


# --------------------------------------------------------------------------------------------------
# What a framework module writes


class Model(ABC):
    """A network built by a framework module from the spec, in one precision, on one device.

    Built in training form when ``training`` is true (the recipe's optimizer attached; dropout on and
    batch norm on batch statistics while stepping). ``logits`` and ``gradients`` always compute in
    inference mode (dropout off, batch norm on running statistics), as base.Checker requires.
    Arrays in and out are in the framework's layout (the kernel converts), batches as built by
    ``device_batch``.
    """

    conventions: ClassVar[Conventions] = Conventions()

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool) -> None:
        self.workload, self.network, self.recipe = workload, workload.network, workload.recipe
        self.precision, self.device, self.batch_size, self.training = precision, device, batch_size, training
        self.precision_info = precision_of(precision)
        # What weights and floating inputs are handed over in (bfloat16 as float32: the framework rounds).
        self.dtype = self.precision_info.host_dtype

    @abstractmethod
    def bindings(self) -> list[Binding]:
        """Every canonical parameter and where it lives, built with ``self.bind``."""

    @abstractmethod
    def read(self, handle: Any) -> np.ndarray:
        """A parameter's value as NumPy, in the framework's layout."""

    @abstractmethod
    def write(self, handle: Any, value: np.ndarray) -> None:
        """Set a parameter (``value`` is in the framework's layout and the model's precision)."""

    @abstractmethod
    def logits(self, inputs: Any) -> np.ndarray:
        """Inference-mode logits of a device batch, as NumPy."""

    @abstractmethod
    def gradients(self, inputs: Any, labels: Any) -> tuple[float, dict[str, np.ndarray]]:
        """Inference-mode loss and its gradient for every canonical name, in the framework's layout."""

    @abstractmethod
    def train_step(self, inputs: Any, labels: Any) -> Any:
        """One optimizer step in training mode; returns the loss as something ``float()`` reads."""

    def infer_step(self, inputs: Any) -> Any:
        """One timed inference step; by default ``logits`` (a module whose logits stay lazy overrides it)."""
        return self.logits(inputs)

    def device_batch(self, array: np.ndarray) -> Any:
        """A batch (inputs in the framework's layout, or labels) as the framework takes it."""
        return array

    def reset_statistics(self) -> None:
        """Batch norm's running statistics back to mean 0, variance 1 (after weights are loaded)."""
        return None

    def sync(self) -> None:
        """Wait for queued device work (a CPU framework that runs synchronously needs nothing)."""
        return None

    def device_memory_peak_bytes(self) -> int | None:
        """The framework allocator's peak on a GPU, where it tells (the worker reads it from the runner)."""
        return None

    def trainable_params(self) -> int:
        """The parameter count as the framework reports it; by default the bound parameters' sizes."""
        return sum(int(self.read(binding.handle).size) for binding in self.bindings())

    def parity(self) -> Parity:
        """What the framework really ran with; the kernel adds dtype and layout."""
        return Parity()

    def join(self, replicas: Replicas) -> str:
        """Join the framework's data-parallel runtime as one of ``replicas`` (after the starting weights
        are loaded), so that each training step averages the gradients across them; returns the
        runtime's name. A module without one leaves this, and its train-dp cells are unsupported."""
        raise Unsupported(f"dlarena's module for this framework has no data-parallel runtime (replica"
                          f" {replicas.rank} of {replicas.size} could not join)")

    def bind(self, handles: Mapping[str, Any]) -> list[Binding]:
        """Bindings for canonical name -> handle, with this framework's layout plan; every canonical
        parameter must be there, so that a module that misses one fails at build, not in verify."""
        plan = layout_plan(self.network, self.conventions)
        layout.same_keys(list(plan), dict.fromkeys(handles, np.zeros(0)))
        return [Binding(name, handles[name], plan[name]) for name in plan]


# --------------------------------------------------------------------------------------------------
# What the kernel makes of a Model: the worker's runner, checker and trainer


class _Wrapped:
    def __init__(self, model: Model) -> None:
        self.model = model
        self._bindings = model.bindings()

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        for binding in self._bindings:
            value = weights[binding.name].astype(self.model.dtype)
            self.model.write(binding.handle, binding.layout.to_framework(value))
        self.model.reset_statistics()

    def export_weights(self) -> dict[str, np.ndarray]:
        return {binding.name: binding.layout.to_canonical(self.model.read(binding.handle))
                for binding in self._bindings}

    def trainable_params(self) -> int:
        return self.model.trainable_params()

    def sync(self) -> None:
        self.model.sync()

    def device_memory_peak_bytes(self) -> int | None:
        return self.model.device_memory_peak_bytes()

    def parity(self) -> Parity:
        parity = self.model.parity()
        image = len(self.model.network.input_shape) == 3 and self.model.network.input_kind != "tokens"
        return replace(parity, dtype=parity.dtype or self.model.precision,
                       layout=parity.layout or (("NHWC" if self.model.conventions.channels_last else "NCHW")
                                                if image else None))

    def _inputs(self, inputs: np.ndarray) -> Any:
        return self.model.device_batch(batch_to_framework(inputs, self.model.conventions))


class KernelRunner(_Wrapped):
    """base.Runner: the synthetic batch on the device, stepped by train_step or infer_step."""

    def __init__(self, model: Model, scenario: str, seed: int, shard: tuple[int, int] | None = None) -> None:
        """``shard`` (rank, replicas): this replica's slice of the global batch of ``model.batch_size``
        times replicas, the slices in rank order (frameworks/data_parallel.py)."""
        super().__init__(model)
        self.starting_weights = initial_weights(model.network, model.recipe.init, seed)
        self.load_weights(self.starting_weights)
        rank, replicas = shard or (0, 1)
        inputs, labels = canonical_batch(model.network, model.batch_size * replicas, seed)
        if model.network.input_kind != "tokens":
            inputs = inputs.astype(model.dtype)
        part = slice(rank * model.batch_size, (rank + 1) * model.batch_size)
        # The host arrays, whole and this replica's slice, for the data-parallel check.
        self.whole_batch, self.shard_batch = (inputs, labels), (inputs[part], labels[part])
        self.inputs = self._inputs(inputs[part])
        self.labels = model.device_batch(labels[part])
        self.scenario = scenario
        self.last: Any = None  # the last step's output, kept so that lazy frameworks compute it

    def step(self) -> None:
        if self.scenario in ("train", DATA_PARALLEL_SCENARIO):
            self.last = self.model.train_step(self.inputs, self.labels)
        else:
            self.last = self.model.infer_step(self.inputs)


class KernelChecker(_Wrapped):
    """base.Checker on a Model built in inference form."""

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.logits(self._inputs(inputs)))

    def loss_and_gradients(self, inputs: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        loss, gradients = self.model.gradients(self._inputs(inputs), self.model.device_batch(labels))
        return float(loss), {binding.name: binding.layout.to_canonical(np.asarray(gradients[binding.name]))
                             for binding in self._bindings}


class KernelTrainer(_Wrapped):
    """base.Trainer: the Model in training form, fed the worker's real batches."""

    def train_step(self, inputs: np.ndarray, labels: np.ndarray) -> Any:
        return self.model.train_step(self._inputs(inputs), self.model.device_batch(labels))

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.logits(self._inputs(inputs)))


class KernelBackend:
    """base.Backend for a module that provides a ``Model`` class: set ``model_class`` and ``devices``,
    override ``version`` and, where the framework has one, ``flush_denormals``."""

    name: str = ""
    model_class: ClassVar[type[Model]]
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    scenarios: ClassVar[tuple[str, ...]] = SCENARIOS
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS

    def __init__(self, threads: int, **options: Any) -> None:
        self.threads = threads
        self.options = options

    def version(self) -> str:
        raise NotImplementedError

    def _device(self, device: str) -> str:
        if device not in self.devices:
            raise Unsupported(f"the {self.name} backend runs on {', '.join(self.devices)}, not {device!r}")
        return device

    def build(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool) -> Model:
        if precision_of(precision).gpu_only and device == "cpu":
            raise Unsupported(GPU_ONLY_REASON)
        return self.model_class(workload, precision, self._device(device), batch_size, training, **self.options)

    def prepare(self, request: StepRequest) -> KernelRunner:
        require(request, self.name, self.scenarios, self.precisions)
        model = self.build(request.workload, request.precision, request.device, request.batch_size,
                           training=request.scenario == "train")
        return KernelRunner(model, request.scenario, request.seed)

    def prepare_replica(self, request: StepRequest, replicas: Replicas) -> tuple[KernelRunner, str]:
        """One replica of a train-dp cell: its slice of the global batch, joined to the framework's
        data-parallel runtime (whose name comes second)."""
        require(request, self.name, (DATA_PARALLEL_SCENARIO,), self.precisions)
        model = self.build(request.workload, request.precision, request.device, request.batch_size // replicas.size,
                           training=True)
        runner = KernelRunner(model, request.scenario, request.seed, shard=(replicas.rank, replicas.size))
        return runner, model.join(replicas)

    def checker(self, workload: Workload, device: str, precision: str = "float32") -> KernelChecker:
        # float64 for verify's gradients, and every precision the backend times (its bfloat16 is checked too)
        require_check_precision(precision, self.name, tuple(dict.fromkeys((*CHECK_PRECISIONS, *self.precisions))))
        # Batch size 0: the checker takes batches of any size (a module that binds shapes does so lazily).
        return KernelChecker(self.build(workload, precision, device, 0, training=False))

    def trainer(self, request: StepRequest) -> KernelTrainer:
        require(replace(request, scenario="train"), self.name, self.scenarios, self.precisions)
        return KernelTrainer(self.build(request.workload, request.precision, request.device, request.batch_size,
                                        training=True))

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        raise NotImplementedError

    def flush_denormals(self) -> str | None:
        """Flush-to-zero in the worker's thread (denormals.flush_calling_thread): a module whose
        framework has its own switch overrides this; the probe measures what really happened."""
        from dlarena_runner.denormals import flush_calling_thread

        return flush_calling_thread()
