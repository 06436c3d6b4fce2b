"""Where `dlarena verify`'s verdicts are kept, and how a run's results find theirs.

A verdict is about code, not about a run: whether framework F at version V, driven by dlarena's code
at version C, computes workload W (and its published twin, built by the same code) as the oracle
does. So `verify` stores each verdict twice: in the database it was given (``--db``), and in this
user's record on this machine (a dlarena database under the cache folder), and a run's rows look
their verdicts up in both, by framework, framework version, dlarena's code version and workload
family, the latest first. A verification done once serves every database on the machine, and a
verdict from other code or another framework version never marks a result verified. A run also
copies the verdicts of what it measured from the record into its own database, so that a
database read on another machine still shows them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dlarena.data.cache import cache_base
from dlarena.store.database import Store, StoreError

RECORD_VARIABLE = "DLARENA_VERDICTS"
RECORD_NAME = "verifications.db"

Key = tuple[str, str, str | None, str]  # framework, workload, framework version, precision


def record_path() -> Path:
    """``$DLARENA_VERDICTS``, else ``$XDG_CACHE_HOME/dlarena/verifications.db``, else under ~/.cache
    (the XDG Base Directory specification's place for non-essential files, as the data cache)."""
    if os.environ.get(RECORD_VARIABLE):
        return Path(os.environ[RECORD_VARIABLE]).expanduser()
    return cache_base() / RECORD_NAME


def open_record(create: bool) -> Store | None:
    """The machine's record, or None when there is none (and ``create`` is false)."""
    path = record_path()
    if not create and not path.exists():
        return None
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    return Store.open(path, create=create)


def record(stores: Iterable[Store], check: dict[str, Any], code_version: str) -> None:
    for store in stores:
        store.record_verification(check, code_version)


def statuses(store: Store, code_version: str) -> dict[Key, str]:
    """The latest verdict per (framework, workload, framework version, precision) for ``code_version``,
    from ``store`` and the machine's record together."""
    rows = store.verifications(code_version)
    try:
        machine = open_record(create=False)
    except StoreError:  # an unreadable record hides nothing of the database's own verdicts
        machine = None
    if machine is not None and machine.path.resolve() != store.path.resolve():
        try:
            rows += machine.verifications(code_version)
        finally:
            machine.close()
    rows.sort(key=lambda row: row["checked_at"])
    return {(row["framework"], row["workload"], row["framework_version"], row["precision"]): row["status"]
            for row in rows}


def copy_into(store: Store, code_version: str, frameworks: Iterable[str]) -> int:
    """Copy the machine's verdicts for ``frameworks`` at ``code_version`` that ``store`` lacks."""
    try:
        machine = open_record(create=False)
    except StoreError:
        return 0
    if machine is None or machine.path.resolve() == store.path.resolve():
        return 0
    try:
        wanted = set(frameworks)
        held = {(row["framework"], row["workload"], row["framework_version"], row["checked_at"])
                for row in store.verifications(code_version)}
        copied = 0
        for row in machine.verification_rows(code_version):
            key = (row["framework"], row["workload"], row["framework_version"], row["checked_at"])
            if row["framework"] in wanted and key not in held:
                store.copy_verification(row)
                copied += 1
        return copied
    finally:
        machine.close()
