"""The data sets a user has: load them, list them, import local copies, download them.

Import is all or nothing. The files are copied into a temporary folder beside the data set's cache
folder, read there through the real readers, and only then renamed into place, so a failed or
interrupted import leaves the cache as it was.

``strict`` (the command line's behaviour, and the default) accepts only the published data: each
file must hold it (an idx file, gzipped as published, gzipped again or not at all: its decompressed
content's checksums; another file under a published name: its SHA-256; see
:mod:`dlarena.data.verify`), and the data set must hold the published numbers of train and test
samples. ``strict=False`` still reads everything through the readers (a truncated or malformed file
is refused) but accepts other contents: a subset, or a hand-made file.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from dlarena.data import cifar, imdb, mnist, ptb
from dlarena.data.cache import data_home, dataset_folder, size_on_disk
from dlarena.data.catalogue import DATASETS, DataFile, DataSetInfo
from dlarena.data.dataset import DataError, DataMissing, Dataset
from dlarena.data.digits import digits_file, load_digits
from dlarena.data.download import RETRIES, RETRY_WAIT_S, TIMEOUT_S, Report, download, mirror_url
from dlarena.data.verify import check_file, is_published
from dlarena.errors import UnknownNameError

DIGITS = "digits"  # the one data set that ships with the dependencies (scikit-learn) instead of the cache
VERIFY_STEPS = 1  # tokens per sequence when an import reads a text data set to check it

Reader = Callable[[Path, int | None, int | None], Dataset]

# name -> read(folder, vocab, steps): vocab and steps matter only to the text data sets.
READERS: dict[str, Reader] = {
    "mnist": lambda folder, vocab, steps: mnist.read_mnist(folder, "mnist"),
    "fashion-mnist": lambda folder, vocab, steps: mnist.read_mnist(folder, "fashion-mnist"),
    "cifar10": lambda folder, vocab, steps: cifar.read_cifar10(folder),
    "imdb": lambda folder, vocab, steps: imdb.read_imdb_npz(
        folder / "imdb.npz", vocab or imdb.NUM_WORDS, steps or imdb.MAXLEN),
    "aclimdb": lambda folder, vocab, steps: imdb.read_aclimdb(folder, vocab or imdb.NUM_WORDS, steps or imdb.MAXLEN),
    "ptb": lambda folder, vocab, steps: ptb.read_ptb(folder, vocab or ptb.VOCAB, steps or ptb.STEPS),
}
# Extracted folders: which of their files belong to the data set (the rest, e.g. aclImdb's 50,000
# unlabelled reviews, is not copied into the cache).
FOLDER_MEMBERS: dict[str, Callable[[str], bool]] = {
    cifar.FOLDER: lambda relative: relative in (*cifar.TRAIN_BATCHES, cifar.TEST_BATCH),
    imdb.FOLDER: lambda relative: imdb.REVIEW_PATH.search(relative) is not None,
}
# Extracted folders that the user may have renamed, recognised by their contents.
FOLDER_LOCATORS: dict[str, Callable[[Path], Path]] = {cifar.FOLDER: cifar.locate, imdb.FOLDER: imdb.locate_aclimdb}


@dataclass(frozen=True)
class DataSetStatus:
    """One line of ``dlarena data list``."""

    name: str
    title: str
    present: bool
    where: Path | None  # the data set's folder (or scikit-learn's file); None when absent
    size: int  # bytes on disk of the files found
    source: str  # the download host(s), or scikit-learn
    downloadable: bool
    files_present: int
    files_total: int


def dataset_info(name: str) -> DataSetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownNameError("data set", name, DATASETS) from None


def _digits_path() -> Path | None:
    if importlib.util.find_spec("sklearn") is None:
        return None
    path = digits_file()
    return path if path.is_file() else None


def load_dataset(name: str, *, vocab: int | None = None, steps: int | None = None,
                 home: Path | None = None) -> Dataset:
    """The data set ``name`` from the cache (digits from scikit-learn), in the network's input form.

    ``vocab`` and ``steps`` shape the text data sets: for imdb and aclimdb the number of word ids kept
    (num_words, default 30000) and the tokens per review (maxlen, default 150); for ptb the vocabulary
    (default 10000) and the tokens per sequence (default 20). Image data sets ignore them.
    """
    info = dataset_info(name)
    if name == DIGITS:
        return load_digits()
    folder = dataset_folder(name, home)
    if info.resolve(folder) is None:
        raise DataMissing(f"the {name} data set is not in {data_home(home)}; run `dlarena data download {name}` "
                        f"or `dlarena data import {name} PATH`")
    return READERS[name](folder, vocab, steps)


def dataset_status(home: Path | None = None) -> list[DataSetStatus]:
    """Every known data set: present or not, where, how large, and where it comes from."""
    statuses = []
    for info in DATASETS.values():
        if info.name == DIGITS:
            path = _digits_path()
            statuses.append(DataSetStatus(info.name, info.title, path is not None, path,
                                          path.stat().st_size if path else 0, info.source, False, 0, 0))
            continue
        folder = dataset_folder(info.name, home)
        found = [next((folder / n for n in f.names if (folder / n).exists()), None) for f in info.files]
        present = [path for path in found if path is not None]
        statuses.append(DataSetStatus(
            info.name, info.title, len(present) == len(info.files), folder if present else None,
            sum(size_on_disk(path) for path in present), info.source, info.downloadable, len(present),
            len(info.files),
        ))
    return statuses


def _find_sources(info: DataSetInfo, path: Path) -> list[tuple[DataFile, Path]]:
    """Each of the data set's files in ``path`` (the file itself, or a folder holding them)."""
    wanted = ", ".join(f.name for f in info.files)
    if path.is_file():
        if len(info.files) > 1:
            raise DataError(f"the {info.name} data set has {len(info.files)} files ({wanted}); "
                            f"give the folder that holds them, not {path}")
        if path.name not in info.files[0].names:
            raise DataError(f"{path} is not named {' or '.join(info.files[0].names)}, the {info.name} file")
        return [(info.files[0], path)]
    sources = []
    for data_file in info.files:
        # A published file is a file; only the names in FOLDER_MEMBERS are (extracted) folders.
        found = next((path / n for n in data_file.names
                      if ((path / n).is_dir() if n in FOLDER_MEMBERS else (path / n).is_file())), None)
        folder_names = [n for n in data_file.also if n in FOLDER_MEMBERS]
        if found is None and path.name in folder_names:
            found = path  # the extracted folder itself
        for name in folder_names if found is None else ():
            try:  # an extracted folder under another name, recognised by its contents
                found = FOLDER_LOCATORS[name](path)
                break
            except DataError:
                continue
        if found is None:
            alternatives = f" (or {', '.join(data_file.also)})" if data_file.also else ""
            raise DataError(f"{path} lacks {data_file.name}{alternatives} of the {info.name} data set")
        sources.append((data_file, found))
    return sources


def _copy(data_file: DataFile, source: Path, folder: Path) -> None:
    """Copy one file of the data set into ``folder`` under its published (or extracted-folder) name."""
    if source.is_file():
        name = source.name if source.name in data_file.names else data_file.name
        shutil.copyfile(source, folder / name)
        return
    name = next(n for n in data_file.also if n in FOLDER_MEMBERS)
    keep = FOLDER_MEMBERS[name]
    for root, _, files in os.walk(source):
        for file in files:
            relative = (Path(root) / file).relative_to(source).as_posix()
            if keep(relative):
                (folder / name / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(root) / file, folder / name / relative)


def _check_sizes(info: DataSetInfo, dataset: Dataset, path: Path) -> None:
    if info.train_size is None or info.test_size is None:
        return
    if (len(dataset.train), len(dataset.test)) != (info.train_size, info.test_size):
        raise DataError(f"{path} holds {len(dataset.train)} training and {len(dataset.test)} test samples, not the "
                        f"published {info.train_size} and {info.test_size}; dlarena imports only the whole data set")


def import_dataset(name: str, path: Path, home: Path | None = None, *, strict: bool = True) -> Path:
    """Copy the data set's files from ``path`` into the cache after reading them; returns its folder.

    ``path`` is one published file (for a one-file data set), or a folder holding the published files
    (archives as downloaded, gzipped or plain idx files, or an extracted ``cifar-10-batches-py`` or
    ``aclImdb`` folder). See the module's docstring for ``strict``.
    """
    info = dataset_info(name)
    if name == DIGITS:
        raise DataError("the digits data set comes with scikit-learn; there is nothing to import")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist")
    sources = _find_sources(info, path)
    if strict:
        for data_file, source in sources:
            if source.is_file():
                check_file(data_file, source)
    home_folder = data_home(home)
    try:
        home_folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.importing-", dir=home_folder))
        staging.chmod(home_folder.stat().st_mode & 0o777)  # mkdtemp makes it private; the cache folder is not
    except OSError as error:
        raise DataError(f"cannot write to the data cache {home_folder}: {error.strerror or error}") from None
    target = dataset_folder(name, home)
    try:
        for data_file, source in sources:
            _copy(data_file, source, staging)
        # Read the copies, so that what lands in the cache is what was checked. The shortest sequences
        # suffice: the files and their counts are checked, not a particular preparation of them.
        dataset = READERS[name](staging, None, VERIFY_STEPS)
        if strict:
            _check_sizes(info, dataset, path)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.replaced-", dir=home_folder))
            os.replace(target, old / name)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        raise DataError(f"cannot copy {path} into {target}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def download_dataset(name: str, home: Path | None = None, mirror: str | None = None, *,
                     report: Report | None = None, retries: int = RETRIES, timeout: float = TIMEOUT_S,
                     retry_wait: float = RETRY_WAIT_S) -> Path:
    """Download the data set's published files into the cache, verifying each; returns its folder.

    ``mirror`` is a base URL under which the files are found by their published names (an
    institutional mirror, or a test server); the other options are those of
    :func:`dlarena.data.download.download`.
    """
    info = dataset_info(name)
    if name == DIGITS:
        raise DataError("the digits data set comes with scikit-learn; there is nothing to download")
    if not info.downloadable:
        raise DataError(f"no published SHA-256 is known for every {name} file, so dlarena does not download it; "
                        f"fetch the files yourself and run `dlarena data import {name} PATH`")
    folder = dataset_folder(name, home)
    try:
        for data_file in info.files:
            assert data_file.sha256 is not None  # info.downloadable
            target = folder / data_file.name
            if is_published(data_file, target):  # downloaded before, or imported (perhaps gzipped anew)
                if report:
                    report(f"{data_file.name} is already here and verified")
                continue
            urls = (mirror_url(mirror, data_file.name),) if mirror else data_file.urls
            content_check = partial(check_file, data_file) if data_file.content is not None else None
            download(urls, target, data_file.sha256, dataset=name, size=data_file.size, report=report,
                     retries=retries, timeout=timeout, retry_wait=retry_wait, content_check=content_check)
    except OSError as error:
        raise DataError(f"cannot write to the data cache {folder}: {error.strerror or error}") from None
    finally:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a first download that failed before any byte leaves no empty folder behind
    return folder
