"""Summaries of step-time samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    n: int
    median_s: float
    mean_s: float
    stdev_s: float
    min_s: float
    max_s: float
    q1_s: float
    q3_s: float

    @property
    def iqr_s(self) -> float:
        return self.q3_s - self.q1_s

    def throughput(self, batch_size: int) -> float:
        """Samples per second at the median step time."""
        return batch_size / self.median_s if self.median_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "iqr_s": self.iqr_s}


def summarise(samples: Sequence[float]) -> Summary:
    if not samples:
        raise ValueError("no samples to summarise")
    values = np.asarray(samples, dtype=np.float64)
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return Summary(
        n=int(values.size),
        median_s=float(median),
        mean_s=float(values.mean()),
        stdev_s=float(values.std(ddof=1)) if values.size > 1 else 0.0,
        min_s=float(values.min()),
        max_s=float(values.max()),
        q1_s=float(q1),
        q3_s=float(q3),
    )
