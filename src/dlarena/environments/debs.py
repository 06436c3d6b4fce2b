"""Debian packages unpacked into a managed environment, without root and without the system's apt.

Some frameworks have no route through pip: BVLC Caffe 1.0 exists as Debian bullseye's ``caffe``,
``libcaffe1`` and ``python3-caffe``. An environment that declares a Debian package list gets them
as data: a *private* apt configuration in a temporary folder (its own ``sources.list`` for the
release, its own state, cache and lists, ``APT::Default-Release``; the system's apt state is never
read or written), ``apt-get download`` of the exact ``package=version`` pins of the environment's
list, and ``dpkg -x`` of each into the environment's ``debian/`` folder. Nothing is installed in
the system, and no maintainer script runs (so alternatives such as ``libblas.so.3`` are not linked:
the environment's ``LD_LIBRARY_PATH`` names the folders that hold the libraries).

The pin list is regenerated with ``python -m dlarena.environments.debs RELEASE ROOT... --skip
PATTERN...``: the closure of the roots' Depends and Pre-Depends in the release, where the first
alternative is taken unless a package already chosen provides the group, and skipped packages
(and what only they need) are left out: the C runtime the host's loader must supply, Essential
packages, and what pip provides in the environment.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

# The Debian archive (bullseye is still served there; it moves to archive.debian.org after its LTS).
ARCHIVE_URL = "http://deb.debian.org/debian"
# Debian's archive keys, bullseye's among them (package debian-archive-keyring, also on Ubuntu).
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
ARCHITECTURE = "amd64"
PREFIX = "debian"  # the folder inside an environment that the packages unpack into
# apt downloads ~60 MB for Caffe; a slow mirror may take ten times the 30 s measured here.
APT_TIMEOUT_S = 1200.0
PIN = re.compile(r"^([a-z0-9][a-z0-9+.-]+)=(\S+)$")  # a Debian package name, `=`, its exact version
ERROR_TAIL_LINES = 6


class DebianError(Exception):
    """apt or dpkg is missing, the archive is unreachable, or a pinned version is gone: one sentence."""


def read_pins(text: str) -> list[tuple[str, str]]:
    """``package=version`` lines (``#`` comments and blank lines ignored)."""
    pins = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        if match is None:
            raise DebianError(f"line {number} of the Debian package list is not package=version: {raw!r}")
        pins.append((match.group(1), match.group(2)))
    return pins


def _require_tools() -> None:
    missing = [tool for tool in ("apt-get", "dpkg") if shutil.which(tool) is None]
    if missing:
        raise DebianError(f"{' and '.join(missing)} not found: this environment unpacks Debian packages and "
                          "needs a Debian or Ubuntu system's apt-get and dpkg (no root needed)")
    if not KEYRING.exists():
        raise DebianError(f"{KEYRING} not found: install the debian-archive-keyring package to verify the "
                          "Debian archive")


def _tail(completed: subprocess.CompletedProcess[str]) -> str:
    return " | ".join((completed.stdout + completed.stderr).strip().splitlines()[-ERROR_TAIL_LINES:])


class PrivateApt:
    """apt-get under a configuration of its own in ``root``: the release's sources alone."""

    def __init__(self, root: Path, release: str) -> None:
        _require_tools()
        self.root = root
        for folder in ("etc/apt/sources.list.d", "etc/apt/preferences.d", "etc/apt/apt.conf.d",
                       "etc/apt/trusted.gpg.d", "state/lists/partial", "cache/archives/partial"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        (root / "state" / "status").write_text("", encoding="utf-8")  # nothing installed: every pin is fetched
        (root / "etc/apt/sources.list").write_text(
            f"deb [signed-by={KEYRING}] {ARCHIVE_URL} {release} main\n", encoding="utf-8")
        options = {
            "Dir::State": root / "state", "Dir::State::status": root / "state" / "status",
            "Dir::Cache": root / "cache", "Dir::Etc": root / "etc/apt",
            "Dir::Etc::sourcelist": root / "etc/apt/sources.list",
            "Dir::Etc::sourceparts": root / "etc/apt/sources.list.d",
            "Dir::Etc::preferences": root / "etc/apt/preferences",
            "Dir::Etc::preferencesparts": root / "etc/apt/preferences.d",
            "Dir::Etc::parts": root / "etc/apt/apt.conf.d",
            "Dir::Etc::trusted": root / "etc/apt/trusted.gpg",
            "Dir::Etc::trustedparts": root / "etc/apt/trusted.gpg.d",
            "APT::Default-Release": release, "APT::Architecture": ARCHITECTURE,
            "Acquire::Languages": "none",
            "Debug::NoLocking": "true",  # its own state folder: no lock on the system's to take
            # Root downloads as _apt, who cannot write a private folder; the download stays ours.
            "APT::Sandbox::User": "root" if os.geteuid() == 0 else "",
        }
        lines = [f'{key} "{value}";' for key, value in options.items() if value != ""]
        (root / "apt.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
        # APT_CONFIG is read before the system's /etc/apt/apt.conf, and Dir::Etc::parts moves apt.conf.d.
        self.environment = {**os.environ, "APT_CONFIG": str(root / "apt.conf"), "LC_ALL": "C"}

    def run(self, arguments: list[str], what: str, cwd: Path | None = None) -> str:
        try:
            completed = subprocess.run(arguments, capture_output=True, text=True, timeout=APT_TIMEOUT_S,
                                       env=self.environment, cwd=cwd)
        except subprocess.TimeoutExpired:
            raise DebianError(f"{what} took more than {APT_TIMEOUT_S:.0f} s") from None
        if completed.returncode != 0:
            raise DebianError(f"{what} failed (exit {completed.returncode}): {_tail(completed)}")
        return completed.stdout

    def update(self, release: str) -> None:
        self.run(["apt-get", "update"], f"reading Debian {release}'s package list from {ARCHIVE_URL}")
        lists = list((self.root / "state" / "lists").glob("*_Packages"))
        if not lists:
            raise DebianError(f"Debian {release}'s package list could not be fetched from {ARCHIVE_URL}")

    def packages_files(self) -> list[Path]:
        return sorted((self.root / "state" / "lists").glob("*_Packages"))


def fetch(pins: list[tuple[str, str]], release: str, prefix: Path) -> list[Path]:
    """Download the pinned packages of ``release`` and unpack each into ``prefix``; the .deb files' paths
    (deleted with the temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="dlarena-apt-") as temporary:
        apt = PrivateApt(Path(temporary), release)
        apt.update(release)
        downloads = Path(temporary) / "downloads"
        downloads.mkdir()
        apt.run(["apt-get", "download", *(f"{name}={version}" for name, version in pins)],
                f"downloading {len(pins)} Debian {release} packages", cwd=downloads)
        debs = sorted(downloads.glob("*.deb"))
        if len(debs) != len(pins):
            raise DebianError(f"apt-get downloaded {len(debs)} of the {len(pins)} pinned Debian packages")
        prefix.mkdir(parents=True, exist_ok=True)
        for deb in debs:
            apt.run(["dpkg", "-x", str(deb), str(prefix)], f"unpacking {deb.name}")
        return [Path(deb.name) for deb in debs]


# --------------------------------------------------------------------------------------------------
# Regenerating a pin list


def _stanzas(files: Iterable[Path]) -> Iterator[dict[str, str]]:
    for path in files:
        for block in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            fields: dict[str, str] = {}
            key = ""
            for line in block.splitlines():
                if line[:1] in (" ", "\t") and key:
                    fields[key] += "\n" + line.strip()
                elif ":" in line:
                    key, _, value = line.partition(":")
                    fields[key] = value.strip()
            if "Package" in fields:
                yield fields


def _names(field: str) -> list[list[str]]:
    """Depends-style text as groups of alternatives' package names (versions and :any dropped)."""
    groups = []
    for group in field.split(","):
        names = [re.split(r"[\s(:\[]", alternative.strip(), maxsplit=1)[0] for alternative in group.split("|")]
        if any(names):
            groups.append([name for name in names if name])
    return groups


def resolve(roots: list[str], release: str, skip: list[str]) -> list[tuple[str, str]]:
    """The pins of ``roots`` and their dependency closure in ``release``, less what ``skip`` matches
    (fnmatch patterns; roots are always kept) and Essential packages."""
    with tempfile.TemporaryDirectory(prefix="dlarena-apt-") as temporary:
        apt = PrivateApt(Path(temporary), release)
        apt.update(release)
        packages: dict[str, dict[str, str]] = {}
        providers: dict[str, list[str]] = {}
        for stanza in _stanzas(apt.packages_files()):
            packages.setdefault(stanza["Package"], stanza)
            for provided in _names(stanza.get("Provides", "")):
                providers.setdefault(provided[0], []).append(stanza["Package"])

    def skipped(name: str) -> bool:
        stanza = packages.get(name, {})
        return stanza.get("Essential") == "yes" or any(fnmatch.fnmatchcase(name, pattern) for pattern in skip)

    chosen: list[str] = []
    queue = list(roots)
    missing = [root for root in roots if root not in packages]
    if missing:
        raise DebianError(f"Debian {release} has no package {', '.join(missing)}")
    while queue:
        name = queue.pop(0)
        if name in chosen:
            continue
        chosen.append(name)
        stanza = packages[name]
        for group in _names(stanza.get("Pre-Depends", "")) + _names(stanza.get("Depends", "")):
            if any(skipped(option) or option in chosen or option in queue for option in group):
                continue
            if any(provider in chosen or provider in queue for option in group
                   for provider in providers.get(option, [])):
                continue
            real = [option for option in group if option in packages]
            pick = real[0] if real else next((p for option in group for p in providers.get(option, [])), None)
            if pick is None:
                raise DebianError(f"no package of Debian {release} satisfies {' | '.join(group)} (needed by {name})")
            if not skipped(pick):
                queue.append(pick)
    return sorted((name, packages[name]["Version"]) for name in chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlarena.environments.debs",
                                     description="Print the package=version pins of Debian packages and "
                                                 "their dependency closure.")
    parser.add_argument("release", help="the Debian release, e.g. bullseye")
    parser.add_argument("roots", nargs="+", help="the packages wanted")
    parser.add_argument("--skip", nargs="*", default=[], help="fnmatch patterns of packages to leave out")
    arguments = parser.parse_args(argv)
    try:
        pins = resolve(arguments.roots, arguments.release, arguments.skip)
    except DebianError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, version in pins:
        print(f"{name}={version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
