"""Resources sampled beside the timed loop: resident memory, and on a GPU its use, power and memory.

A daemon thread wakes every ``interval_s`` (the cell's ``Measurement.sample_interval_s``) and reads
counters that cost microseconds (a line of /proc, an NVML query), so that the steps it runs beside are
not slowed beyond noise; ``benchmarks/sampler_overhead.py`` measures this. Stdlib only and Python 3.6+
(see the package's docstring), NVML through ``pynvml`` where it is installed (package
``nvidia-ml-py``).
"""

import threading
from types import TracebackType
from typing import Any, Dict, List, Optional, Tuple, Type

from dlarena_runner.resources import current_rss_bytes

# One GPU reading: utilisation in percent, power in watts, device memory used in bytes.
GpuReading = Tuple[float, float, int]


class _Nvml:
    """The GPU a cell runs on, through NVML; absent without pynvml or a driver."""

    def __init__(self, index: int) -> None:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def read(self) -> GpuReading:
        utilisation = self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
        power = self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0  # milliwatts
        memory = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used
        return float(utilisation), float(power), int(memory)


class ResourceSampler:
    """``with ResourceSampler(interval_s): <timed loop>``, then ``report()``.

    The interval has no default here: the one default is the cell's (``plan.cell.Measurement``).
    """

    def __init__(self, interval_s: float, gpu_index: Optional[int] = None) -> None:
        self.interval_s = interval_s
        self.rss: List[int] = []
        self.gpu: List[GpuReading] = []
        self.gpu_message = ""
        self._nvml: Optional[_Nvml] = None
        if gpu_index is not None:
            try:
                self._nvml = _Nvml(gpu_index)
            except Exception as error:  # no pynvml, no driver, no such device: the cell still runs
                self.gpu_message = f"GPU not sampled: {type(error).__name__}: {error}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dlarena-sampler", daemon=True)

    def _sample(self) -> None:
        self.rss.append(current_rss_bytes())
        if self._nvml is not None:
            self.gpu.append(self._nvml.read())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "ResourceSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        error: Optional[BaseException],
        trace: Optional[TracebackType],
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def report(self) -> Dict[str, Any]:
        report: Dict[str, Any] = {"interval_s": self.interval_s, "samples": len(self.rss)}
        if self.rss:
            report.update(rss_start_bytes=self.rss[0], rss_end_bytes=self.rss[-1], rss_peak_bytes=max(self.rss),
                          memory_growth_bytes=self.rss[-1] - self.rss[0])
        if self.gpu:
            report.update(
                gpu_utilisation_percent=sum(u for u, _, _ in self.gpu) / len(self.gpu),
                gpu_power_watts=sum(p for _, p, _ in self.gpu) / len(self.gpu),
                nvml_memory_peak_bytes=max(m for _, _, m in self.gpu),
            )
        if self.gpu_message:
            report["gpu_message"] = self.gpu_message
        return report
