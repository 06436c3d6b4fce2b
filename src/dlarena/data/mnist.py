"""MNIST and Fashion-MNIST from their idx files, gzipped as published or not.

The idx format (LeCun's MNIST page, "FILE FORMATS FOR THE MNIST DATABASE"): two zero bytes, a type
code, the number of dimensions, then each dimension as a big-endian 32-bit integer, then the values
in C order, big-endian. Fashion-MNIST uses the same format and the same file names.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from dlarena.data.dataset import DataError, Dataset, Split

# idx type codes and the big-endian NumPy dtypes they stand for (LeCun's MNIST page).
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
UNSIGNED_BYTE = 0x08  # MNIST's images and labels are both unsigned bytes
IDX_MAGIC_ZEROS = b"\x00\x00"  # every idx file starts with two zero bytes
GZIP_MAGIC = b"\x1f\x8b"  # RFC 1952, section 2.3.1
SIDE = 28  # MNIST and Fashion-MNIST images are 28 x 28 (LeCun's page; Xiao et al.)
CLASSES = 10
PIXEL_MAX = 255.0  # unsigned bytes; scaled to [0, 1]
# The published file names, without .gz: train images, train labels, test images, test labels.
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def read_idx(path: Path) -> np.ndarray:
    """The array an idx file holds (gzipped or not), after checking its header against its length."""
    try:
        raw = path.read_bytes()
        if raw[:2] == GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        # gzip raises EOFError for a file cut short, BadGzipFile (an OSError) or zlib.error for damage.
        raise DataError(f"cannot read {path}: it is truncated or corrupted ({error})") from None
    if len(raw) < 4 or raw[:2] != IDX_MAGIC_ZEROS or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an idx file (its first bytes are {raw[:4].hex() or 'missing'})")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: it ends inside the idx header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        cut = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise DataError(f"{path} is {cut}: the header promises {expected} bytes of data for shape {shape}, "
                        f"the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def find_idx(folder: Path, stem: str) -> Path:
    """``stem.gz`` (as published) or ``stem`` (un-gzipped) in ``folder``."""
    for path in (folder / f"{stem}.gz", folder / stem):
        if path.is_file():
            return path
    raise DataError(f"{folder} holds neither {stem}.gz nor {stem}")


def read_split(images_path: Path, labels_path: Path) -> Split:
    """Images (N, 1, 28, 28) float32 in [0, 1] and labels (N,) int64 from a pair of idx files."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{images_path} holds {images.dtype} of shape {images.shape}, "
                        f"not unsigned bytes of shape (N, {SIDE}, {SIDE})")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{labels_path} holds {labels.dtype} of shape {labels.shape}, not unsigned bytes (N,)")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    if labels.size and labels.max() >= CLASSES:
        raise DataError(f"{labels_path} holds the label {labels.max()}; labels run from 0 to {CLASSES - 1}")
    inputs = images.astype(np.float32)
    inputs /= np.float32(PIXEL_MAX)  # in place: no second copy of the 60,000 images
    return Split(inputs.reshape(-1, 1, SIDE, SIDE), labels.astype(np.int64))


def read_mnist(folder: Path, name: str = "mnist") -> Dataset:
    """MNIST or Fashion-MNIST (``name``) from the four idx files in ``folder``."""
    train = read_split(find_idx(folder, TRAIN_IMAGES), find_idx(folder, TRAIN_LABELS))
    test = read_split(find_idx(folder, TEST_IMAGES), find_idx(folder, TEST_LABELS))
    return Dataset(name, train, test, CLASSES)
