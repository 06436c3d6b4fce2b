"""The problems the worker-side probes pose, with their NumPy float64 answers and the tolerances a
framework's answer is held to. Pure NumPy: every framework's probe function solves the same problem
and hands its answer to the same check, so that no framework module judges itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Every probe computes in float32, the precision dlarena times in, and is compared with a float64
# answer. float32 keeps about 7 significant digits; a product of a few hundred terms through two
# differentiations keeps better than 1e-5 relative in practice (measured: torch 3e-7, JAX 2e-7 on
# these problems), so 1e-4 is verify's own float32 gradient tolerance (orchestrate/verify.py).
TOLERANCE = 1e-4
# The central difference's step for the float64 reference derivatives: its truncation error is of
# order h^2 (1e-10) and its rounding error of order 1e-16 / h (1e-11), both far under TOLERANCE.
FINITE_DIFFERENCE_STEP = 1e-5
# The new activation of the custom-layer probe: x * sigmoid(ALPHA * x), a swish that no framework
# ships under this form (ALPHA != 1), so a framework composes it from its own primitive ops.
ALPHA = 1.5
PROBLEM_SEED = 20161201  # the problems' data, the same in every framework's process


class ProbeFailure(Exception):
    """A probe ran and its answer is wrong: the probe fails with this sentence, and ``figures``, what it
    measured on the way (kept with the failure, for the reader to weigh)."""

    def __init__(self, message: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.figures = figures or {}


def relative_error(answer: np.ndarray, reference: np.ndarray) -> float:
    """The largest absolute difference over the reference's largest magnitude."""
    answer = np.asarray(answer, dtype=np.float64)
    if answer.shape != reference.shape:
        raise ProbeFailure(f"the answer has shape {answer.shape}, the reference {reference.shape}")
    return float(np.max(np.abs(answer - reference)) / max(float(np.max(np.abs(reference))), 1e-30))


def check(name: str, answer: np.ndarray, reference: np.ndarray) -> float:
    """The relative error of ``answer``, raising ProbeFailure when it exceeds TOLERANCE."""
    error = relative_error(answer, reference)
    if not error <= TOLERANCE:  # NaN fails too
        raise ProbeFailure(f"{name} differs from the NumPy float64 reference by {error:.3g} (tolerance {TOLERANCE:g})")
    return error


# --- custom-layer --------------------------------------------------------------------------------


def activation(x: np.ndarray) -> np.ndarray:
    """The custom-layer probe's activation in NumPy: x * sigmoid(ALPHA x)."""
    return x / (1.0 + np.exp(-ALPHA * x))


@dataclass(frozen=True)
class CustomLayerProblem:
    """y = sum(weights * activation(x)); the framework returns dy/dx from its autodiff."""

    x: np.ndarray  # float32, shape (4, 16): values on both sides of 0 and in the tails
    weights: np.ndarray  # float32, same shape

    def reference_gradient(self) -> np.ndarray:
        """dy/dx by a central difference of the float64 activation (not its formula: nothing shared)."""
        x, h = self.x.astype(np.float64), FINITE_DIFFERENCE_STEP
        gradient: np.ndarray = self.weights.astype(np.float64) * (activation(x + h) - activation(x - h)) / (2 * h)
        return gradient


def custom_layer_problem() -> CustomLayerProblem:
    rng = np.random.default_rng(PROBLEM_SEED)
    x = rng.uniform(-6.0, 6.0, size=(4, 16)).astype(np.float32)
    return CustomLayerProblem(x, rng.standard_normal((4, 16)).astype(np.float32))


# --- higher-order --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HessianProblem:
    """A 2-layer tanh network's mean softmax cross-entropy; the framework returns H v, the Hessian of
    the loss with respect to all parameters (in the order w1, b1, w2, b2; w as (in, out)) times v."""

    inputs: np.ndarray  # (8, 5) float32
    labels: np.ndarray  # (8,) int64 in [0, 3)
    params: tuple[np.ndarray, ...]  # w1 (5, 6), b1 (6,), w2 (6, 3), b2 (3,), float32
    vector: tuple[np.ndarray, ...]  # v, shaped as params, float32

    def loss_gradient(self, params: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """The loss's gradient by hand-written backpropagation, in float64."""
        w1, b1, w2, b2 = (p.astype(np.float64) for p in params)
        x = self.inputs.astype(np.float64)
        hidden = np.tanh(x @ w1 + b1)
        logits = hidden @ w2 + b2
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        d_logits = probabilities.copy()
        d_logits[np.arange(len(self.labels)), self.labels] -= 1.0
        d_logits /= len(self.labels)
        d_hidden = (d_logits @ w2.T) * (1.0 - hidden ** 2)
        return x.T @ d_hidden, d_hidden.sum(axis=0), hidden.T @ d_logits, d_logits.sum(axis=0)

    def reference_hvp(self) -> tuple[np.ndarray, ...]:
        """H v as the central difference of the exact gradient along v."""
        h = FINITE_DIFFERENCE_STEP
        plus = self.loss_gradient(tuple(p.astype(np.float64) + h * v for p, v in zip(self.params, self.vector,
                                                                                       strict=True)))
        minus = self.loss_gradient(tuple(p.astype(np.float64) - h * v for p, v in zip(self.params, self.vector,
                                                                                        strict=True)))
        return tuple((a - b) / (2 * h) for a, b in zip(plus, minus, strict=True))


def hessian_problem() -> HessianProblem:
    rng = np.random.default_rng(PROBLEM_SEED + 1)
    shapes = ((5, 6), (6,), (6, 3), (3,))
    params = tuple((0.5 * rng.standard_normal(shape)).astype(np.float32) for shape in shapes)
    vector = tuple(rng.standard_normal(shape).astype(np.float32) for shape in shapes)
    return HessianProblem(rng.standard_normal((8, 5)).astype(np.float32),
                          rng.integers(0, 3, size=8).astype(np.int64), params, vector)


def check_hvp(problem: HessianProblem, answer: tuple[np.ndarray, ...]) -> float:
    """The relative error of a framework's H v over all parameters together."""
    reference = problem.reference_hvp()
    if len(answer) != len(reference):
        raise ProbeFailure(f"the answer has {len(answer)} parts, the parameters are {len(reference)}")
    return check("the Hessian-vector product", np.concatenate([np.ravel(a) for a in answer]),
                 np.concatenate([np.ravel(r) for r in reference]))


# --- dynamic-loop --------------------------------------------------------------------------------

# The loop: x <- tanh(A x) while |x| > LOOP_THRESHOLD, at most LOOP_LIMIT times. With |A| = 0.9 the
# norm shrinks by about 0.9 a step or faster, so the count depends on where x starts (13 steps from a
# norm of 0.5, 15 from 5, for this problem's seed).
LOOP_THRESHOLD = 1e-3
LOOP_LIMIT = 1000
LOOP_CONTRACTION = 0.9  # A's largest singular value
LOOP_START_NORMS = (0.5, 5.0)
# A float32 loop may end a step apart from the float64 one when the norm lands this close to the
# threshold; the problem's seed is chosen so that every stop is farther from it (checked below).
LOOP_MARGIN = 0.02


@dataclass(frozen=True)
class LoopProblem:
    """Run the loop from each start; return each start's step count and final x, once eagerly and once
    in the framework's graph or compiled mode, and where it can, d/dA of sum(weights * final x)."""

    matrix: np.ndarray  # (8, 8) float32
    starts: tuple[np.ndarray, ...]  # (8,) float32 each
    weights: np.ndarray  # (8,) float32

    def run(self, matrix: np.ndarray, start: np.ndarray) -> tuple[int, np.ndarray]:
        """The loop in float64: its step count and final x."""
        x, steps = start.astype(np.float64), 0
        while np.linalg.norm(x) > LOOP_THRESHOLD and steps < LOOP_LIMIT:
            x = np.tanh(matrix @ x)
            steps += 1
        return steps, x

    def reference(self) -> list[tuple[int, np.ndarray]]:
        return [self.run(self.matrix.astype(np.float64), start) for start in self.starts]

    def reference_gradient(self) -> np.ndarray:
        """d/dA of sum(weights * final x) from the last start, by central differences, each side run
        for the reference's step count (the count is constant in a neighbourhood of A)."""
        steps = self.reference()[-1][0]
        matrix, start, h = self.matrix.astype(np.float64), self.starts[-1].astype(np.float64), FINITE_DIFFERENCE_STEP

        def value(m: np.ndarray) -> float:
            x = start
            for _ in range(steps):
                x = np.tanh(m @ x)
            return float(self.weights.astype(np.float64) @ x)

        gradient = np.zeros_like(matrix)
        for index in np.ndindex(*matrix.shape):
            plus, minus = matrix.copy(), matrix.copy()
            plus[index] += h
            minus[index] -= h
            gradient[index] = (value(plus) - value(minus)) / (2 * h)
        return gradient


def loop_problem() -> LoopProblem:
    rng = np.random.default_rng(PROBLEM_SEED + 2)
    matrix = rng.standard_normal((8, 8))
    matrix *= LOOP_CONTRACTION / np.linalg.norm(matrix, 2)
    starts = []
    for norm in LOOP_START_NORMS:
        start = rng.standard_normal(8)
        starts.append((start * norm / np.linalg.norm(start)).astype(np.float32))
    problem = LoopProblem(matrix.astype(np.float32), tuple(starts), rng.standard_normal(8).astype(np.float32))
    for start in problem.starts:  # every stop, and the step before it, well clear of the threshold
        x = start.astype(np.float64)
        while np.linalg.norm(x) > LOOP_THRESHOLD * (1 - LOOP_MARGIN):
            if abs(np.linalg.norm(x) / LOOP_THRESHOLD - 1) < LOOP_MARGIN:
                raise AssertionError("the loop problem's seed puts a step within LOOP_MARGIN of the threshold")
            x = np.tanh(problem.matrix.astype(np.float64) @ x)
    return problem


def check_loop(problem: LoopProblem, mode: str, answer: Sequence[tuple[int, np.ndarray]]) -> float:
    """Each start's step count must equal the reference's; the final x within TOLERANCE of it."""
    errors = []
    for index, ((steps, final), (expected_steps, expected)) in enumerate(zip(answer, problem.reference(),
                                                                            strict=True)):
        if int(steps) != expected_steps:
            raise ProbeFailure(f"{mode}: from start {index} the loop ran {int(steps)} steps, the reference"
                               f" {expected_steps}")
        errors.append(check(f"{mode}: the final x from start {index}", np.asarray(final), expected))
    return max(errors)


# --- variable-length -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceProblem:
    """One LSTM layer (PyTorch's layout: (4H, in) and (4H, H) weights, one (4H,) bias, gates i, f, g, o)
    over a padded batch of sequences of different lengths: the framework returns each sequence's hidden
    state after its own last step, from a zero initial state, computed on the whole padded batch."""

    inputs: np.ndarray  # (batch, steps, features) float32, zeros after each sequence's length
    lengths: np.ndarray  # (batch,) int64
    input_kernel: np.ndarray  # (4H, features) float32
    recurrent_kernel: np.ndarray  # (4H, H) float32
    bias: np.ndarray  # (4H,) float32

    @property
    def hidden(self) -> int:
        return int(self.recurrent_kernel.shape[1])

    def reference(self) -> np.ndarray:
        """Each sequence run alone, for its own length only, in float64."""
        w, u, b = (a.astype(np.float64) for a in (self.input_kernel, self.recurrent_kernel, self.bias))
        finals = []
        for sequence, length in zip(self.inputs.astype(np.float64), self.lengths, strict=True):
            h, c = np.zeros(self.hidden), np.zeros(self.hidden)
            for x in sequence[:length]:
                i, f, g, o = np.split(w @ x + u @ h + b, 4)
                c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
                h = _sigmoid(o) * np.tanh(c)
            finals.append(h)
        return np.stack(finals)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    result: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return result


def sequence_problem() -> SequenceProblem:
    rng = np.random.default_rng(PROBLEM_SEED + 3)
    lengths = np.array([5, 2, 4, 1], dtype=np.int64)
    features, hidden, steps = 3, 4, int(lengths.max())
    inputs = rng.standard_normal((len(lengths), steps, features)).astype(np.float32)
    for row, length in enumerate(lengths):
        inputs[row, length:] = 0.0  # padding: a framework that ran over it would change the answer
    scale = 1.0 / np.sqrt(hidden)
    return SequenceProblem(inputs, lengths,
                           (scale * rng.standard_normal((4 * hidden, features))).astype(np.float32),
                           (scale * rng.standard_normal((4 * hidden, hidden))).astype(np.float32),
                           (scale * rng.standard_normal(4 * hidden)).astype(np.float32))


# --- deployment (probes/deployment.py) -------------------------------------------------------------


def check_deployed(name: str, answer: np.ndarray, own: np.ndarray) -> float:
    """A deployed artefact's logits against the framework's own for the same inputs: an exporter or a
    runtime may reorder a sum or fuse ops (float32 rounding, well under TOLERANCE), never change the
    function."""
    answer = np.asarray(answer)
    if answer.size == own.size and answer.shape != own.shape:
        answer = answer.reshape(own.shape)  # a runtime that returns (1, batch, ...) or drops a unit axis
    error = relative_error(answer, own.astype(np.float64))
    if not error <= TOLERANCE:
        raise ProbeFailure(f"{name} differs from the framework's own by {error:.3g} (tolerance {TOLERANCE:g})")
    return error


# --- multi-device --------------------------------------------------------------------------------

# The data-parallel step splits the Hessian problem's batch of 8 in two halves, one per device.
DEVICES = 2


def mean_loss(problem: HessianProblem) -> float:
    """The mean softmax cross-entropy of the Hessian problem's network over its whole batch, in float64."""
    w1, b1, w2, b2 = (p.astype(np.float64) for p in problem.params)
    logits = np.tanh(problem.inputs.astype(np.float64) @ w1 + b1) @ w2 + b2
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probabilities[np.arange(len(problem.labels)), problem.labels].mean())


def check_data_parallel(problem: HessianProblem, mode: str, loss: float,
                        gradients: Sequence[np.ndarray]) -> float:
    """A training step's loss and gradients (w1, b1, w2, b2) over the whole batch, against float64.
    A data-parallel step that forgot to average over the devices gives twice the gradient; one that
    dropped a device's half, another loss."""
    reference = problem.loss_gradient(problem.params)
    if len(gradients) != len(reference):
        raise ProbeFailure(f"{mode}: {len(gradients)} gradients for {len(reference)} parameters")
    loss_error = check(f"{mode}: the loss", np.asarray([loss]), np.asarray([mean_loss(problem)]))
    gradient_error = check(f"{mode}: the gradients", np.concatenate([np.ravel(g) for g in gradients]),
                           np.concatenate([np.ravel(r) for r in reference]))
    return max(loss_error, gradient_error)
