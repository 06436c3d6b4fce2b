"""CIFAR-10, python version: five training batches and a test batch, each a pickled dict.

Each batch holds b"data", a (10000, 3072) uint8 array whose rows are the red, green and blue 32 x 32
planes one after another, and b"labels", a list of 10000 ints in 0..9 (Krizhevsky's CIFAR page). The
batches are read from the published archive without extracting it, or from its extracted folder,
always through :mod:`dlarena.data.safepickle` because a pickle can run code while it loads.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from dlarena.data.dataset import DataError, Dataset, Split
from dlarena.data.safepickle import safe_loads

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"  # what the archive extracts to
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CHANNELS, SIDE = 3, 32
PIXELS = CHANNELS * SIDE * SIDE  # 3072 values per row
CLASSES = 10
PIXEL_MAX = 255.0


def _batch_arrays(batch: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    """The (N, 3072) uint8 data and (N,) int64 labels of one unpickled batch, checked."""
    if not isinstance(batch, dict):
        raise DataError(f"{source} holds a {type(batch).__name__}, not a CIFAR-10 batch (a dict)")
    # encoding="bytes" keeps Python 2's str keys as bytes (b"data"); a batch re-pickled by Python 3
    # may use str keys, so both are accepted.
    entries = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    if "data" not in entries or "labels" not in entries:
        raise DataError(f"{source} lacks the 'data' or 'labels' entry of a CIFAR-10 batch")
    data = entries["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        shape = getattr(data, "shape", None)
        raise DataError(f"{source}: 'data' is {type(data).__name__} {shape}, not uint8 of shape (N, {PIXELS})")
    try:
        labels = np.asarray(entries["labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{source}: 'labels' is not a list of integers") from None
    if labels.shape != (len(data),):
        raise DataError(f"{source} holds {len(data)} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= CLASSES):
        raise DataError(f"{source} holds labels outside 0..{CLASSES - 1}")
    return data, labels


def _read_archive(path: Path) -> dict[str, bytes]:
    """The batch files' bytes, read member by member (never extracted onto the disk)."""
    wanted = {*TRAIN_BATCHES, TEST_BATCH}
    found: dict[str, bytes] = {}
    try:
        # Stream mode ("r|*") reads the archive once, forwards; members are matched by name only,
        # so paths inside the archive never reach the file system.
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    handle = archive.extractfile(member)
                    if handle is not None:
                        found[base] = handle.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read {path}: it is truncated or corrupted ({error})") from None
    missing = sorted(wanted - found.keys())
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; it is not the CIFAR-10 python archive")
    return found


def _read_folder(folder: Path) -> dict[str, bytes]:
    found = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        try:
            found[name] = (folder / name).read_bytes()
        except OSError as error:
            raise DataError(f"cannot read {folder / name}: {error.strerror or error}") from None
    return found


def locate(path: Path) -> Path:
    """The archive or the extracted batches folder at ``path`` or directly inside it."""
    if path.is_file() or path.name == FOLDER or any((path / n).is_file() for n in (*TRAIN_BATCHES, TEST_BATCH)):
        return path
    for candidate in (path / FOLDER, path / ARCHIVE):
        if candidate.exists():
            return candidate
    raise DataError(f"{path} holds neither {ARCHIVE} nor a {FOLDER} folder")


def _split(batches: list[tuple[np.ndarray, np.ndarray]]) -> Split:
    data = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    # Rows are the R, G and B planes in turn, so a plain reshape gives channels-first (N, 3, 32, 32).
    # Karmanov's cifar_for_library made channels-last with np.swapaxes(x, 1, 3), which also swaps
    # height and width (a transposed image); that quirk is deliberately not copied: dlarena keeps
    # channels-first and each framework permutes to its own layout.
    images = data.astype(np.float32)
    images /= np.float32(PIXEL_MAX)  # in place: the 50,000 training images take 614 MB as float32
    return Split(images.reshape(-1, CHANNELS, SIDE, SIDE), labels)


def read_cifar10(path: Path) -> Dataset:
    """CIFAR-10 from the archive, the extracted ``cifar-10-batches-py`` folder, or a folder holding either."""
    source = locate(path)
    raw = _read_archive(source) if source.is_file() else _read_folder(source)
    arrays = {}
    for name, data in raw.items():
        where = f"{source} (member {name})" if source.is_file() else str(source / name)
        arrays[name] = _batch_arrays(safe_loads(data, where), where)
    train = _split([arrays[name] for name in TRAIN_BATCHES])
    return Dataset("cifar10", train, _split([arrays[TEST_BATCH]]), CLASSES)
