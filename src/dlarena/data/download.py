"""Download one published file into the cache: resumable, retried, and verified by its SHA-256.

The bytes go to ``NAME.part`` beside the target. A new attempt asks for the rest with an HTTP
``Range: bytes=N-`` header and appends when the server answers 206 Partial Content, or starts again
when it answers 200 with the whole file. Only a file whose SHA-256 matches the published one is
renamed to ``NAME`` (or, for a gzipped file whose decompressed content is known, one whose content
matches: a mirror may gzip the same data again); a mismatching one is deleted. Only urllib is used:
no dependency to install.
"""

from __future__ import annotations

import http.client
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from dlarena import __version__
from dlarena.data.cache import sha256_of
from dlarena.data.dataset import DataError

RETRIES = 5  # resumptions after a dropped connection; pip's default --retries is 5 too
TIMEOUT_S = 15.0  # seconds a connect or a read may stall; pip's default --timeout is 15 s
RETRY_WAIT_S = 1.0  # pause before the first resumption, doubled for each further one (exponential back-off)
CHUNK = 1 << 20  # bytes read and written at a time (1 MiB)
USER_AGENT = f"dlarena/{__version__} (urllib)"  # some hosts refuse requests without a User-Agent
# Status codes worth another try: the server is busy or failing, not refusing (RFC 9110, 15.5.9 and 15.6).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-\d+/(\d+|\*)")

Report = Callable[[str], None]


class _Unavailable(Exception):
    """The URL gave nothing: no connection at all (``host`` and ``reason`` set), or a refusal such as 404."""

    def __init__(self, message: str, host: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.host, self.reason = host, reason


class _Dropped(Exception):
    """The connection broke, or the server stopped sending, before the file was complete."""


def _reason(error: BaseException) -> str:
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, BaseException):
        return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return str(reason)


def mirror_url(mirror: str, name: str) -> str:
    """The URL of file ``name`` under a mirror's base URL."""
    return f"{mirror.rstrip('/')}/{name}"


def _fetch(url: str, part: Path, timeout: float, report: Report | None) -> None:
    """One request: append the rest of the file to ``part``, or rewrite it; raises on any failure."""
    host = urlsplit(url).netloc or url
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:  # Range Not Satisfiable: the part is whole already, or too long
            return
        if error.code in RETRY_STATUSES:
            raise _Dropped(f"{host} answered {error.code} {error.reason}") from None
        raise _Unavailable(f"{host} answered {error.code} {error.reason} for {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = _reason(error)
        raise _Unavailable(f"could not reach {host} ({reason})", host, reason) from None
    with response:
        mode = "wb"
        if response.status == 206:
            match = CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                part.unlink()  # the next attempt starts from the beginning
                raise _Dropped(f"{host} sent a range that does not start at byte {offset}")
            mode = "ab"
            if report:
                report(f"resuming {part.name[: -len('.part')]} at byte {offset}")
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        received = 0
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as error:
                        raise _Dropped(f"the connection to {host} broke ({_reason(error)})") from None
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
        except OSError as error:  # the disk, not the network: writing failed
            raise DataError(f"cannot write {part}: {error.strerror or error}") from None
        if length is not None and received < length:
            # http.client returns b"" when the server closes early, rather than raising IncompleteRead.
            raise _Dropped(f"{host} closed the connection after {received} of {length} bytes")


def _fetch_resuming(url: str, part: Path, *, size: int | None, retries: int, timeout: float, retry_wait: float,
                    dataset: str, report: Report | None) -> None:
    """Fetch ``url`` into ``part``, resuming after each drop up to ``retries`` times.

    A URL that gives nothing on the first request raises _Unavailable at once, so that the caller can
    try the next URL; once bytes have flowed, any failure counts as a drop and is resumed.
    """
    attempt = 0
    while True:
        try:
            _fetch(url, part, timeout, report)
            received = part.stat().st_size if part.exists() else 0
            if size is None or received >= size:
                return
            # A response without Content-Length ends when the server closes: short of the published
            # size, that was a drop, not the end of the file.
            raise _Dropped(f"the connection ended after {received} of {size} bytes")
        except _Unavailable as error:
            if attempt == 0:
                raise
            failure: Exception = error
        except _Dropped as error:
            failure = error
        attempt += 1
        if attempt > retries:
            kept = part.stat().st_size if part.exists() else 0
            times = f"{attempt} times" if attempt > 1 else "once"
            raise DataError(f"downloading {part.name[: -len('.part')]} broke off {times} ({failure}); the "
                            f"{kept} bytes received are kept in {part} and `dlarena data download {dataset}` "
                            f"resumes from there") from None
        pause = retry_wait * 2 ** (attempt - 1)
        if report:
            report(f"{failure}; resuming in {pause:g} s")
        time.sleep(pause)


def download(urls: Sequence[str], target: Path, sha256: str, *, dataset: str, size: int | None = None,
             retries: int = RETRIES, timeout: float = TIMEOUT_S, retry_wait: float = RETRY_WAIT_S,
             report: Report | None = None, content_check: Callable[[Path], None] | None = None) -> Path:
    """Fetch ``target`` from the first of ``urls`` that answers, resuming after drops, and verify it.

    ``dataset`` names the data set in messages; ``size`` is the published size in bytes, if known.
    ``content_check``, where the published file's decompressed content is known, takes a file whose
    SHA-256 differs and raises DataError (naming the file) unless its content is the published one.

    Raises DataError naming the file on a checksum mismatch (the file is deleted), on a connection
    that keeps dropping (the part is kept for the next attempt), and when no URL gives the file.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    failures: list[_Unavailable] = []
    for url in urls:
        if report:
            report(f"downloading {target.name} from {url}")
        try:
            _fetch_resuming(url, part, size=size, retries=retries, timeout=timeout, retry_wait=retry_wait,
                            dataset=dataset, report=report)
        except _Unavailable as error:
            failures.append(error)
            continue
        actual = sha256_of(part)
        if actual != sha256:
            problem = f"has SHA-256 {actual}, not the published {sha256}"
            if content_check is None:
                part.unlink()
                raise DataError(f"{target.name} from {url} {problem}, so it was deleted")
            try:
                content_check(part)
            except DataError as error:
                part.unlink()
                reason = str(error).removeprefix(f"{part} ")
                raise DataError(f"{target.name} from {url} {problem}, and {reason}; so it was deleted") from None
            if report:
                report(f"{target.name} from {url} is compressed differently from the published file; "
                       f"its decompressed content is the published one")
        os.replace(part, target)
        return target
    unreachable = [f for f in failures if f.host]
    if len(unreachable) == len(failures) and failures:
        hosts = " nor ".join(f"{f.host} ({f.reason})" for f in unreachable)
        raise DataError(f"could not reach {hosts}; on a machine without network access, fetch {target.name} "
                        f"elsewhere and run `dlarena data import {dataset} PATH`")
    raise DataError(f"{'; '.join(str(f) for f in failures) or 'no URL is known'}; fetch {target.name} elsewhere "
                    f"and run `dlarena data import {dataset} PATH`")
