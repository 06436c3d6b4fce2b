"""What every worker process runs, whatever its environment's interpreter: dlarena's ``asv_runner``.

A managed environment may be as old as its framework needs (CNTK 2.7.post2, its last release, has
wheels for Python 2.7, 3.5 and 3.6 only, and runs on NumPy 1.19), so this package is written for
Python 3.6 and the standard library alone (NumPy only in the job worker's kernel), no dataclasses, no
``from __future__ import annotations``, no ``X | Y`` types. ``make lint`` holds it there with vermin
at ``MINIMUM_PYTHON``, and tests/test_runner_old_python.py runs it under the oldest interpreter on the
machine. As asv keeps ``asv_runner`` apart, this keeps the old-Python part small, so that the host side
(planning, orchestration, store, report) can use a modern Python; what crosses between them is JSON.

- ``timing``: the timed loop (``run_timed``, ``Timings``)
- ``resources``: this process's resident memory and CPU time, from the kernel
- ``sampler``: resident memory (and a GPU's use through NVML) sampled beside the timed loop
- ``record``: the worker result's schema number and its one writer
- ``process``, ``errors``, ``denormals``, ``training``: process limits, the declining exceptions, the
  subnormal probe and the accuracy scenario's loop, shared by ``dlarena.worker`` and the job worker
- ``job_worker``, ``model``, ``layout``, ``frameworks``: the worker of frameworks whose interpreter
  cannot import dlarena, its kernel (NumPy, imported only there) and their modules (DEVELOPERS.md,
  "The old-Python boundary")
"""

# The oldest interpreter a worker must run on: CNTK's (Python 3.6). The Makefile reads this for
# vermin's target, and the old-Python test searches for interpreters from here up.
MINIMUM_PYTHON = (3, 6)
