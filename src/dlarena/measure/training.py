"""The accuracy scenario's loop: train epochs of real batches, test after each, stop at the target.

One NumPy input pipeline for every framework: the batches of an epoch are drawn from a permutation
seeded by (seed, epoch), so every framework trains the same batches in the same order. Only complete
batches are trained (as Karmanov's ``yield_mb``), so compiled frameworks see one batch shape. Data
handling (indexing the arrays), training steps and testing are timed apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from dlarena_runner.resources import cpu_seconds

Clock = Callable[[], float]


class Trainable(Protocol):
    """What the loop needs of a framework's trainer (frameworks/base.Trainer)."""

    def train_step(self, inputs: np.ndarray, labels: np.ndarray) -> Any: ...

    def predict(self, inputs: np.ndarray) -> np.ndarray: ...

    def sync(self) -> None: ...


@dataclass(frozen=True)
class Epoch:
    epoch: int  # from 1
    train_s: float  # training steps, each ended by a device sync
    data_s: float  # drawing the epoch's batches from the arrays
    eval_s: float  # predicting the whole test set
    loss: float  # mean training loss over the epoch's batches
    test_accuracy: float


@dataclass
class TrainingRun:
    epochs: list[Epoch] = field(default_factory=list)
    first_step_s: float = 0.0  # the first training step: compilation, tracing, allocator growth
    samples_s: list[float] = field(default_factory=list)  # every later training step
    loop_wall_s: float = 0.0  # training and data handling, testing excluded
    loop_cpu_s: float = 0.0
    target_accuracy: float | None = None

    @property
    def final_accuracy(self) -> float:
        return self.epochs[-1].test_accuracy if self.epochs else 0.0

    @property
    def epochs_to_target(self) -> int | None:
        """The first epoch whose test accuracy reached the target; None if none did (or no target)."""
        if self.target_accuracy is None:
            return None
        return next((e.epoch for e in self.epochs if e.test_accuracy >= self.target_accuracy), None)

    @property
    def time_to_target_s(self) -> float | None:
        """Training time (steps and data, not testing) up to and including the epoch that reached the target."""
        reached = self.epochs_to_target
        if reached is None:
            return None
        return sum(e.train_s + e.data_s for e in self.epochs[:reached])

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": [asdict(epoch) for epoch in self.epochs],
            "target_accuracy": self.target_accuracy,
            "final_accuracy": self.final_accuracy,
            "epochs_to_target": self.epochs_to_target,
            "time_to_target_s": self.time_to_target_s,
            "train_s": sum(e.train_s for e in self.epochs),
            "data_s": sum(e.data_s for e in self.epochs),
            "eval_s": sum(e.eval_s for e in self.epochs),
        }


def epoch_order(samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which an epoch visits the training samples: the same on every machine and framework."""
    return np.random.default_rng([seed, epoch]).permutation(samples)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """The share of samples (or tokens, for a language model) whose largest logit is the label."""
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def predict_all(trainer: Trainable, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits for every input, in batches of ``batch_size``; the last batch is padded, then cut."""
    parts = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        short = batch_size - len(batch)
        if short:
            batch = np.concatenate([batch, np.zeros((short, *batch.shape[1:]), dtype=batch.dtype)])
        parts.append(np.asarray(trainer.predict(batch))[:batch_size - short])
    return np.concatenate(parts)


def train_to_accuracy(
    trainer: Trainable,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    batch_size: int,
    epochs: int,
    target_accuracy: float | None,
    seed: int,
    clock: Clock = time.perf_counter,
    steady: AbstractContextManager[Any] | None = None,
) -> TrainingRun:
    """Train up to ``epochs`` epochs, testing after each; stop at the first that reaches the target."""
    inputs, labels = train
    batches = len(inputs) // batch_size
    if batches == 0:
        raise ValueError(f"{len(inputs)} training samples make no complete batch of {batch_size}")
    run = TrainingRun(target_accuracy=target_accuracy)
    with steady or nullcontext():
        for epoch in range(1, epochs + 1):
            cpu_start = cpu_seconds()
            order = epoch_order(len(inputs), seed, epoch)
            train_s = data_s = 0.0
            losses = []
            for index in range(batches):
                start = clock()
                chosen = order[index * batch_size:(index + 1) * batch_size]
                batch_inputs, batch_labels = inputs[chosen], labels[chosen]
                ready = clock()
                losses.append(trainer.train_step(batch_inputs, batch_labels))
                trainer.sync()
                step_s = clock() - ready
                data_s += ready - start
                train_s += step_s
                if epoch == 1 and index == 0:
                    run.first_step_s = step_s
                else:
                    run.samples_s.append(step_s)
            run.loop_cpu_s += cpu_seconds() - cpu_start
            run.loop_wall_s += train_s + data_s
            loss = float(np.mean([float(value) for value in losses]))  # may wait for the device: after timing
            start = clock()
            test_accuracy = accuracy(predict_all(trainer, test[0], batch_size), test[1])
            eval_s = clock() - start
            run.epochs.append(Epoch(epoch, train_s, data_s, eval_s, loss, test_accuracy))
            if target_accuracy is not None and test_accuracy >= target_accuracy:
                break
    return run
