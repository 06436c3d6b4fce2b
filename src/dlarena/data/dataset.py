"""A data set as every framework receives it: NumPy arrays, already in the network's input form."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlarena.errors import DlarenaError


class DataError(DlarenaError):
    """A data set that is missing, corrupted, truncated or of the wrong shape; the message names the file."""


class DataMissing(DataError):
    """A data set that is not on this machine: a cell that needs it is ``unavailable``, as a framework
    that is not installed."""


@dataclass(frozen=True)
class Split:
    """Inputs (float32 channels-first images, or int64 token ids) and their int64 labels."""

    inputs: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels):
            raise DataError(f"{len(self.inputs)} inputs but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    classes: int
