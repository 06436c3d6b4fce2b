"""The accuracy scenario's loop: train epochs of real batches, test after each, stop at the target.

One NumPy input pipeline for every framework: the batches of an epoch are drawn from a permutation
seeded by (seed, epoch), so every framework trains the same batches in the same order. Only complete
batches are trained (as Karmanov's ``yield_mb``), so compiled frameworks see one batch shape. Data
handling (indexing the arrays), training steps and testing are timed apart.

Both workers run it: ``dlarena.worker`` and, on an older interpreter, ``dlarena_runner.job_worker``
(Python 3.6: no dataclasses; NumPy imported where used, as the rest of the runner).
"""

import time
from collections import OrderedDict
from contextlib import ExitStack
from typing import Any, Callable, ContextManager, Dict, List, Optional, Tuple

from dlarena_runner.resources import cpu_seconds

Clock = Callable[[], float]
Arrays = Tuple[Any, Any]  # inputs and labels, NumPy arrays


class Epoch:
    """One epoch: its training, data handling and testing times, mean loss and test accuracy."""

    def __init__(self, epoch: int, train_s: float, data_s: float, eval_s: float, loss: float,
                 test_accuracy: float) -> None:
        self.epoch = epoch  # from 1
        self.train_s = train_s  # training steps, each ended by a device sync
        self.data_s = data_s  # drawing the epoch's batches from the arrays
        self.eval_s = eval_s  # predicting the whole test set
        self.loss = loss  # mean training loss over the epoch's batches
        self.test_accuracy = test_accuracy

    def to_dict(self) -> Dict[str, Any]:
        return OrderedDict((key, getattr(self, key))
                           for key in ("epoch", "train_s", "data_s", "eval_s", "loss", "test_accuracy"))


class TrainingRun:
    def __init__(self, target_accuracy: Optional[float] = None) -> None:
        self.epochs: List[Epoch] = []
        self.first_step_s = 0.0  # the first training step: compilation, tracing, allocator growth
        self.samples_s: List[float] = []  # every later training step
        self.loop_wall_s = 0.0  # training and data handling, testing excluded
        self.loop_cpu_s = 0.0
        self.target_accuracy = target_accuracy

    @property
    def final_accuracy(self) -> float:
        return self.epochs[-1].test_accuracy if self.epochs else 0.0

    @property
    def epochs_to_target(self) -> Optional[int]:
        """The first epoch whose test accuracy reached the target; None if none did (or no target)."""
        if self.target_accuracy is None:
            return None
        return next((e.epoch for e in self.epochs if e.test_accuracy >= self.target_accuracy), None)

    @property
    def time_to_target_s(self) -> Optional[float]:
        """Training time (steps and data, not testing) up to and including the epoch that reached the target."""
        reached = self.epochs_to_target
        if reached is None:
            return None
        return sum(e.train_s + e.data_s for e in self.epochs[:reached])

    def to_dict(self) -> Dict[str, Any]:
        return {
            "epochs": [epoch.to_dict() for epoch in self.epochs],
            "target_accuracy": self.target_accuracy,
            "final_accuracy": self.final_accuracy,
            "epochs_to_target": self.epochs_to_target,
            "time_to_target_s": self.time_to_target_s,
            "train_s": sum(e.train_s for e in self.epochs),
            "data_s": sum(e.data_s for e in self.epochs),
            "eval_s": sum(e.eval_s for e in self.epochs),
        }


def epoch_order(samples: int, seed: int, epoch: int) -> Any:
    """The order in which an epoch visits the training samples: the same on every machine and framework."""
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(samples)


def accuracy(logits: Any, labels: Any) -> float:
    """The share of samples (or tokens, for a language model) whose largest logit is the label."""
    import numpy as np

    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def predict_all(trainer: Any, inputs: Any, batch_size: int) -> Any:
    """Logits for every input, in batches of ``batch_size``; the last batch is padded, then cut.
    ``trainer`` has ``predict(inputs)``, as frameworks/base.Trainer."""
    import numpy as np

    parts = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        short = batch_size - len(batch)
        if short:
            batch = np.concatenate([batch, np.zeros((short, *batch.shape[1:]), dtype=batch.dtype)])
        parts.append(np.asarray(trainer.predict(batch))[:batch_size - short])
    return np.concatenate(parts)


def train_to_accuracy(
    trainer: Any,
    train: Arrays,
    test: Arrays,
    batch_size: int,
    epochs: int,
    target_accuracy: Optional[float],
    seed: int,
    clock: Clock = time.perf_counter,
    steady: Optional[ContextManager[Any]] = None,
) -> TrainingRun:
    """Train up to ``epochs`` epochs, testing after each; stop at the first that reaches the target.
    ``trainer`` has ``train_step``, ``predict`` and ``sync``, as frameworks/base.Trainer."""
    import numpy as np

    inputs, labels = train
    batches = len(inputs) // batch_size
    if batches == 0:
        raise ValueError(f"{len(inputs)} training samples make no complete batch of {batch_size}")
    run = TrainingRun(target_accuracy=target_accuracy)
    with ExitStack() as stack:
        if steady is not None:
            stack.enter_context(steady)
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
