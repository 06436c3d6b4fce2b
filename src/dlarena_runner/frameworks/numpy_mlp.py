"""A test-only job framework: multilayer perceptrons in NumPy (Dense, Activation, Dropout, Flatten).

It lets the tests drive the whole old-interpreter path (the host's job, the job worker, its record,
verification) with no framework installed, the way ``dlarena.frameworks.fault`` does for the host's
worker. Registered only with the fault frameworks (``DLARENA_FAULT_FRAMEWORKS=1``). SGD with
momentum and Adam as PyTorch spells them, summed softmax cross-entropy over the loss divisor.
"""

from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple

import numpy as np

from dlarena_runner import model as kernel
from dlarena_runner.model import Layer, Unsupported

_LAYERS = ("Dense", "Activation", "Dropout", "Flatten")
# Each activation and its derivative, written in terms of the activation's output.
_ACTIVATIONS: Dict[str, Tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "relu": (lambda x: np.maximum(x, 0), lambda y: (y > 0).astype(y.dtype)),
    "tanh": (np.tanh, lambda y: 1 - y * y),
    "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), lambda y: y * (1 - y)),
}


def version() -> str:
    return "numpy " + np.__version__


def set_threads(threads: int) -> Optional[int]:
    return None  # NumPy's BLAS reads OPENBLAS_NUM_THREADS, which the worker set before import


def denormal_product(a: Any, b: Any) -> Any:
    return a @ b


class NumpyModel(kernel.Model):
    # Stored (out, in), so that the kernel's transpose is exercised.
    conventions: ClassVar[Dict[str, str]] = {"dense_kernel": "out_in"}

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.layers: List[Layer] = self.network.layers
        for layer in self.layers:
            if layer.type not in _LAYERS:
                raise Unsupported("numpy-job runs {}, not {}".format(", ".join(_LAYERS), layer.type))
        self.values: Dict[str, Any] = {param.name: np.zeros(param.shape[::-1] if param.role == "kernel"
                                                            else param.shape, self.dtype)
                                       for param in self.network.params()}
        self.velocity = {name: np.zeros_like(value) for name, value in self.values.items()}
        self.squares = {name: np.zeros_like(value) for name, value in self.values.items()}  # Adam's
        self.steps = 0
        self.rng = np.random.RandomState(0)

    def handles(self) -> Dict[str, Any]:
        return {name: name for name in self.values}

    def read(self, handle: Any) -> Any:
        return self.values[handle]

    def write(self, handle: Any, value: Any) -> None:
        self.values[handle] = np.array(value, dtype=self.dtype)

    def _forward(self, inputs: Any, training: bool) -> Tuple[Any, List[Tuple[Layer, Any, Any]]]:
        x, tape = inputs.reshape(len(inputs), -1), []
        for layer in self.layers:
            extra = None
            if layer.type == "Dense":
                y = x @ self.values[layer.path + ".kernel"].T
                if layer.bias:
                    y = y + self.values[layer.path + ".bias"]
            elif layer.type == "Activation":
                y = _ACTIVATIONS[layer.function][0](x)
            elif layer.type == "Dropout" and training and layer.rate > 0:
                extra = (self.rng.uniform(size=x.shape) >= layer.rate) / (1 - layer.rate)
                y = x * extra
            else:  # Flatten, or Dropout in inference
                y = x
            tape.append((layer, x, extra if layer.type != "Activation" else y))
            x = y
        return x, tape

    def logits(self, inputs: Any) -> Any:
        return self._forward(inputs, False)[0]

    def _loss_and_gradients(self, inputs: Any, labels: Any, training: bool) -> Tuple[float, Dict[str, Any]]:
        logits, tape = self._forward(inputs, training)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        rows = np.arange(len(labels))
        loss = -log_probs[rows, labels].sum() / self.loss_divisor
        grad = np.exp(log_probs)
        grad[rows, labels] -= 1
        grad /= self.loss_divisor
        gradients = {}
        for layer, x, extra in reversed(tape):
            if layer.type == "Dense":
                gradients[layer.path + ".kernel"] = grad.T @ x
                if layer.bias:
                    gradients[layer.path + ".bias"] = grad.sum(axis=0)
                grad = grad @ self.values[layer.path + ".kernel"]
            elif layer.type == "Activation":
                grad = grad * _ACTIVATIONS[layer.function][1](extra)
            elif extra is not None:
                grad = grad * extra
        return float(loss), gradients

    def gradients(self, inputs: Any, labels: Any) -> Tuple[float, Dict[str, Any]]:
        return self._loss_and_gradients(inputs, labels, False)

    def train_step(self, inputs: Any, labels: Any) -> Any:
        optimizer = self.recipe["optimizer"]
        if optimizer["name"] not in ("sgd", "adam") or optimizer["nesterov"] or optimizer["weight_decay"]:
            raise Unsupported("numpy-job trains with SGD (with momentum) and Adam only")
        if self.recipe["grad_clip_norm"] is not None:
            raise Unsupported("numpy-job does not clip gradients")
        loss, gradients = self._loss_and_gradients(inputs, labels, True)
        self.steps += 1
        for name, gradient in gradients.items():
            if optimizer["name"] == "sgd":
                self.velocity[name] = optimizer["momentum"] * self.velocity[name] + gradient
                self.values[name] -= optimizer["lr"] * self.velocity[name]
                continue
            # PyTorch's Adam: bias-corrected moments, eps added to the corrected root.
            beta1, beta2 = optimizer["beta1"], optimizer["beta2"]
            self.velocity[name] = beta1 * self.velocity[name] + (1 - beta1) * gradient
            self.squares[name] = beta2 * self.squares[name] + (1 - beta2) * gradient * gradient
            first = self.velocity[name] / (1 - beta1 ** self.steps)
            second = self.squares[name] / (1 - beta2 ** self.steps)
            self.values[name] -= optimizer["lr"] * first / (np.sqrt(second) + optimizer["eps"])
        return loss

    def parity(self) -> Dict[str, Any]:
        return {"execution": "eager"}


Model = NumpyModel
