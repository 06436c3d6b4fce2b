"""The `ecosystem` probe's facts, read from the package index's public JSON API (PyPI's
``/pypi/<project>/json``): a framework's latest release and its date, how many releases it had in
the last 12 months, and for which CPython versions and platforms its latest release has wheels.

The client is urllib (no dependency to install); the summary is pure functions over the parsed
document, so that tests can feed them recorded answers. The host side (orchestrate/capabilities.py)
stores each answer and, when the index cannot be read, keeps the last figures it read.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from dlarena import __version__

# The index's JSON API; $DLARENA_PYPI_URL points at another (a mirror, or a test's local server).
DEFAULT_PYPI_URL = "https://pypi.org/pypi"
PYPI_URL_VARIABLE = "DLARENA_PYPI_URL"
# Seconds a connect or a read may stall (not the whole transfer: TensorFlow's document is 1.6 MB);
# pip's default --timeout is 15 s, as data/download.py's.
TIMEOUT_S = 15.0
USER_AGENT = f"dlarena/{__version__} (urllib)"

# The platforms the issue asks about, by the name the figures use, and the wheel platform tags
# (PEP 425 / PEP 600 / PEP 656) that install there: a tag matches if it ends with one of the suffixes
# and starts with one of the prefixes. macOS universal2 wheels hold an arm64 build.
PLATFORMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "linux-x86_64": (("manylinux", "musllinux", "linux"), ("_x86_64",)),
    "linux-aarch64": (("manylinux", "musllinux", "linux"), ("_aarch64",)),
    "macos-arm64": (("macosx",), ("_arm64", "_universal2")),
    "windows-x86_64": (("win",), ("_amd64",)),
}
# A pure-Python wheel's tags: one wheel for every interpreter and platform.
ANY = "any"

# The framework whose main distribution is not the first of its registry entry's `distributions`
# (those list what keys its results: ONNX Runtime's and OpenVINO's entries start with onnx, the format
# they read), or that pip cannot install at all (None, with the reason).
PROJECT_OVERRIDES: dict[str, str | None] = {"onnxruntime": "onnxruntime", "openvino": "openvino", "caffe": None}
# Source: /work/shared/reference/frameworks-install.md ("BVLC Caffe 1.0"), checked 2026-12-02.
NOT_ON_INDEX = {"caffe": "BVLC Caffe has no pip route (PyPI's caffe is an empty placeholder): dlarena installs it"
                         " from Debian bullseye's python3-caffe"}

# A PEP 440 pre-release or development release (1.0a1, 2.9.0rc0, 1.25.0.dev2026): not counted as a
# release, but separately. Searched in the public version (before any "+local" part).
PRERELEASE = re.compile(r"\d[._-]?(?:a|b|c|rc|alpha|beta|pre|preview|dev)\d*", re.IGNORECASE)
# A wheel's file name: {distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl (PEP 427).
WHEEL_NAME = re.compile(r"^(?P<stem>.+)-(?P<python>[^-]+)-(?P<abi>[^-]+)-(?P<platform>[^-]+)\.whl$")
CPYTHON_TAG = re.compile(r"^cp(?P<major>\d)(?P<minor>\d+)$")


class IndexUnavailable(Exception):
    """The index could not be read: no network, no answer in time, an HTTP error, or an answer that is
    not the JSON API's. The sentence is the probe's message."""


class NotOnIndex(Exception):
    """The index answered that it has no such project (404)."""


def project_of(framework: str, distributions: Sequence[str]) -> str | None:
    """The index project a framework's ecosystem figures are read for (None: pip cannot install it)."""
    if framework in PROJECT_OVERRIDES:
        return PROJECT_OVERRIDES[framework]
    return distributions[0] if distributions else None


def index_url() -> str:
    return (os.environ.get(PYPI_URL_VARIABLE) or DEFAULT_PYPI_URL).rstrip("/")


def fetch(project: str, timeout: float | None = None) -> dict[str, Any]:
    """The index's JSON document for ``project``; raises IndexUnavailable or NotOnIndex with one sentence."""
    url = f"{index_url()}/{urllib.parse.quote(project)}/json"
    host = urllib.parse.urlsplit(url).netloc or url
    limit = TIMEOUT_S if timeout is None else timeout  # read at call time: tests lower the constant
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=limit) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 404:
            raise NotOnIndex(f"{host} has no project named {project!r} (404 Not Found)") from None
        raise IndexUnavailable(f"{host} answered {error.code} {error.reason} for {project}") from None
    except TimeoutError:  # a read that stalled (before 3.10: socket.timeout, an alias now)
        raise IndexUnavailable(f"{host} did not answer within {limit:g} s") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise IndexUnavailable(f"{host} did not answer within {limit:g} s") from None
        reason = getattr(error.reason, "strerror", None) or str(error.reason)
        raise IndexUnavailable(f"no network (could not reach {host}: {reason})") from None
    except (OSError, http.client.HTTPException) as error:  # a connection reset or cut mid-answer
        raise IndexUnavailable(f"the connection to {host} broke ({type(error).__name__}: {error})") from None
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IndexUnavailable(f"{host}'s answer for {project} is not JSON ({error})") from None
    if not isinstance(document, dict):
        raise IndexUnavailable(f"{host}'s answer for {project} is not the JSON API's (a {type(document).__name__},"
                          " not an object)")
    return document


def summarise(document: Mapping[str, Any], today: date) -> dict[str, Any]:
    """The probe's figures from a project's JSON document, with ``today`` the end of the 12 months.

    Raises IndexUnavailable if the document lacks the API's fields (info.version, releases, urls)."""
    info = _field(document, "info", dict)
    latest = _field(info, "version", str)
    releases = _field(document, "releases", dict)
    files = [file for file in _field(document, "urls", list) if isinstance(file, dict) and not file.get("yanked")]
    uploaded = {version: first_upload(version_files) for version, version_files in releases.items()
                if isinstance(version_files, list)}
    start = year_before(today)
    recent = [version for version, when in uploaded.items() if when is not None and start < when <= today]
    wheels = [file for file in files if str(file.get("filename", "")).endswith(".whl")]
    wheel = platform_wheel(wheels)
    released = first_upload(files)
    return {
        "latest": latest,
        "released": released.isoformat() if released else None,
        "releases_12m": sum(1 for version in recent if not is_prerelease(version)),
        "prereleases_12m": sum(1 for version in recent if is_prerelease(version)),
        "python": python_versions(str(file["filename"]) for file in wheels),
        "platforms": platforms(str(file["filename"]) for file in wheels),
        "requires_python": info.get("requires_python") or None,
        "wheel": wheel["filename"] if wheel else None,
        "wheel_bytes": int(wheel["size"]) if wheel and isinstance(wheel.get("size"), int) else None,
    }


def _field(mapping: Mapping[str, Any], key: str, kind: type) -> Any:
    value = mapping.get(key)
    if not isinstance(value, kind):
        raise IndexUnavailable(f"the index's answer is not the JSON API's: its {key!r} is"
                          f" {'missing' if value is None else 'a ' + type(value).__name__}, not a {kind.__name__}")
    return value


def year_before(today: date) -> date:
    """The same day a year earlier (28 February for 29 February): the 12 months end at ``today``."""
    try:
        return today.replace(year=today.year - 1)
    except ValueError:
        return today.replace(year=today.year - 1, day=28)


def first_upload(files: Iterable[Any]) -> date | None:
    """The day a release was published: its first file not yanked (None: it has no such file)."""
    days = []
    for file in files:
        if not isinstance(file, dict) or file.get("yanked"):
            continue
        stamp = file.get("upload_time_iso_8601") or file.get("upload_time")
        if isinstance(stamp, str):
            try:
                days.append(datetime.fromisoformat(stamp.replace("Z", "+00:00")).date())
            except ValueError:
                continue
    return min(days) if days else None


def is_prerelease(version: str) -> bool:
    return PRERELEASE.search(version.split("+", 1)[0]) is not None


def wheel_tags(filename: str) -> tuple[list[str], str, list[str]] | None:
    """A wheel file name's python tags, ABI tag and platform tags (compressed sets split at dots)."""
    match = WHEEL_NAME.match(filename)
    if match is None:
        return None
    return match["python"].split("."), match["abi"], match["platform"].split(".")


def python_versions(filenames: Iterable[str]) -> list[str]:
    """The CPython versions the wheels are built for: 3.12, 3.14t (free-threaded), 3.9+ (stable ABI,
    every later one too), or ``any`` for a pure-Python wheel (py3-none-any)."""
    found: set[str] = set()
    for filename in filenames:
        tags = wheel_tags(filename)
        if tags is None:
            continue
        pythons, abi, _ = tags
        for python in pythons:
            cpython = CPYTHON_TAG.match(python)
            if cpython:
                version = f"{cpython['major']}.{cpython['minor']}"
                found.add(f"{version}+" if abi == "abi3" else f"{version}t" if abi.endswith("t") else version)
            elif python.startswith("py3") and abi == "none":
                found.add(ANY)
    return sorted(found, key=_python_order)


def _python_order(version: str) -> tuple[int, ...]:
    if version == ANY:
        return (-1,)
    major, minor = version.rstrip("+t").split(".")
    return (int(major), int(minor), version.endswith("t"), version.endswith("+"))


def wheel_platforms(filename: str) -> set[str]:
    """Which of PLATFORMS one wheel installs on (all of them for a pure-Python wheel)."""
    tags = wheel_tags(filename)
    if tags is None:
        return set()
    found = set()
    for tag in tags[2]:
        if tag == ANY:
            return set(PLATFORMS)
        for name, (prefixes, suffixes) in PLATFORMS.items():
            if tag.startswith(prefixes) and tag.endswith(suffixes):
                found.add(name)
    return found


def platforms(filenames: Iterable[str]) -> list[str]:
    """The PLATFORMS some wheel installs on, in PLATFORMS' order."""
    found = set().union(*(wheel_platforms(filename) for filename in filenames))
    return [name for name in PLATFORMS if name in found]


def platform_wheel(wheels: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The wheel pip would take on Linux x86-64 with the newest CPython it is built for, a build with the
    GIL before any free-threaded one (the default interpreter), or the pure-Python wheel; None when
    there is neither."""
    candidates = []
    for wheel in wheels:
        filename = str(wheel.get("filename", ""))
        if "linux-x86_64" not in wheel_platforms(filename):
            continue
        versions = [version for version in python_versions([filename]) if version != ANY]
        rank = max((_python_order(version) for version in versions), default=(-1,))
        candidates.append(((not filename_is_free_threaded(versions), rank[:2]), wheel))
    if not candidates:
        return None
    return max(candidates, key=lambda candidate: candidate[0])[1]


def filename_is_free_threaded(versions: Sequence[str]) -> bool:
    return any(version.endswith("t") for version in versions)
