"""The peak probe and the resource sampler, on this machine's real BLAS and /proc. No framework needed."""

from __future__ import annotations

import mmap
import time

from dlarena.measure.peak import probe
from dlarena_runner.resources import peak_rss_bytes
from dlarena_runner.sampler import ResourceSampler

MIB = 1 << 20
# Bound on waiting for the sampler thread's first sample: only reached if the thread never samples.
SAMPLE_WAIT_S = 60.0


def test_the_peak_probe_runs_in_its_own_limited_process() -> None:
    peak = probe(threads=1, size=256)
    assert peak is not None and peak.threads == 1 and peak.matrix_size == 256
    assert peak.gflops > 0.1 and peak.library


def test_the_sampler_sees_memory_grow_during_the_steady_state() -> None:
    held = []
    with ResourceSampler(interval_s=0.01) as sampler:
        for _ in range(8):
            # A fresh anonymous mapping, every page written: new resident memory whatever this process
            # ran before. (A bytearray comes from malloc, which may hand back pages an earlier test freed
            # and that are still resident: in CI 64 MiB of bytearrays grew the RSS by only 43 MiB.)
            block = mmap.mmap(-1, 8 * MIB)
            block.write(b"\x01" * (8 * MIB))
            held.append(block)
            time.sleep(0.02)
        # at least one sample of the thread's own (the first and last are taken on entry and exit):
        # waited for, not assumed from the sleeps, which a busy machine may outlast the thread by
        deadline = time.monotonic() + SAMPLE_WAIT_S
        while len(sampler.rss) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    report = sampler.report()
    assert report["samples"] >= 3
    assert report["memory_growth_bytes"] >= 48 * MIB
    assert report["rss_peak_bytes"] >= report["rss_start_bytes"] + 48 * MIB
    assert peak_rss_bytes() >= report["rss_peak_bytes"] - MIB  # the kernel counts in its own granules
    assert "gpu_utilisation_percent" not in report  # no GPU asked for


def test_a_gpu_that_cannot_be_sampled_is_said_so_and_the_cell_goes_on() -> None:
    sampler = ResourceSampler(interval_s=0.01, gpu_index=0)
    with sampler:
        time.sleep(0.03)
    report = sampler.report()
    # No NVML on this machine (or, on a GPU machine, real figures): either way, never an exception.
    assert "gpu_message" in report or "gpu_utilisation_percent" in report


def test_every_worker_fixes_the_allocator_thresholds_and_says_so() -> None:
    import json
    import subprocess
    import sys

    from dlarena_runner.process import MALLOC_MMAP_THRESHOLD_BYTES, MALLOC_TRIM_THRESHOLD_BYTES

    cell = '{"framework": "fault-none", "workload": "fcn5-small", "scenario": "infer", "batch_size": 2, "threads": 1}'
    output = subprocess.run([sys.executable, "-m", "dlarena.worker", "--cell", cell], capture_output=True, text=True,
                            check=True).stdout
    result = json.loads(output)
    assert result["status"] == "ok"
    assert result["malloc"] == {"mmap_threshold_bytes": MALLOC_MMAP_THRESHOLD_BYTES,
                                "trim_threshold_bytes": MALLOC_TRIM_THRESHOLD_BYTES}
