"""How long a cell's worker process may run, when neither the suite nor the command line says.

A timing cell measures for a bounded time (``Measurement.max_time_s``) after its one-off costs, so
one limit fits every one of them (``cell.DEFAULT_TIMEOUT_S``). A process of an accuracy cell trains
as long as its recipe takes: Shatnawi's MNIST CNN trains 12 epochs of 60,000 images, minutes on one
machine and framework, an hour on another. Its limit is derived from the recipe: the FLOPs of every
training and testing step at a deliberately low rate, plus a per-step allowance for frameworks whose
steps are short, times a wide margin, on top of the timing cells' limit for the one-off costs. It is
meant to end a process that is stuck, never one that is slow.
"""

from __future__ import annotations

import math

from dlarena.plan.cell import DEFAULT_TIMEOUT_S, Cell
from dlarena.spec.catalogue import CATALOGUE

# FLOPs per second assumed for training, below every rate measured here: on the project's 2-core VM,
# its cores shared with other work, torch trained at one thread and batch 32 at 5.9 GFLOP/s
# (karmanov-gru, the slowest), 13.9 (mnist-cnn) and 15.7 (karmanov-cnn), where one free core's float32
# matrix product reaches 146 GFLOP/s (`dlarena run --frameworks torch --workloads
# mnist-cnn,karmanov-gru,karmanov-cnn --scenarios train --threads 1 --repetitions 1`, 2026-12-01).
# Not scaled by the cell's threads: a framework may not use them, and a busy machine may not give them.
ASSUMED_FLOP_RATE = 5e9
# Seconds assumed for each step beyond its FLOPs (the framework's dispatch, the data pipeline, a
# device sync): six times a whole torch training step of fcn5-small at batch 32 on one thread here
# (3.16 ms, the README's example report), so that the digits networks, whose steps are almost no
# FLOPs, still get time.
ASSUMED_STEP_OVERHEAD_S = 0.02
# The training estimate is multiplied by this: the machine's own slow spells run up to twice as slow
# for up to a minute (DEVELOPERS.md, "Statistics"), and a process that has not finished in three
# times a deliberately slow estimate is stuck, not slow.
TRAINING_MARGIN = 3.0
# A data set whose sample counts depend on the preparation (PTB: sequences of `steps` tokens) gives no
# estimate; its cells get the longest limit a built-in suite gives accuracy cells (shatnawi2017, 12 h).
UNKNOWN_SIZE_TIMEOUT_S = 43_200.0


def default_timeout_s(cell: Cell) -> float:
    """The limit of one worker process of ``cell``: a timing cell's, or one derived for an accuracy cell."""
    return accuracy_timeout_s(cell) if cell.scenario == "accuracy" else DEFAULT_TIMEOUT_S


def accuracy_timeout_s(cell: Cell) -> float:
    """One-off costs plus ``TRAINING_MARGIN`` times the recipe's steps at the assumed rate, in whole seconds."""
    workload = CATALOGUE[cell.workload]
    training = workload.training
    if training is None:
        return DEFAULT_TIMEOUT_S  # no real data: the worker stores the cell as unsupported at once
    # Imported here: dlarena.data's package imports NumPy, which planning a timing suite need not.
    from dlarena.data.catalogue import DATASETS

    info = DATASETS[training.dataset]
    if info.train_size is None or info.test_size is None:
        return UNKNOWN_SIZE_TIMEOUT_S
    epochs = cell.epochs or training.epochs
    # As dlarena_runner/training.py runs them: complete training batches only, then every test sample in
    # batches of the same size (the last one padded).
    train_steps = info.train_size // cell.batch_size
    test_steps = math.ceil(info.test_size / cell.batch_size)
    flops = epochs * (train_steps * workload.flops("train", cell.batch_size)
                      + test_steps * workload.flops("infer", cell.batch_size))
    seconds = flops / ASSUMED_FLOP_RATE + epochs * (train_steps + test_steps) * ASSUMED_STEP_OVERHEAD_S
    return float(math.ceil(DEFAULT_TIMEOUT_S + TRAINING_MARGIN * seconds))
