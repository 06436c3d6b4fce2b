"""Test-only: PyTorch made slower by a known share, so that benchmarks/calibration.py measures whether
dlarena finds a difference it knows is there (issue 17's power test).

Each step runs torch's step, waits for it (``sync``), then busy-waits ``slowdown`` times that step's
own duration on the same core: a busy wait, not a sleep, so the process stays on its core as a slower
framework's would, and the extra time follows the machine's speed at that moment as the step's does.
With ``slowdown=0`` it is torch itself under another name (the A/A test's twin).
"""

from __future__ import annotations

import time
from typing import Any

from dlarena.frameworks import pytorch
from dlarena.frameworks.base import StepRequest


class SlowedRunner:
    """torch's runner, its every step followed by a busy wait of ``slowdown`` times that step."""

    def __init__(self, runner: Any, slowdown: float) -> None:
        self.runner = runner
        self.slowdown = slowdown

    def step(self) -> None:
        start = time.perf_counter()
        self.runner.step()
        self.runner.sync()
        end = time.perf_counter()
        until = end + (end - start) * self.slowdown
        while time.perf_counter() < until:
            pass

    def __getattr__(self, name: str) -> Any:  # sync, trainable_params, parity: torch's own
        return getattr(self.runner, name)


class Backend(pytorch.Backend):
    def __init__(self, threads: int, slowdown: float = 0.0) -> None:
        super().__init__(threads)
        self.slowdown = slowdown

    def prepare(self, request: StepRequest) -> Any:
        return SlowedRunner(super().prepare(request), self.slowdown)
