"""The 1,797 handwritten digits (8x8, 16 grey levels) that scikit-learn ships: real data with no download.

The file is read straight from scikit-learn's package folder, without importing scikit-learn (which
would start its own thread pools inside a measured worker). It is the UCI "Optical Recognition of
Handwritten Digits" test set (Alpaydin and Kaynak, 1998), as ``sklearn.datasets.load_digits`` returns it.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from dlarena.data.dataset import DataError, DataMissing, Dataset, Split

SAMPLES = 1797
PIXELS = 64  # 8 x 8
GREY_LEVELS = 16  # pixel values run from 0 to 16
CLASSES = 10
# SHA-256 of the decompressed CSV (the rows scikit-learn 1.9.1 ships), so that a changed or
# damaged copy is caught whatever its gzip framing.
CSV_SHA256 = "6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8"
# The held-out share, stratified per class with a fixed seed: every framework tests on the same 360.
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def digits_file() -> Path:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataMissing(
            "the digits data set comes with scikit-learn, which is not installed (pip install scikit-learn)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


def read_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (1797, 64) as uint8 and labels (1797,) as int64, checked against the known checksum."""
    try:
        text = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    if hashlib.sha256(text).hexdigest() != CSV_SHA256:
        raise DataError(f"{path} is not the digits file scikit-learn ships (its SHA-256 differs)")
    table = np.loadtxt(text.decode().splitlines(), delimiter=",", dtype=np.int64)
    if table.shape != (SAMPLES, PIXELS + 1):
        raise DataError(f"{path} holds a {table.shape} table, not ({SAMPLES}, {PIXELS + 1})")
    return table[:, :PIXELS].astype(np.uint8), table[:, PIXELS]


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a train and a test part that hold ``fraction`` of every class in the test part."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = round(len(members) * fraction)
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(path: Path | None = None) -> Dataset:
    """Images (N, 1, 8, 8) scaled to [0, 1] as float32, labels int64."""
    pixels, labels = read_digits(path or digits_file())
    images = (pixels.astype(np.float32) / GREY_LEVELS).reshape(-1, 1, 8, 8)
    train, test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    return Dataset("digits", Split(images[train], labels[train]), Split(images[test], labels[test]), CLASSES)
