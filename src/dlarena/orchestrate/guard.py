"""Kill a worker's process group when whoever launched it dies without doing so itself.

The executor kills a worker's group when the worker ends, times out or is interrupted, but a launcher
that is killed outright (SIGKILL, or a Ray node whose raylet died, which takes the Ray task's process
down with no Python cleanup) leaves the worker and its helpers running, measuring nothing and holding
the machine. So beside each worker the executor starts this guard, in a session of its own, reading a
pipe that only the executor holds open: when the executor's process ends, however it ends, the kernel
closes the pipe, the guard reads end-of-file and kills the group. After a normal end the executor has
killed the group already, closes the pipe, and the guard finds nothing left to kill.

The guard detaches itself from the executor (it forks, and the parent the executor started exits at
once): a Ray worker that dies kills its own child processes (Ray's kill_child_processes_on_worker_exit,
measured with Ray 2.60), which would take a child guard down before it could act, while the worker's
children's children live on.

Run as ``python -m dlarena.orchestrate.guard PGID``; it imports nothing from dlarena's dependencies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m dlarena.orchestrate.guard PGID (its standard input: the launcher's pipe)",
              file=sys.stderr)
        return 2
    group = int(argv[0])
    if os.fork():  # the executor waits for this parent; the guard goes on as an orphan of no launcher
        os._exit(0)
    while os.read(0, 4096):  # the launcher never writes: this returns only at end-of-file
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
        os.killpg(group, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
