"""Where downloaded and imported data sets live: one folder per data set under the cache folder.

The cache folder is ``$DLARENA_DATA`` when set, else ``$XDG_CACHE_HOME/dlarena/data`` (the XDG Base
Directory specification's place for non-essential, re-creatable files), else ``~/.cache/dlarena/data``
(the specification's default for ``$XDG_CACHE_HOME``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DATA_ENV = "DLARENA_DATA"
XDG_CACHE_ENV = "XDG_CACHE_HOME"
XDG_CACHE_DEFAULT = Path(".cache")  # under the home folder, per the XDG Base Directory specification


def data_home(home: Path | None = None) -> Path:
    """The cache folder: ``home`` when given, else from the environment as described above."""
    if home is not None:
        return Path(home)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return cache_base() / "data"


def cache_base() -> Path:
    """dlarena's cache folder: ``$XDG_CACHE_HOME/dlarena``, else ``~/.cache/dlarena``."""
    xdg = os.environ.get(XDG_CACHE_ENV)
    # The specification says a relative $XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / XDG_CACHE_DEFAULT
    return base / "dlarena"


def dataset_folder(name: str, home: Path | None = None) -> Path:
    """The folder that holds the files of data set ``name`` (it may not exist yet)."""
    return data_home(home) / name


def size_on_disk(path: Path) -> int:
    """Bytes in a file, or in all files under a folder (links not followed)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for file in files:
            full = Path(root) / file
            if not full.is_symlink():
                total += full.stat().st_size
    return total


HASH_CHUNK = 1 << 20  # read 1 MiB at a time: large files are hashed without holding them in memory


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, as lower-case hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
