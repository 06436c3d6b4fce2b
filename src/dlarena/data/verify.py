"""Is a local file the published one? Checked on its data, not on its container.

A gzipped file carries, besides the data, a time stamp, often the original file name, and the output
of one compressor at one level: the same data gzipped again by another program (Debian recompresses
every data set it packages) is another file. So where the catalogue knows a file's decompressed
content (:class:`~dlarena.data.catalogue.Content`), the content is what must match: its length, its
SHA-256, and its MD5 where one is published. Otherwise the file itself must have the published
SHA-256. A file cut short, or damaged so that its gzip check fails, is refused before its content is
compared, with its name and what is wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

from dlarena.data.cache import HASH_CHUNK, sha256_of
from dlarena.data.catalogue import DataFile
from dlarena.data.dataset import DataError

GZIP_MAGIC = b"\x1f\x8b"  # RFC 1952, section 2.3.1


@dataclass(frozen=True)
class Digest:
    """Checksums and length of what a file holds (decompressed, if it is gzipped)."""

    sha256: str
    md5: str
    size: int
    gzipped: bool


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(len(GZIP_MAGIC)) == GZIP_MAGIC


def content_digest(path: Path) -> Digest:
    """The :class:`Digest` of ``path``'s content, read in chunks (47 MB of images stay out of memory)."""
    sha256, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    try:
        gzipped = _is_gzip(path)
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(HASH_CHUNK), b""):
                sha256.update(chunk)
                md5.update(chunk)
                size += len(chunk)
    except EOFError:
        raise DataError(f"{path} is truncated: its gzip stream ends before its end marker") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        # BadGzipFile: a failed CRC-32 or length check, or a damaged header; zlib.error: a damaged stream.
        raise DataError(f"{path} is corrupted: {error}") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    return Digest(sha256.hexdigest(), md5.hexdigest(), size, gzipped)


def check_file(data_file: DataFile, path: Path) -> None:
    """Raise DataError, naming ``path``, unless it holds the published ``data_file``.

    With a known content, any form is checked (the published .gz, another gzip of the same data, or
    the un-gzipped file). Without one, a file under the published name must have the published
    SHA-256; other forms (an extracted folder) are left to the readers.
    """
    content = data_file.content
    if content is not None:
        digest = content_digest(path)
        held = "decompressed, it holds" if digest.gzipped else "it holds"
        if digest.size != content.size:
            short = "shorter" if digest.size < content.size else "longer"
            raise DataError(f"{path} is not the published {data_file.name}: {held} {digest.size} bytes, "
                            f"{short} than the published {content.size}")
        if digest.sha256 != content.sha256 or (content.md5 is not None and digest.md5 != content.md5):
            subject = "its decompressed content" if digest.gzipped else "its content"
            raise DataError(f"{path} is altered or not the published {data_file.name}: {subject} has SHA-256 "
                            f"{digest.sha256}, the published data {content.sha256}")
        return
    if data_file.sha256 is not None and path.is_file() and path.name == data_file.name:
        actual = sha256_of(path)
        if actual != data_file.sha256:
            raise DataError(f"{path} is corrupted or not the published {data_file.name}: its SHA-256 is "
                            f"{actual}, the published one {data_file.sha256}")


def is_published(data_file: DataFile, path: Path) -> bool:
    """Whether ``path`` passes :func:`check_file` (a file already in the cache need not be fetched again)."""
    try:
        check_file(data_file, path)
    except DataError:
        return False
    return path.is_file()
