"""The `ecosystem` probe against a real HTTP server on 127.0.0.1 serving recorded PyPI JSON answers:
a pass with its figures, a malformed answer, a server that never answers, a 404, no network at all."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli
from dlarena.orchestrate.capabilities import HOST_PROBES, ProbeAnswer, ecosystem
from dlarena.probes import ecosystem as pypi
from dlarena.store.database import Store

# The day the tests' 12 months end: the figures never depend on the clock.
TODAY = date(2026, 12, 2)
# What the store keys an answer's machine by; any fixed machine will do.
MACHINE = {"cpu_model": "test", "cores": 2, "memory_bytes": 1 << 30, "os": "test", "python": "3.11"}
HANG = "hang"  # a route whose handler waits, answering nothing, until the test ends


def wheel(project: str, version: str, tags: str, size: int, uploaded: str, yanked: bool = False) -> dict[str, Any]:
    """A file entry as PyPI's JSON API writes it (the fields the probe reads, and a few it does not)."""
    return {"filename": f"{project}-{version}-{tags}.whl", "packagetype": "bdist_wheel", "size": size,
            "upload_time": uploaded.rstrip("Z"), "upload_time_iso_8601": uploaded, "yanked": yanked,
            "yanked_reason": None, "requires_python": ">=3.11", "digests": {"sha256": "0" * 64}}


def torch_like() -> dict[str, Any]:
    """A recorded-style answer for a compiled project: four platforms, CPython 3.11, 3.12 and a
    free-threaded 3.14t, a yanked release, a pre-release, and releases either side of the 12 months."""
    latest = "2.15.0"
    files = [wheel("torch", latest, f"{python}-{abi}-{platform}", size, f"2026-10-28T15:{minute:02d}:10Z")
             for minute, (python, abi, platform, size) in enumerate([
                 ("cp311", "cp311", "manylinux_2_28_x86_64", 539_136_850),
                 ("cp311", "cp311", "manylinux_2_28_aarch64", 483_605_887),
                 ("cp311", "cp311", "macosx_14_0_arm64", 138_527_954),
                 ("cp311", "cp311", "win_amd64", 126_720_349),
                 ("cp312", "cp312", "manylinux_2_28_x86_64", 539_172_785),
                 ("cp312", "cp312", "win_amd64", 126_738_207),
                 ("cp314", "cp314t", "manylinux_2_28_x86_64", 539_145_346),
             ], start=16)]
    files.append({**wheel("torch", latest, "x", 1, "2026-10-28T15:00:00Z"), "filename": "torch-2.15.0.tar.gz",
                  "packagetype": "sdist"})

    def release(version: str, day: str, yanked: bool = False) -> list[dict[str, Any]]:
        return [wheel("torch", version, "cp312-cp312-manylinux_2_28_x86_64", 5, f"{day}T12:00:00Z", yanked)]

    return {
        "info": {"name": "torch", "version": latest, "requires_python": ">=3.11", "summary": "Tensors"},
        "urls": files,
        "releases": {
            "2.9.0": release("2.9.0", "2025-06-01"),
            "2.10.0": release("2.10.0", "2025-12-02"),  # 12 months before today: out (365 days end today)
            "2.11.0": release("2.11.0", "2025-12-03"),  # a day later: in
            "2.12.0rc1": release("2.12.0rc1", "2026-03-01"),  # a pre-release, counted apart
            "2.12.0": release("2.12.0", "2026-04-01", yanked=True),  # yanked: not a release
            "2.13.0": release("2.13.0", "2026-07-01"),
            "2.14.0": [],  # registered, never uploaded
            latest: files,
        },
        "vulnerabilities": [],
    }


def pure_like() -> dict[str, Any]:
    """A pure-Python project: one py3-none-any wheel and an sdist."""
    files = [wheel("keras", "3.15.1", "py3-none-any", 2_398_595, "2026-07-29T18:20:12.345080Z"),
             {**wheel("keras", "3.15.1", "x", 1_919_818, "2026-07-29T18:20:13.909888Z"),
              "filename": "keras-3.15.1.tar.gz", "packagetype": "sdist"}]
    return {"info": {"name": "keras", "version": "3.15.1", "requires_python": ">=3.11"}, "urls": files,
            "releases": {"3.15.1": files}}


@dataclass
class Index:
    """The local index: what it answers per path (status, body), and the URL to point the probe at."""

    url: str
    routes: dict[str, tuple[int, bytes] | str] = field(default_factory=dict)

    def serve(self, project: str, document: dict[str, Any] | bytes | str, status: int = 200) -> None:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        self.routes[f"/pypi/{project}/json"] = HANG if document == HANG else (status, body)


@pytest.fixture
def index(monkeypatch: pytest.MonkeyPatch) -> Iterator[Index]:
    """An HTTP server on 127.0.0.1 in a thread, started and stopped here; DLARENA_PYPI_URL points at it."""
    release = threading.Event()
    routes: dict[str, tuple[int, bytes] | str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path, (404, b'{"message": "Not Found"}'))
            if route == HANG:
                release.wait()  # answer nothing until the test has ended
                return
            assert isinstance(route, tuple)
            status, body = route
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/pypi"
    monkeypatch.setenv(pypi.PYPI_URL_VARIABLE, url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a proxy in the environment must not take local requests
    try:
        yield Index(url, routes)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "eco.db")
    try:
        yield opened
    finally:
        opened.close()


def ask(store: Store) -> ProbeAnswer:
    """Ask torch's ecosystem probe and keep the answer, as `dlarena capabilities` does."""
    answer = ecosystem("torch", store, "test", today=TODAY)
    store.record_probe(answer.as_dict(), "test", MACHINE)
    return answer


def test_a_pass_has_the_release_wheel_and_platform_figures(index: Index, store: Store) -> None:
    index.serve("torch", torch_like())
    answer = ask(store)
    assert answer.outcome == "pass", answer.message
    figures = answer.figures
    assert figures["latest"] == "2.15.0"
    assert figures["released"] == "2026-10-28"
    assert figures["releases_12m"] == 3  # 2.11.0, 2.13.0, 2.15.0
    assert figures["prereleases_12m"] == 1
    assert figures["python"] == ["3.11", "3.12", "3.14t"]
    assert figures["platforms"] == ["linux-x86_64", "linux-aarch64", "macos-arm64", "windows-x86_64"]
    assert figures["wheel"] == "torch-2.15.0-cp312-cp312-manylinux_2_28_x86_64.whl"  # newest CPython with the GIL
    assert figures["wheel_bytes"] == 539_172_785
    assert figures["requires_python"] == ">=3.11" and figures["distribution"] == "torch"
    assert figures["fetched_at"].endswith("+00:00")
    assert HOST_PROBES["ecosystem"] is ecosystem


def test_a_pure_python_wheel_covers_every_platform_and_python(index: Index) -> None:
    index.serve("keras", pure_like())
    figures = pypi.summarise(pypi.fetch("keras"), TODAY)
    assert figures["python"] == [pypi.ANY]
    assert figures["platforms"] == list(pypi.PLATFORMS)
    assert (figures["wheel"], figures["wheel_bytes"]) == ("keras-3.15.1-py3-none-any.whl", 2_398_595)
    assert figures["releases_12m"] == 1


def test_wheel_tags_read_as_pip_reads_them() -> None:
    names = ["a-1-cp39-abi3-macosx_11_0_universal2.whl", "a-1-cp310-cp310-musllinux_1_2_aarch64.whl",
             "a-1-cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "a-1-cp313-cp313-win_arm64.whl"]
    assert pypi.python_versions(names) == ["3.9+", "3.10", "3.13"]
    assert pypi.platforms(names) == ["linux-x86_64", "linux-aarch64", "macos-arm64"]  # win_arm64 is not one
    assert pypi.platforms(["a-1.tar.gz"]) == [] and pypi.python_versions(["a-1-py2.py3-none-any.whl"]) == [pypi.ANY]
    assert pypi.year_before(date(2028, 2, 29)) == date(2027, 2, 28)


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"info": {"version": "2.15', "is not JSON"),
    (json.dumps({"info": {"version": "2.15.0"}, "urls": []}).encode(), "its 'releases' is missing"),
    (b"[1, 2]", "not an object"),
])
def test_a_malformed_answer_is_unavailable_and_keeps_the_last_figures(
        index: Index, store: Store, body: bytes, reason: str) -> None:
    index.serve("torch", torch_like())
    earlier = ask(store)
    assert earlier.outcome == "pass", earlier.message
    index.serve("torch", body)
    answer = ask(store)
    assert answer.outcome == "unavailable"
    assert reason in answer.message and answer.message.count(". ") == 0  # one sentence
    assert f"the figures kept are those read at {earlier.figures['fetched_at']}" in answer.message
    assert answer.figures == earlier.figures  # fetched_at included: when they were read, not now
    index.serve("torch", b"not json")
    assert ask(store).figures == earlier.figures  # an unavailable answer is not taken for a fresh read


def test_a_server_that_never_answers_is_unavailable_after_the_timeout(
        index: Index, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pypi, "TIMEOUT_S", 0.5)
    index.serve("torch", HANG)
    answer = ask(store)
    assert answer.outcome == "unavailable"
    assert answer.message == (f"{index.url.split('/')[2]} did not answer within 0.5 s; no earlier answer is stored")
    assert answer.figures == {"distribution": "torch"}


def test_an_unknown_project_fails_with_a_sentence(index: Index, store: Store) -> None:
    """A 404 is the index's own answer, not a failure to ask: the probe fails (the registry names a
    project PyPI does not have), and no cached figures stand in for it."""
    answer = ask(store)
    assert answer.outcome == "fail"
    assert answer.message == f"{index.url.split('/')[2]} has no project named 'torch' (404 Not Found)"


def test_no_network_is_unavailable(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(pypi.PYPI_URL_VARIABLE, f"http://127.0.0.1:{port}/pypi")
    answer = ask(store)
    assert answer.outcome == "unavailable"
    assert answer.message.startswith(f"no network (could not reach 127.0.0.1:{port}: ")


def test_a_framework_pip_cannot_install_is_unsupported(store: Store) -> None:
    answer = ecosystem("caffe", store, "test", today=TODAY)
    assert (answer.outcome, answer.message) == ("unsupported", pypi.NOT_ON_INDEX["caffe"])


def test_the_command_line_shows_the_latest_release_then_the_kept_one_offline(
        index: Index, cli: Cli, db_path: Path) -> None:
    index.serve("numpy", pure_like())
    environment = {pypi.PYPI_URL_VARIABLE: index.url, "NO_PROXY": "127.0.0.1"}
    arguments = ("capabilities", "--frameworks", "fault-none", "--probes", "ecosystem", "--db", str(db_path))
    done = cli(*arguments, env=environment)
    assert done.returncode == 0, done.stderr
    assert "pass (3.15.1)" in done.stdout
    index.serve("numpy", b"<html>busy</html>", status=200)
    done = cli(*arguments, "--json", env=environment)
    (answer,) = json.loads(done.stdout)
    assert answer["outcome"] == "unavailable" and "is not JSON" in answer["message"]
    assert answer["figures"]["latest"] == "3.15.1"
