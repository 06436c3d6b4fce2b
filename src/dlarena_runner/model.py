"""The kernel of the frameworks that run on an old interpreter (CNTK on 3.6, Caffe and Caffe2 on 3.9).

Their workers cannot import dlarena (Python 3.11 code), so the host writes each network as JSON
(``dlarena.frameworks.job``), with its weights and batches as ``.npz``, and this module reads them
back: a ``Network`` view of the spec, and a ``Model`` base class with the same parts as the host's
``dlarena.frameworks.kernel.Model`` (handles, read, write, logits, gradients, train_step). As there,
a framework module writes only what differs; this converts weights and gradients between the
canonical layouts of ``dlarena/spec/weights.py`` and the framework's, from its ``conventions``.

Python 3.6 and NumPy (imported here, never by the rest of ``dlarena_runner``): see the package's
docstring for what that excludes.
"""

from typing import Any, ClassVar, Dict, List, Optional, Tuple

import numpy as np

from dlarena_runner.errors import Unavailable as Unavailable
from dlarena_runner.errors import Unsupported as Unsupported
from dlarena_runner.layout import GRU_CANONICAL, LSTM_CANONICAL, reorder_gates

# The keys a module's ``conventions`` may set, with the canonical value of each (the host's
# kernel.Conventions, without channels-last, which none of the old-interpreter frameworks needs).
CANONICAL_CONVENTIONS = {
    "dense_kernel": "in_out",  # "out_in": stored transposed (Caffe's InnerProduct, Caffe2's FC)
    "conv_kernel": "oihw",  # "hwio": TensorFlow's
    "recurrent_kernel": "in_out",  # "out_in": (G*H, in)
    "lstm_gates": LSTM_CANONICAL,
    "gru_gates": GRU_CANONICAL,
}
_KERNEL_ROLES = ("kernel", "input_kernel", "recurrent_kernel")


class Param:
    """One canonical parameter of a layer: its name (``3.kernel``), shape and role."""

    def __init__(self, name: str, shape: Tuple[int, ...], role: str) -> None:
        self.name, self.shape, self.role = name, tuple(shape), role

    def __repr__(self) -> str:
        return f"Param({self.name!r}, {self.shape!r}, {self.role!r})"


class Layer:
    """One layer of the spec, as the host wrote it: ``type`` (the spec's class name), ``path``, the
    per-sample ``input_shape`` and ``output_shape``, the spec's fields as attributes (windows,
    strides and paddings always as (height, width) pairs), its ``params``, and for a Residual its
    ``body`` and ``shortcut``, for a Concat its ``branches``."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self.fields: Dict[str, Any] = {}
        for key, value in data.items():
            if key in ("body", "shortcut"):
                value = [Layer(item) for item in value]
            elif key == "branches":
                value = [[Layer(item) for item in branch] for branch in value]
            elif key == "params":
                value = [Param(item["name"], item["shape"], item["role"]) for item in value]
            elif key in ("input_shape", "output_shape") or isinstance(value, list):
                value = tuple(value)
            self.fields[key] = value
            setattr(self, key, value)
        self.type: str = data["type"]
        self.path: str = data["path"]

    def __getattr__(self, name: str) -> Any:
        # Only for a name __init__ did not set: the spec's fields differ by type, so a type checker is
        # told here that a layer has whatever its type has, and a missing one is a clear error.
        raise AttributeError(f"a {self.__dict__.get('type')} layer has no field {name!r}")

    def __repr__(self) -> str:
        return f"Layer({self.type} at {self.path})"


class Network:
    """The spec's network: ``input_shape`` (per sample), ``input_kind``, ``classes``, ``label_kind``,
    ``vocab`` and ``layers`` (a list of ``Layer``)."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self.input_shape: Tuple[int, ...] = tuple(data["input_shape"])
        self.input_kind: str = data["input_kind"]
        self.classes: int = data["classes"]
        self.label_kind: str = data["label_kind"]
        self.vocab: int = data["vocab"]
        self.layers = [Layer(item) for item in data["layers"]]

    def leaves(self) -> List[Layer]:
        """Every layer that is not a container, in canonical order (the order of the parameters)."""
        found: List[Layer] = []
        pending = list(reversed(self.layers))
        while pending:
            layer = pending.pop()
            if layer.type == "Residual":
                pending.extend(reversed(list(layer.body) + list(layer.shortcut)))
            elif layer.type == "Concat":
                pending.extend(reversed([item for branch in layer.branches for item in branch]))
            else:
                found.append(layer)
        return found

    def params(self) -> List[Param]:
        return [param for layer in self.leaves() for param in layer.params]


class ParamLayout:
    """Canonical -> framework for one parameter: gate blocks reordered, then transposed."""

    def __init__(self, gates: Optional[Tuple[str, str]] = None, transpose: Optional[Tuple[int, ...]] = None) -> None:
        self.gates, self.transpose = gates, transpose

    def to_framework(self, value: Any) -> Any:
        if self.gates is not None:
            value = reorder_gates(value, self.gates[0], self.gates[1])
        if self.transpose is not None:
            value = value.transpose(self.transpose)
        return np.ascontiguousarray(value)

    def to_canonical(self, value: Any) -> Any:
        if self.transpose is not None:
            value = value.transpose(np.argsort(self.transpose))
        if self.gates is not None:
            value = reorder_gates(value, self.gates[1], self.gates[0])
        return np.ascontiguousarray(value)


def layout_plan(network: Network, conventions: Dict[str, str]) -> Dict[str, ParamLayout]:
    """Every canonical parameter's layout in a framework with these conventions."""
    unknown = sorted(set(conventions) - set(CANONICAL_CONVENTIONS))
    if unknown:
        raise ValueError(f"unknown conventions {unknown}; known: {sorted(CANONICAL_CONVENTIONS)}")
    settings = dict(CANONICAL_CONVENTIONS, **conventions)
    plan: Dict[str, ParamLayout] = {}
    for layer in network.leaves():
        for param in layer.params:
            entry = ParamLayout()
            if layer.type == "Conv2D" and param.role == "kernel" and settings["conv_kernel"] == "hwio":
                entry = ParamLayout(transpose=(2, 3, 1, 0))
            elif layer.type == "Dense" and param.role == "kernel" and settings["dense_kernel"] == "out_in":
                entry = ParamLayout(transpose=(1, 0))
            elif layer.type in ("LSTM", "GRU"):
                canonical = LSTM_CANONICAL if layer.type == "LSTM" else GRU_CANONICAL
                target = settings["lstm_gates"] if layer.type == "LSTM" else settings["gru_gates"]
                transposed = param.role in _KERNEL_ROLES and settings["recurrent_kernel"] == "out_in"
                entry = ParamLayout(gates=(canonical, target) if target != canonical else None,
                                    transpose=(1, 0) if transposed else None)
            plan[param.name] = entry
    return plan


class Model:
    """A network built by a framework module from the spec, in one precision.

    Built in training form when ``training`` is true (the recipe's optimizer attached; dropout on and
    batch norm on batch statistics while stepping). ``logits`` and ``gradients`` always compute in
    inference mode (dropout off, batch norm on running statistics). Arrays in and out of the methods
    a module writes are in the framework's layout; ``load_weights``, ``export_weights`` and
    ``canonical_gradients`` convert. ``batch_size`` 0 (verification): any batch size.
    """

    conventions: ClassVar[Dict[str, str]] = {}

    def __init__(self, network: Network, recipe: Dict[str, Any], precision: str, batch_size: int,
                 training: bool, loss_divisor: int) -> None:
        self.network, self.recipe = network, recipe
        self.precision, self.dtype = precision, np.dtype(precision)
        self.batch_size, self.training, self.loss_divisor = batch_size, training, loss_divisor
        self._plan: Optional[Dict[str, ParamLayout]] = None

    # What a framework module writes -------------------------------------------------------------

    def handles(self) -> Dict[str, Any]:
        """Canonical parameter name -> where it lives (whatever ``read`` and ``write`` take)."""
        raise NotImplementedError

    def read(self, handle: Any) -> Any:
        """A parameter's value as NumPy, in the framework's layout."""
        raise NotImplementedError

    def write(self, handle: Any, value: Any) -> None:
        """Set a parameter (``value`` in the framework's layout and the model's precision)."""
        raise NotImplementedError

    def logits(self, inputs: Any) -> Any:
        """Inference-mode logits of a batch, as NumPy."""
        raise NotImplementedError

    def gradients(self, inputs: Any, labels: Any) -> Tuple[float, Dict[str, Any]]:
        """Inference-mode loss and its gradient for every canonical name, in the framework's layout."""
        raise NotImplementedError

    def train_step(self, inputs: Any, labels: Any) -> Any:
        """One optimizer step in training mode; returns the loss as something ``float()`` reads."""
        raise NotImplementedError

    def infer_step(self, inputs: Any) -> Any:
        """One timed inference step; by default ``logits``."""
        return self.logits(inputs)

    def device_batch(self, array: Any) -> Any:
        """A batch (inputs or labels) as the framework's steps take it, made once before timing."""
        return array

    def reset_statistics(self) -> None:
        """Batch norm's running statistics back to mean 0, variance 1 (after weights are loaded)."""
        return None

    def sync(self) -> None:
        """Wait for queued work (a CPU framework that runs synchronously needs nothing)."""
        return None

    def trainable_params(self) -> int:
        """The parameter count as the framework reports it; by default the bound parameters' sizes."""
        return sum(int(np.asarray(self.read(handle)).size) for handle in self.handles().values())

    def parity(self) -> Dict[str, Any]:
        """What the framework really ran with (``threads``, ``execution``, ``details``)."""
        return {}

    # What the kernel does with it ---------------------------------------------------------------

    def plan(self) -> Dict[str, ParamLayout]:
        if self._plan is None:
            self._plan = layout_plan(self.network, self.conventions)
            handles = self.handles()
            missing = sorted(set(self._plan) - set(handles))
            extra = sorted(set(handles) - set(self._plan))
            if missing or extra:
                raise ValueError(f"the module's parameters differ from the spec's: missing {missing}, "
                                 f"unexpected {extra}")
        return self._plan

    def load_weights(self, weights: Dict[str, Any]) -> None:
        handles = self.handles()
        for name, layout in self.plan().items():
            self.write(handles[name], layout.to_framework(np.asarray(weights[name]).astype(self.dtype)))
        self.reset_statistics()

    def export_weights(self) -> Dict[str, Any]:
        handles = self.handles()
        return {name: layout.to_canonical(np.asarray(self.read(handles[name]))) for name, layout in self.plan().items()}

    def canonical_gradients(self, inputs: Any, labels: Any) -> Tuple[float, Dict[str, Any]]:
        loss, gradients = self.gradients(inputs, labels)
        return float(loss), {name: layout.to_canonical(np.asarray(gradients[name]))
                             for name, layout in self.plan().items()}
