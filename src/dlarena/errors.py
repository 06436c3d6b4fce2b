"""Errors that reach a user as one sentence (never a traceback)."""

from __future__ import annotations

from collections.abc import Iterable


class DlarenaError(Exception):
    """A problem the user can fix; the command line prints it as one sentence and exits with 2."""

    exit_code = 2


class UnknownNameError(DlarenaError):
    """A framework, workload, suite or scenario name that does not exist."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(self.valid)}")
