"""Process resources read from the kernel (stdlib only, Python 3.6+; runs inside the worker)."""

import os
import resource
import sys
from typing import Union

# ru_maxrss is in kilobytes on Linux and in bytes on macOS (getrusage(2) on each system).
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


def peak_rss_bytes() -> int:
    """Peak resident set size of this process or of its largest finished child, whichever is larger.

    Compilers run in children (Inductor's compile workers); the kernel keeps the largest peak among
    waited-for children, not their sum, so this is a floor of the peak of the whole family.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * _MAXRSS_UNIT


def current_rss_bytes(pid: Union[int, str] = "self") -> int:
    """Resident set size of a process (this one by default) now, from /proc (0 where it is absent or gone)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * resource.getpagesize()


def cpu_seconds() -> float:
    """CPU time of this process so far, user and system, all its threads (not its children)."""
    times = os.times()
    return times.user + times.system
