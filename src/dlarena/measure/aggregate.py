"""One cell's figures from the results of its k worker processes.

Each process's step times are cut to their steady segment (steady.classify: the warm-up or the level
before a slowdown dropped), and the steady segments are pooled (stats.summarise); a process with no
steady state is left out while another settled, and a cell where none settled says so in a
warning. The one-off costs of a process (import, build, first step)
and its CPU use are reported as the median over processes, and memory as the worst process, since
a user must provision for the worst.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dlarena.measure.canary import outside_slow_spells
from dlarena.measure.stats import Summary, summarise
from dlarena.measure.steady import CLASSES, NO_STEADY_STATE, Steady, classify, steady_groups, used


@dataclass(frozen=True)
class CellFigures:
    summary: Summary
    throughput: float  # samples per second at the median step time
    import_s: float | None = None
    build_s: float | None = None
    first_step_s: float | None = None
    cores_used: float | None = None
    cpu_utilisation: float | None = None  # cores used over cores allowed
    peak_rss_bytes: int | None = None
    memory_growth_bytes: int | None = None
    gflops: float | None = None
    peak_gflops: float | None = None
    peak_percent: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # GPU figures where there are any
    training: dict[str, Any] | None = None  # accuracy cells: see training_figures

    @property
    def accuracy(self) -> float | None:
        return self.training["accuracy"] if self.training else None

    @property
    def time_to_target_s(self) -> float | None:
        return self.training["time_to_target_s"] if self.training else None


# MLPerf Training's scoring rule (training_rules.adoc, "Benchmark Results"): of a benchmark's runs,
# the fastest and the slowest are dropped and the rest averaged. Below this many runs nothing is dropped.
TRIM_FROM_RUNS = 3


def trimmed_mean(values: Sequence[float]) -> float:
    """The mean without the smallest and the largest value (with at least TRIM_FROM_RUNS values)."""
    ordered = sorted(values)
    if len(ordered) >= TRIM_FROM_RUNS:
        ordered = ordered[1:-1]
    return statistics.fmean(ordered)


def training_figures(processes: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """An accuracy cell's figures over its seeds (one per process), each by ``trimmed_mean``.

    Time and epochs to the target are over the seeds that reached it; ``reached`` says how many did.
    """
    runs = [process["accuracy"] for process in processes if process.get("accuracy")]
    if not runs:
        return None
    finals = [run["final_accuracy"] for run in runs]
    reached = [run for run in runs if run["epochs_to_target"] is not None]
    return {
        "dataset": runs[0]["dataset"],
        "seeds": len(runs),
        "target_accuracy": runs[0]["target_accuracy"],
        "epochs_planned": runs[0]["epochs_planned"],
        "accuracy": trimmed_mean(finals),
        "accuracy_min": min(finals),
        "accuracy_max": max(finals),
        "reached": len(reached),
        "epochs_to_target": trimmed_mean([run["epochs_to_target"] for run in reached]) if reached else None,
        "time_to_target_s": trimmed_mean([run["time_to_target_s"] for run in reached]) if reached else None,
        "epochs": trimmed_mean([len(run["epochs"]) for run in runs]),
        "train_s": trimmed_mean([run["train_s"] + run["data_s"] for run in runs]),
        "data_s": trimmed_mean([run["data_s"] for run in runs]),
        "eval_s": trimmed_mean([run["eval_s"] for run in runs]),
        "data_load_s": statistics.median(run["data_load_s"] for run in runs),
    }


def _median(values: Sequence[Any]) -> float | None:
    numbers = [float(value) for value in values if isinstance(value, int | float)]
    return statistics.median(numbers) if numbers else None


def _largest(values: Sequence[Any]) -> int | None:
    numbers = [int(value) for value in values if isinstance(value, int | float)]
    return max(numbers) if numbers else None


def compile_cache_figures(processes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How the cell's processes found the compile cache: its mode (worker.isolate_compile_caches) and,
    where the framework reports them, how many compiled graphs came from an earlier process's cache."""
    figures: dict[str, Any] = {}
    modes = sorted({str(process["compile_cache"]["mode"]) for process in processes
                    if isinstance(process.get("compile_cache"), Mapping)})
    if modes:
        figures["compile_cache"] = ",".join(modes)
    hits = [process.get("parity", {}).get("details", {}).get("compile_cache", {}).get("fxgraph_cache_hit")
            for process in processes]
    counted = [int(value) for value in hits if isinstance(value, int)]
    if counted:
        figures["compile_cache_hits"] = sum(counted)
    return figures


def denormal_figures(processes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The subnormal mode the cell asked for (``denormals_setting``) and the mode its processes
    measured (``denormals``: flush, keep or mixed; several joined by commas when processes differed)."""
    records = [process["denormals"] for process in processes if isinstance(process.get("denormals"), Mapping)]
    figures: dict[str, Any] = {}
    settings = sorted({str(record["setting"]) for record in records if record.get("setting")})
    measured = sorted({str(record["measured"]) for record in records if record.get("measured")})
    if settings:
        figures["denormals_setting"] = ",".join(settings)
    if measured:
        figures["denormals"] = ",".join(measured)
    return figures


def _steady_summary(steadies: Sequence[Steady]) -> Summary:
    """The pooled steady segments; with a warning where no process reached a steady state."""
    summary = summarise([list(steady.samples) for steady in used(steadies)])
    if any(steady.steady_class != NO_STEADY_STATE for steady in steadies):
        return summary
    warning = (f"unstable: none of the {len(steadies)} processes reached a steady state (its step times were still"
               " changing in their last quarter). The figures are each process's last level: raise min_time_s or"
               " max_steps")
    return dataclasses.replace(summary, warnings=(*summary.warnings, warning))


def steady_figures(steadies: Sequence[Steady]) -> dict[str, Any]:
    """How many processes fell in each steady-state class, and the steps each one's steady segment left out."""
    return {"classes": {name: count for name in CLASSES
                        if (count := sum(steady.steady_class == name for steady in steadies))},
            "steps_dropped": [steady.steps_dropped for steady in steadies]}


def cell_groups(processes: Sequence[Mapping[str, Any]]) -> list[list[float]]:
    """The step times a cell's every figure rests on (its summary, its ranking, its comparisons): the
    steady segment of each process outside the machine's slow spells."""
    return steady_groups([list(process.get("samples_s") or []) for process in outside_slow_spells(processes)])


def aggregate(
    processes: Sequence[Mapping[str, Any]], batch_size: int, threads: int, peak_gflops: float | None,
) -> CellFigures:
    """Figures of a cell from its ok worker results (each the worker's JSON result). Processes run in a
    slow spell and measured again are left out (canary.outside_slow_spells)."""
    judged = [process["canary"] for process in processes if process.get("canary")]
    processes = outside_slow_spells(processes)
    steadies = [classify(list(process.get("samples_s") or [])) for process in processes]
    summary = _steady_summary(steadies)
    cores_used = _median([process.get("cores_used") for process in processes])
    flops = _median([process.get("flops_per_step") for process in processes])
    gflops = flops / summary.median_s / 1e9 if flops and summary.median_s > 0 else None
    extra: dict[str, Any] = {}
    for key in ("gpu_utilisation_percent", "gpu_power_watts"):
        value = _median([process.get("resources", {}).get(key) for process in processes])
        if value is not None:
            extra[key] = value
    for key in ("device_memory_peak_bytes", "nvml_memory_peak_bytes"):
        value = _largest([process.get("resources", {}).get(key) for process in processes])
        if value is not None:
            extra[key] = value
    extra["steady_state"] = steady_figures(steadies)
    if judged:
        extra["slow_spell_processes"] = sum(bool(canary["slow_spell"]) for canary in judged)
    extra.update(compile_cache_figures(processes))
    extra.update(denormal_figures(processes))
    return CellFigures(
        summary=summary,
        throughput=summary.throughput(batch_size),
        import_s=_median([process.get("import_s") for process in processes]),
        build_s=_median([process.get("build_s") for process in processes]),
        first_step_s=_median([process.get("first_step_s") for process in processes]),
        cores_used=cores_used,
        cpu_utilisation=cores_used / threads if cores_used is not None and threads > 0 else None,
        peak_rss_bytes=_largest([process.get("peak_rss_bytes") for process in processes]),
        memory_growth_bytes=_largest([process.get("resources", {}).get("memory_growth_bytes")
                                      for process in processes]),
        gflops=gflops,
        peak_gflops=peak_gflops,
        peak_percent=100.0 * gflops / peak_gflops if gflops and peak_gflops else None,
        extra=extra,
        training=training_figures(processes),
    )
