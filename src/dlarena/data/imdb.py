"""IMDB movie reviews (Maas et al., 2011), 25,000 for training and 25,000 for testing, labelled 0/1.

Two published forms are read, and both end in the same token arrays:

* Keras' ``imdb.npz``: every review already a list of word ranks (1 = the most frequent word).
* Stanford's ``aclImdb`` text (the ``aclImdb_v1.tar.gz`` archive or its extracted folder), which is
  tokenised here and ranked by word frequency over the training reviews.

The preparation is Karmanov's ``imdb_for_library`` (DeepLearningFrameworks, ``common/utils.py``), which
follows Keras' ``imdb.load_data``: a start token 1, each rank r becomes r + 3, every id >= ``num_words``
becomes the out-of-vocabulary token 2, then each review keeps its *last* ``maxlen`` tokens, written
left-aligned into a zero array: the padding 0 comes at the *end* (unlike Keras' own pre-padding).
"""

from __future__ import annotations

import collections
import io
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from dlarena.data.dataset import DataError, Dataset, Split
from dlarena.data.safepickle import safe_loads

# Token ids reserved by Keras' imdb.load_data (start_char=1, oov_char=2, index_from=3), kept by Karmanov.
PAD, START, OOV, INDEX_FROM = 0, 1, 2, 3
NUM_WORDS = 30000  # Karmanov's MAXFEATURES (notebooks/common/params_lstm.py)
MAXLEN = 150  # Karmanov's MAXLEN (same file)
CLASSES = 2  # negative 0, positive 1 (Keras; Maas et al.)
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")  # the arrays in Keras' imdb.npz
ARCHIVE = "aclImdb_v1.tar.gz"
FOLDER = "aclImdb"  # what the archive extracts to
LABELS = {"neg": 0, "pos": 1}  # the sub-folders of train/ and test/ (the archive's README)
# A review file: aclImdb/{train,test}/{pos,neg}/{id}_{rating}.txt (the archive's README); the
# unlabelled train/unsup reviews and the bag-of-words files are not used.
REVIEW_PATH = re.compile(r"(?:^|/)(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")
# Tokens: runs of letters and digits (any script), with apostrophes allowed inside a word ("don't",
# "it's") but not at its ends, where they are quotation marks. Everything else separates tokens.
TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
LINE_BREAK = "<br />"  # the reviews' only HTML: line breaks, replaced by a space before tokenising


def prepare(reviews: Sequence[np.ndarray], num_words: int = NUM_WORDS, maxlen: int = MAXLEN) -> np.ndarray:
    """Karmanov's ``imdb_for_library``: reviews of 1-based word ranks -> an (N, maxlen) int64 id array."""
    if num_words <= INDEX_FROM:
        raise DataError(f"the vocabulary size must exceed {INDEX_FROM}, the ids of padding, start and OOV")
    if maxlen < 1:
        raise DataError(f"the sequence length must be at least 1, not {maxlen}")
    out = np.zeros((len(reviews), maxlen), dtype=np.int64)
    start = np.array([START], dtype=np.int64)
    for row, ranks in enumerate(reviews):
        ids = np.concatenate((start, ranks + INDEX_FROM))[-maxlen:]  # the last maxlen tokens, as Karmanov
        out[row, : len(ids)] = ids  # left-aligned: the zero padding stays at the end
    # Karmanov maps w >= max_features to OOV over the whole sequence (start token included); the
    # padding 0 is below any valid num_words, so mapping after padding is the same.
    out[out >= num_words] = OOV
    return out


def _labels(values: np.ndarray, where: str) -> np.ndarray:
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise DataError(f"{where} holds {values.dtype} of shape {values.shape}, not a vector of integer labels")
    if values.size and (values.min() < 0 or values.max() >= CLASSES):
        raise DataError(f"{where} holds labels outside 0..{CLASSES - 1}")
    return values.astype(np.int64)


def _reviews(values: np.ndarray, where: str) -> list[np.ndarray]:
    if values.ndim != 1:
        raise DataError(f"{where} has shape {values.shape}, not one review per entry")
    reviews = []
    for index, review in enumerate(values):
        try:
            ranks = np.asarray(review, dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"{where}[{index}] is not a list of word ranks") from None
        if ranks.ndim != 1 or (ranks.size and ranks.min() < 0):
            raise DataError(f"{where}[{index}] is not a list of non-negative word ranks")
        reviews.append(ranks)
    return reviews


def _read_npy(data: bytes, where: str) -> np.ndarray:
    """One .npy member; object arrays (lists of ints) are unpickled with the restricted unpickler.

    np.load(allow_pickle=True) would unpickle with the full pickle module, which runs whatever code
    a tampered file names; the object arrays here need only NumPy's array rebuilders.
    """
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise DataError(f"{where} is a .npy file of version {version}, which dlarena does not read")
        if not dtype.hasobject:
            fp.seek(0)
            array: np.ndarray = np.lib.format.read_array(fp, allow_pickle=False)
            return array
    except ValueError as error:
        raise DataError(f"{where} is truncated or not a .npy array ({error})") from None
    # Python 2 wrote Keras' file; NumPy recommends latin1 for Python 2 pickles of arrays.
    loaded = safe_loads(data[fp.tell():], where, encoding="latin1")
    if not isinstance(loaded, np.ndarray) or loaded.shape != shape:
        raise DataError(f"{where} does not hold the {shape} array its header announces")
    return loaded


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array in an .npz file, without the unrestricted unpickling that np.load(allow_pickle=True) does."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {info.filename[: -len(".npy")]: _read_npy(archive.read(info), f"{path} ({info.filename})")
                    for info in archive.infolist() if info.filename.endswith(".npy")}
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read {path}: it is truncated or corrupted ({error})") from None


def read_imdb_npz(path: Path, num_words: int = NUM_WORDS, maxlen: int = MAXLEN) -> Dataset:
    """Keras' imdb.npz, prepared as Karmanov's imdb_for_library: ids (N, maxlen) int64, labels 0/1."""
    arrays = read_npz(path)
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; it is not Keras' imdb.npz")
    splits = []
    for part in ("train", "test"):
        reviews = _reviews(arrays[f"x_{part}"], f"{path} (x_{part})")
        labels = _labels(arrays[f"y_{part}"], f"{path} (y_{part})")
        if len(reviews) != len(labels):
            raise DataError(f"{path} holds {len(reviews)} {part} reviews but {len(labels)} labels")
        splits.append(Split(prepare(reviews, num_words, maxlen), labels))
    return Dataset("imdb", splits[0], splits[1], CLASSES)


def tokenize(text: str) -> list[str]:
    """Lower-cased words of a review: letters and digits, apostrophes only inside a word; <br /> dropped."""
    return TOKEN.findall(text.replace(LINE_BREAK, " ").lower())


def rank_words(reviews: Iterable[list[str]]) -> dict[str, int]:
    """Word -> 1-based rank by frequency, most frequent first, ties broken by the word (as Keras' ranks)."""
    counts = collections.Counter(word for review in reviews for word in review)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {word: rank for rank, (word, _) in enumerate(ordered, start=1)}


_Review = tuple[int, int, int, str]  # label, review id, rating, text


def locate_aclimdb(path: Path) -> Path:
    """The archive or the extracted ``aclImdb`` folder at ``path`` or directly inside it."""
    if path.is_file() or ((path / "train").is_dir() and (path / "test").is_dir()):
        return path
    for candidate in (path / FOLDER, path / ARCHIVE):
        if candidate.exists():
            return candidate
    raise DataError(f"{path} holds neither {ARCHIVE} nor an {FOLDER} folder")


def _decode(data: bytes) -> str:
    # The reviews are UTF-8; a stray invalid byte becomes U+FFFD, which is not a letter and so splits words.
    return data.decode("utf-8", errors="replace")


def _read_reviews(source: Path) -> dict[str, list[_Review]]:
    splits: dict[str, list[_Review]] = {"train": [], "test": []}
    if source.is_file():
        try:
            # Stream mode reads the archive once, forwards; only member names are used, nothing is extracted.
            with tarfile.open(source, "r|*") as archive:
                for member in archive:
                    match = REVIEW_PATH.search(member.name)
                    handle = archive.extractfile(member) if match and member.isfile() else None
                    if match and handle is not None:
                        split, label, review, rating = match.groups()
                        splits[split].append((LABELS[label], int(review), int(rating), _decode(handle.read())))
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise DataError(f"cannot read {source}: it is truncated or corrupted ({error})") from None
    else:
        for split in splits:
            for label, value in LABELS.items():
                for file in (source / split / label).glob("*.txt"):
                    match = REVIEW_PATH.search(file.as_posix())
                    if match:
                        try:
                            text = _decode(file.read_bytes())
                        except OSError as error:
                            raise DataError(f"cannot read {file}: {error.strerror or error}") from None
                        splits[split].append((value, int(match.group(3)), int(match.group(4)), text))
    for split, reviews in splits.items():
        if not reviews:
            raise DataError(f"{source} holds no {split}/pos or {split}/neg reviews; it is not the aclImdb data set")
        reviews.sort()  # negative before positive, then by review id: the same order from archive or folder
    return splits


def read_aclimdb(path: Path, num_words: int = NUM_WORDS, maxlen: int = MAXLEN) -> Dataset:
    """Stanford's aclImdb text, tokenised, ranked over the training reviews, prepared as imdb.npz is.

    A test word that never occurs in the training reviews has no rank and is left out, as Keras
    documents for the words of imdb.npz.
    """
    splits = _read_reviews(locate_aclimdb(path))
    tokens = {split: [tokenize(text) for *_, text in reviews] for split, reviews in splits.items()}
    ranks = rank_words(tokens["train"])
    parts = []
    for split, reviews in splits.items():
        ranked = [np.array([ranks[w] for w in words if w in ranks], dtype=np.int64) for words in tokens[split]]
        labels = np.array([label for label, *_ in reviews], dtype=np.int64)
        parts.append(Split(prepare(ranked, num_words, maxlen), labels))
    return Dataset("aclimdb", parts[0], parts[1], CLASSES)
