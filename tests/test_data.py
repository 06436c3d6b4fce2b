"""Real-data readers, cache, import and download, on small files written here in each published format.

Nothing here touches the network: downloads go to an HTTP server on 127.0.0.1 that the tests start.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlarena import cli
from dlarena.data import (
    DATASETS,
    Content,
    DataError,
    DataFile,
    cache,
    cifar,
    dataset_status,
    download_dataset,
    imdb,
    import_dataset,
    load_dataset,
    mnist,
    ptb,
)
from dlarena.data.cache import sha256_of
from dlarena.data.download import download
from dlarena.data.verify import check_file
from dlarena.errors import UnknownNameError

# ---------------------------------------------------------------------------------------------------
# Writers of the published formats


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(folder: Path, n_train: int = 5, n_test: int = 3, gz: bool = True, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    arrays = {
        mnist.TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        mnist.TRAIN_LABELS: rng.integers(0, 10, n_train, dtype=np.uint8),
        mnist.TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        mnist.TEST_LABELS: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return arrays


def cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    return pickle.dumps({b"batch_label": b"batch", b"labels": labels, b"data": data, b"filenames": []}, protocol=2)


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle wrote CIFAR-10: str opcodes, numpy.core names, protocol 2."""

    def text(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)

    def integer(n: int) -> bytes:
        return b"K" + bytes([n]) if n < 256 else b"M" + struct.pack("<H", n)

    shape = b"(" + b"".join(integer(d) for d in data.shape) + b"t"
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + text(b"b")
             + b"\x87R(" + integer(1) + shape + b"cnumpy\ndtype\n" + text(b"u1") + integer(0) + integer(1)
             + b"\x87R(" + integer(3) + text(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + integer(0)
             + b"tb\x89" + text(data.tobytes()) + b"tb")
    return (b"\x80\x02}(" + text(b"data") + array + text(b"labels") + b"](" + b"".join(integer(x) for x in labels)
            + b"e" + text(b"batch_label") + text(b"testing batch 1 of 1") + b"u.")


def write_cifar(folder: Path, per_batch: int = 2, seed: int = 0, py2: bool = False) -> dict[str, Any]:
    """A cifar-10-batches-py folder: five training batches and a test batch of ``per_batch`` images."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in (*cifar.TRAIN_BATCHES, cifar.TEST_BATCH):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        (folder / name).write_bytes((py2_cifar_pickle if py2 else cifar_pickle)(data, labels))
        batches[name] = (data, labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}))
    return batches


def tar_folder(folder: Path, archive: Path) -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def object_array(items: list[list[int]]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    return array


IMDB_TRAIN = [[1, 2, 3], [1, 7, 2, 5, 6], [], [6]]
IMDB_TEST = [[4, 4], [8]]


def write_imdb_npz(path: Path, train: list[list[int]] = IMDB_TRAIN, test: list[list[int]] = IMDB_TEST) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=object_array(train), y_train=np.array([1, 0, 1, 0][: len(train)]),
             x_test=object_array(test), y_test=np.array([0, 1][: len(test)]))
    return path


ACL_REVIEWS = {
    "train/pos/0_9.txt": "Great movie!<br /><br />Great fun.",
    "train/neg/1_2.txt": "Don't watch. 'Bad' movie, bad.",
    "test/pos/3_10.txt": "Unseen GREAT",
    "test/neg/2_1.txt": "bad",
}


def write_aclimdb(folder: Path) -> Path:
    for relative, text in ACL_REVIEWS.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text, encoding="utf-8")
    (folder / "train" / "unsup").mkdir()
    (folder / "train" / "unsup" / "5_0.txt").write_text("not a labelled review")
    (folder / "imdb.vocab").write_text("the\n")
    return folder


PTB_TRAIN = " a b c \n b c \n c <unk> \n"
PTB_TEST = " a z \n b \n"


def write_ptb(folder: Path, train: str = PTB_TRAIN, test: str = PTB_TEST) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ptb.TRAIN).write_text(train)
    (folder / ptb.VALID).write_text(test)
    (folder / ptb.TEST).write_text(test)
    return folder


class Evil:
    """Unpickling this would create a file: what a hostile pickle does with a less harmless call."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


# ---------------------------------------------------------------------------------------------------
# MNIST idx


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files_gzipped_or_not(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist(tmp_path, gz=gz)
    data = mnist.read_mnist(tmp_path, "fashion-mnist")
    assert data.name == "fashion-mnist" and data.classes == 10
    assert data.train.inputs.shape == (5, 1, 28, 28) and data.test.inputs.shape == (3, 1, 28, 28)
    assert data.train.inputs.dtype == np.float32 and data.train.labels.dtype == np.int64
    np.testing.assert_array_equal(data.train.inputs[:, 0], arrays[mnist.TRAIN_IMAGES] / np.float32(255))
    np.testing.assert_array_equal(data.test.labels, arrays[mnist.TEST_LABELS])
    assert data.train.inputs.min() >= 0 and data.train.inputs.max() <= 1


def test_read_idx_checks_the_header_against_the_payload(tmp_path: Path) -> None:
    images = np.zeros((4, 28, 28), np.uint8)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(images)[:-100])
    with pytest.raises(DataError, match=rf"{path} is truncated: the header promises 3136 bytes"):
        mnist.read_idx(path)
    path.write_bytes(idx_bytes(images) + b"\0")
    with pytest.raises(DataError, match="longer than its header says"):
        mnist.read_idx(path)
    path.write_bytes(b"\x08\x03" + idx_bytes(images)[2:])
    with pytest.raises(DataError, match=f"{path} is not an idx file"):
        mnist.read_idx(path)
    path.write_bytes(idx_bytes(images)[:10])
    with pytest.raises(DataError, match="ends inside the idx header"):
        mnist.read_idx(path)
    path.write_bytes(idx_bytes(np.zeros((2, 3), ">i4"), code=0x0C))
    assert mnist.read_idx(path).shape == (2, 3)


def test_truncated_or_corrupted_gzip_names_the_file(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    path = tmp_path / f"{mnist.TRAIN_IMAGES}.gz"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DataError, match=rf"cannot read {path}: it is truncated or corrupted"):
        mnist.read_mnist(tmp_path)
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(DataError, match=str(path)):
        mnist.read_mnist(tmp_path)


def test_mnist_wrong_shapes_and_counts_name_the_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    images = tmp_path / mnist.TRAIN_IMAGES
    images.write_bytes(idx_bytes(np.zeros((5, 27, 28), np.uint8)))
    with pytest.raises(DataError, match=rf"{images} holds uint8 of shape \(5, 27, 28\)"):
        mnist.read_mnist(tmp_path)
    images.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    with pytest.raises(DataError, match=r"holds 4 images but .* 5 labels"):
        mnist.read_mnist(tmp_path)
    images.write_bytes(idx_bytes(np.zeros((5, 28, 28), np.uint8)))
    labels = tmp_path / mnist.TRAIN_LABELS
    labels.write_bytes(idx_bytes(np.full(5, 10, np.uint8)))
    with pytest.raises(DataError, match=f"{labels} holds the label 10"):
        mnist.read_mnist(tmp_path)
    labels.unlink()
    with pytest.raises(DataError, match=r"holds neither train-labels-idx1-ubyte.gz nor train-labels-idx1-ubyte"):
        mnist.read_mnist(tmp_path)


# ---------------------------------------------------------------------------------------------------
# CIFAR-10


def _check_cifar(data: Any, batches: dict[str, Any]) -> None:
    assert data.train.inputs.shape == (10, 3, 32, 32) and data.test.inputs.shape == (2, 3, 32, 32)
    assert data.train.inputs.dtype == np.float32 and data.train.labels.dtype == np.int64
    first, labels = batches["data_batch_1"]
    # Channels-first: channel c, row y, column x is the row's value c*1024 + y*32 + x.
    c, y, x = 2, 5, 7
    assert data.train.inputs[1, c, y, x] == np.float32(first[1, c * 1024 + y * 32 + x]) / np.float32(255)
    np.testing.assert_array_equal(data.train.labels[:2], labels)
    np.testing.assert_array_equal(data.test.labels, batches["test_batch"][1])
    last = batches["data_batch_5"][0]
    np.testing.assert_array_equal(data.train.inputs[-2:].reshape(2, -1), last / np.float32(255))


@pytest.mark.parametrize("py2", [False, True])
def test_cifar_reads_the_folder_and_the_archive(tmp_path: Path, py2: bool) -> None:
    batches = write_cifar(tmp_path / "cifar-10-batches-py", py2=py2)
    _check_cifar(cifar.read_cifar10(tmp_path / "cifar-10-batches-py"), batches)
    _check_cifar(cifar.read_cifar10(tmp_path), batches)  # the folder that holds it
    archive = tar_folder(tmp_path / "cifar-10-batches-py", tmp_path / "elsewhere" / "cifar-10-python.tar.gz")
    _check_cifar(cifar.read_cifar10(archive), batches)


def test_cifar_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(marker), b"labels": []}))
    with pytest.raises(DataError, match=r"data_batch_3 is not a pickle dlarena reads: the pickle names .*open, which"):
        cifar.read_cifar10(folder)
    assert not marker.exists()


def test_cifar_bad_batches_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "test_batch").write_bytes(cifar_pickle(np.zeros((2, 3000), np.uint8), [0, 1]))
    with pytest.raises(DataError, match=r"test_batch: 'data' is ndarray \(2, 3000\)"):
        cifar.read_cifar10(folder)
    (folder / "test_batch").write_bytes(cifar_pickle(np.zeros((2, 3072), np.uint8), [0]))
    with pytest.raises(DataError, match="test_batch holds 2 images but 1 labels"):
        cifar.read_cifar10(folder)
    (folder / "test_batch").write_bytes(cifar_pickle(np.zeros((2, 3072), np.uint8), [0, 1])[:-40])
    with pytest.raises(DataError, match="test_batch is truncated or corrupted"):
        cifar.read_cifar10(folder)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match=r"cannot read .*test_batch"):
        cifar.read_cifar10(folder)


def test_cifar_truncated_archive_names_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-py")
    archive = tar_folder(tmp_path / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=f"cannot read {archive}: it is truncated or corrupted"):
        cifar.read_cifar10(archive)


# ---------------------------------------------------------------------------------------------------
# IMDB


def karmanov_imdb_for_library(reviews: list[list[int]], seq_len: int, max_features: int) -> np.ndarray:
    """Karmanov's imdb_for_library loop, as published (common/utils.py), as an independent oracle."""
    xs = [[1] + [w + 3 for w in x] for x in reviews]
    xs = [[w if (w < max_features) else 2 for w in x] for x in xs]
    out = np.zeros((len(xs), seq_len), dtype=np.int64)
    for o_idx, obs in enumerate(xs):
        obs = obs[-seq_len:]
        for i_idx in range(len(obs)):
            if i_idx < seq_len:
                out[o_idx][i_idx] = obs[i_idx]
    return out


def test_imdb_preparation_is_karmanovs_on_a_hand_made_example() -> None:
    reviews = [np.array(r, dtype=np.int64) for r in IMDB_TRAIN]
    expected = np.array([[1, 4, 5, 6],  # start 1, ranks + 3
                         [2, 5, 8, 9],  # the last 4 of [1, 4, 10, 5, 8, 9]; 10 >= num_words becomes OOV 2
                         [1, 0, 0, 0],  # an empty review keeps its start token; padding at the end
                         [1, 9, 0, 0]])
    np.testing.assert_array_equal(imdb.prepare(reviews, num_words=10, maxlen=4), expected)
    rng = np.random.default_rng(0)
    many = [list(rng.integers(1, 60, rng.integers(0, 30))) for _ in range(50)]
    np.testing.assert_array_equal(imdb.prepare([np.array(r, dtype=np.int64) for r in many], 40, 12),
                                  karmanov_imdb_for_library(many, 12, 40))
    with pytest.raises(DataError, match="must exceed 3"):
        imdb.prepare(reviews, num_words=3, maxlen=4)


def test_imdb_npz(tmp_path: Path) -> None:
    path = write_imdb_npz(tmp_path / "imdb.npz")
    data = imdb.read_imdb_npz(path, num_words=10, maxlen=4)
    assert data.train.inputs.dtype == np.int64 and data.train.labels.dtype == np.int64 and data.classes == 2
    np.testing.assert_array_equal(data.train.inputs, [[1, 4, 5, 6], [2, 5, 8, 9], [1, 0, 0, 0], [1, 9, 0, 0]])
    np.testing.assert_array_equal(data.train.labels, [1, 0, 1, 0])
    np.testing.assert_array_equal(data.test.inputs, [[1, 7, 7, 0], [1, 2, 0, 0]])
    np.testing.assert_array_equal(data.test.labels, [0, 1])
    assert imdb.read_imdb_npz(path).train.inputs.shape == (4, 150)  # Karmanov's defaults


def test_imdb_npz_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "imdb.npz"
    np.savez(path, x_train=object_array([[1]]), y_train=np.array([1]))
    with pytest.raises(DataError, match=f"{path} lacks x_test, y_test"):
        imdb.read_imdb_npz(path)
    write_imdb_npz(path)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match=f"cannot read {path}: it is truncated or corrupted"):
        imdb.read_imdb_npz(path)
    np.savez(path, x_train=object_array([[1, -4]]), y_train=np.array([1]), x_test=object_array([[1]]),
             y_test=np.array([0]))
    with pytest.raises(DataError, match=r"x_train\)\[0\] is not a list of non-negative word ranks"):
        imdb.read_imdb_npz(path)
    np.savez(path, x_train=object_array([[1]]), y_train=np.array([3]), x_test=object_array([[1]]),
             y_test=np.array([0]))
    with pytest.raises(DataError, match=r"y_train\) holds labels outside 0..1"):
        imdb.read_imdb_npz(path)


def test_imdb_npz_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "imdb.npz"
    np.savez(path, x_train=object_array([[1]]), y_train=np.array([1]), y_test=np.array([0]))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("x_test.npy", header.getvalue() + pickle.dumps(Evil(marker)))
    with pytest.raises(DataError, match="is not a pickle dlarena reads"):
        imdb.read_imdb_npz(path)
    assert not marker.exists()


def test_aclimdb_tokenises_ranks_over_train_and_prepares_like_the_npz(tmp_path: Path) -> None:
    assert imdb.tokenize("It's a 'quoted' word_with_underscore, café 2nd<br />line") == [
        "it's", "a", "quoted", "word", "with", "underscore", "café", "2nd", "line"]
    folder = write_aclimdb(tmp_path / "aclImdb")
    # train counts: bad 2, great 2, movie 2, don't 1, fun 1, watch 1 -> ranks 1..6 in that order
    data = imdb.read_aclimdb(folder, num_words=100, maxlen=8)
    np.testing.assert_array_equal(data.train.inputs, [[1, 7, 9, 4, 6, 4, 0, 0],  # neg: don't watch bad movie bad
                                                      [1, 5, 6, 5, 8, 0, 0, 0]])  # pos: great movie great fun
    np.testing.assert_array_equal(data.train.labels, [0, 1])
    np.testing.assert_array_equal(data.test.inputs[:, :3], [[1, 4, 0], [1, 5, 0]])  # "unseen" is left out
    np.testing.assert_array_equal(data.test.labels, [0, 1])
    short = imdb.read_aclimdb(folder, num_words=8, maxlen=5)
    np.testing.assert_array_equal(short.train.inputs, [[7, 2, 4, 6, 4], [1, 5, 6, 5, 2]])
    archive = tar_folder(folder, tmp_path / "aclImdb_v1.tar.gz")
    np.testing.assert_array_equal(imdb.read_aclimdb(archive, 100, 8).train.inputs, data.train.inputs)
    np.testing.assert_array_equal(imdb.read_aclimdb(tmp_path, 100, 8).test.inputs, data.test.inputs)


def test_aclimdb_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"holds neither aclImdb_v1.tar.gz nor an aclImdb folder"):
        imdb.read_aclimdb(tmp_path)
    (tmp_path / "aclImdb" / "train").mkdir(parents=True)
    (tmp_path / "aclImdb" / "test").mkdir()
    with pytest.raises(DataError, match="holds no train/pos or train/neg reviews"):
        imdb.read_aclimdb(tmp_path)


# ---------------------------------------------------------------------------------------------------
# Penn Treebank


def test_ptb_vocabulary_ids_and_sequences(tmp_path: Path) -> None:
    folder = write_ptb(tmp_path)
    # train words: a b c <eos> b c <eos> c <unk> <eos>; counts c 3, <eos> 3, b 2, <unk> 1, a 1
    assert ptb.build_vocabulary(ptb.read_words(folder / ptb.TRAIN)) == {"<eos>": 0, "c": 1, "b": 2, "<unk>": 3,
                                                                          "a": 4}
    data = ptb.read_ptb(folder, vocab=10000, steps=3)
    # ids: 4 2 1 0 2 1 0 1 3 0 -> (10 - 1) // 3 = 3 sequences
    np.testing.assert_array_equal(data.train.inputs, [[4, 2, 1], [0, 2, 1], [0, 1, 3]])
    np.testing.assert_array_equal(data.train.labels, [[2, 1, 0], [2, 1, 0], [1, 3, 0]])
    assert data.train.inputs.dtype == np.int64 and data.train.labels.dtype == np.int64 and data.classes == 5
    # test words: a z <eos> b <eos>; z is not in the training vocabulary -> <unk>
    np.testing.assert_array_equal(data.test.inputs, [[4, 3, 0]])
    np.testing.assert_array_equal(data.test.labels, [[3, 0, 2]])
    capped = ptb.read_ptb(folder, vocab=4, steps=3)  # "a" (id 4) falls outside and becomes <unk>
    np.testing.assert_array_equal(capped.train.inputs[0], [3, 2, 1])
    assert capped.classes == 4


def test_ptb_errors(tmp_path: Path) -> None:
    folder = write_ptb(tmp_path, train=" a b \n", test=" a \n")
    with pytest.raises(DataError, match="has no <unk>"):
        ptb.read_ptb(folder, vocab=2, steps=1)
    with pytest.raises(DataError, match=f"{folder / ptb.TEST} holds 2 tokens, too few"):
        ptb.read_ptb(folder, steps=2)
    (folder / ptb.TRAIN).write_text("")
    with pytest.raises(DataError, match="is empty"):
        ptb.read_ptb(folder)


# ---------------------------------------------------------------------------------------------------
# scikit-learn's digits


def test_digits_split() -> None:
    pytest.importorskip("sklearn")
    data = load_dataset("digits")
    assert data.train.inputs.shape == (1438, 1, 8, 8) and data.test.inputs.shape == (359, 1, 8, 8)
    assert data.train.inputs.dtype == np.float32 and data.train.labels.dtype == np.int64
    assert data.train.inputs.min() >= 0 and data.train.inputs.max() <= 1
    assert set(data.train.labels) == set(data.test.labels) == set(range(10))


# ---------------------------------------------------------------------------------------------------
# Catalogue, cache folder, load


def test_catalogue_entries_are_complete() -> None:
    assert set(DATASETS) == {"digits", "mnist", "fashion-mnist", "cifar10", "imdb", "aclimdb", "ptb"}
    for info in DATASETS.values():
        assert info.title and info.citation
        for data_file in info.files:
            assert data_file.sha256 is not None and len(data_file.sha256) == 64
            int(data_file.sha256, 16)
            assert data_file.urls and all(url.endswith("/" + data_file.name) for url in data_file.urls)
    assert not DATASETS["digits"].downloadable
    assert all(info.downloadable for name, info in DATASETS.items() if name != "digits")
    # The idx files' decompressed content: what an import checks (their containers differ by compressor).
    for name in ("mnist", "fashion-mnist"):
        sizes = []
        for data_file in DATASETS[name].files:
            content = data_file.content
            assert content is not None and data_file.name.endswith(".gz")
            assert len(content.sha256) == 64 and content.md5 is not None and len(content.md5) == 32
            int(content.sha256, 16), int(content.md5, 16)
            sizes.append(content.size)
        # 16 header bytes and 784 pixels per image, 8 header bytes and 1 byte per label (LeCun's page).
        assert sizes == [16 + 60000 * 784, 8 + 60000, 16 + 10000 * 784, 8 + 10000]
    assert all(f.content is None for name in ("cifar10", "imdb", "aclimdb", "ptb") for f in DATASETS[name].files)


def test_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DLARENA_DATA", str(tmp_path / "d"))
    assert cache.data_home() == tmp_path / "d"
    assert cache.dataset_folder("mnist") == tmp_path / "d" / "mnist"
    assert cache.data_home(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("DLARENA_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.data_home() == tmp_path / "xdg" / "dlarena" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.data_home() == tmp_path / "home" / ".cache" / "dlarena" / "data"


def test_load_dataset_missing_and_unknown(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", home=tmp_path)
    assert str(error.value) == (f"the cifar10 data set is not in {tmp_path}; run `dlarena data download cifar10` "
                                "or `dlarena data import cifar10 PATH`")
    with pytest.raises(UnknownNameError,
                       match=r"unknown data set 'cifar' \(did you mean 'cifar10'\?\); valid data sets: aclimdb,"):
        load_dataset("cifar")


def test_load_dataset_reads_the_cache_with_vocab_and_steps(tmp_path: Path) -> None:
    write_ptb(tmp_path / "ptb")
    assert load_dataset("ptb", steps=3, home=tmp_path).train.inputs.shape == (3, 3)
    write_imdb_npz(tmp_path / "imdb" / "imdb.npz")
    data = load_dataset("imdb", vocab=10, steps=4, home=tmp_path)
    assert data.train.inputs[1].tolist() == [2, 5, 8, 9]
    write_mnist(tmp_path / "mnist", gz=False)
    assert load_dataset("mnist", vocab=5, home=tmp_path).train.inputs.shape == (5, 1, 28, 28)


def test_dataset_status(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / f"{mnist.TEST_LABELS}.gz").unlink()
    write_ptb(tmp_path / "ptb")
    statuses = {s.name: s for s in dataset_status(home=tmp_path)}
    assert not statuses["mnist"].present and statuses["mnist"].files_present == 3
    assert statuses["ptb"].present and statuses["ptb"].where == tmp_path / "ptb" and statuses["ptb"].size > 0
    assert not statuses["cifar10"].present and statuses["cifar10"].where is None
    assert statuses["cifar10"].source == "www.cs.toronto.edu"


# ---------------------------------------------------------------------------------------------------
# Import


def leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in home.iterdir()) if home.exists() else []


def test_import_mnist_gz_and_raw(tmp_path: Path) -> None:
    home = tmp_path / "cache"
    arrays = write_mnist(tmp_path / "downloads", gz=True)
    assert import_dataset("mnist", tmp_path / "downloads", home, strict=False) == home / "mnist"
    np.testing.assert_array_equal(load_dataset("mnist", home=home).train.labels, arrays[mnist.TRAIN_LABELS])
    raw = write_mnist(tmp_path / "raw", gz=False, seed=1)
    import_dataset("mnist", tmp_path / "raw", home, strict=False)  # replaces the earlier import
    np.testing.assert_array_equal(load_dataset("mnist", home=home).train.labels, raw[mnist.TRAIN_LABELS])
    assert sorted(p.name for p in (home / "mnist").iterdir()) == sorted(raw)
    assert leftovers(home) == ["mnist"]


def gzip_again(data: bytes, level: int, mtime: int, name: str) -> bytes:
    """``data`` gzipped as another program would: another level, time stamp and file name in the header."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buffer, compresslevel=level, mtime=mtime) as file:
        file.write(data)
    return buffer.getvalue()


def small_mnist_catalogue(monkeypatch: pytest.MonkeyPatch, folder: Path) -> dict[str, bytes]:
    """The mnist entry with the checksums and counts of hand-made files in ``folder``, as if published.

    Returns each file's decompressed content by its un-gzipped name.
    """
    contents = {stem: gzip.decompress((folder / f"{stem}.gz").read_bytes()) for stem in IDX_STEMS}
    files = tuple(
        dataclasses.replace(
            f, sha256=hashlib.sha256((folder / f.name).read_bytes()).hexdigest(), size=(folder / f.name).stat().st_size,
            content=Content(hashlib.sha256(data).hexdigest(), len(data), hashlib.md5(data).hexdigest()))
        for f in DATASETS["mnist"].files for data in [contents[f.also[0]]]
    )
    info = dataclasses.replace(DATASETS["mnist"], files=files, train_size=5, test_size=3)
    monkeypatch.setitem(DATASETS, "mnist", info)
    return contents


IDX_STEMS = (mnist.TRAIN_IMAGES, mnist.TRAIN_LABELS, mnist.TEST_IMAGES, mnist.TEST_LABELS)
# Flipping one bit of a byte: the smallest change to a file.
FLIP = 0x01


def test_strict_import_accepts_the_published_data_gzipped_again(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = write_mnist(tmp_path / "published")
    contents = small_mnist_catalogue(monkeypatch, tmp_path / "published")
    again = tmp_path / "recompressed"
    again.mkdir()
    for stem, data in contents.items():  # level 1 instead of 9, another time stamp, a file name in the header
        (again / f"{stem}.gz").write_bytes(gzip_again(data, level=1, mtime=1_234_567_890, name=stem))
        assert (again / f"{stem}.gz").read_bytes() != (tmp_path / "published" / f"{stem}.gz").read_bytes()
    home = tmp_path / "cache"
    assert import_dataset("mnist", again, home) == home / "mnist"
    np.testing.assert_array_equal(load_dataset("mnist", home=home).train.labels, arrays[mnist.TRAIN_LABELS])
    plain = tmp_path / "plain"  # un-gzipped, as many users keep the files
    plain.mkdir()
    for stem, data in contents.items():
        (plain / stem).write_bytes(data)
    import_dataset("mnist", plain, home)
    assert sorted(p.name for p in (home / "mnist").iterdir()) == sorted(IDX_STEMS)


def _damaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> Path:
    """A folder of the small published MNIST in which the train images are damaged ``how``."""
    folder = tmp_path / how
    write_mnist(folder)
    contents = small_mnist_catalogue(monkeypatch, folder)
    damaged = folder / f"{mnist.TRAIN_IMAGES}.gz"
    published = damaged.read_bytes()
    data = bytearray(contents[mnist.TRAIN_IMAGES])
    if how == "pixel":  # one changed byte of the data, gzipped again with a valid CRC: only the content shows it
        data[len(data) // 2] ^= FLIP
        damaged.write_bytes(gzip_again(bytes(data), level=6, mtime=0, name=mnist.TRAIN_IMAGES))
    elif how == "crc":  # one changed byte of the gzip trailer's CRC-32 (RFC 1952: CRC32, then ISIZE, last)
        damaged.write_bytes(published[:-8] + bytes([published[-8] ^ FLIP]) + published[-7:])
    elif how == "stream":  # one changed byte in the middle of the compressed data
        changed = bytearray(published)
        changed[len(changed) // 2] ^= FLIP
        damaged.write_bytes(bytes(changed))
    elif how == "truncated":
        damaged.write_bytes(published[:-20])
    elif how == "plain":  # un-gzipped, one changed byte
        damaged.unlink()
        data[-1] ^= FLIP
        (folder / mnist.TRAIN_IMAGES).write_bytes(bytes(data))
        return folder / mnist.TRAIN_IMAGES
    elif how == "short":  # gzipped again, without its last image
        damaged.write_bytes(gzip_again(bytes(data[:-28 * 28]), level=9, mtime=0, name=mnist.TRAIN_IMAGES))
    return damaged


@pytest.mark.parametrize(("how", "problem"), [
    ("pixel", r"is altered or not the published train-images-idx3-ubyte.gz: its decompressed content has SHA-256 "
              r"[0-9a-f]{64}, the published data [0-9a-f]{64}"),
    ("plain", r"is altered or not the published train-images-idx3-ubyte.gz: its content has SHA-256"),
    ("crc", r"is corrupted: CRC check failed"),
    ("stream", r"is (corrupted|truncated)"),
    ("truncated", r"is truncated: its gzip stream ends before its end marker"),
    ("short", r"is not the published train-images-idx3-ubyte.gz: decompressed, it holds 3152 bytes, shorter than "
              r"the published 3936"),
])
def test_strict_import_refuses_a_damaged_file_naming_it_and_what_is_wrong(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, problem: str) -> None:
    damaged = _damaged(tmp_path, monkeypatch, how)
    home = tmp_path / "cache"
    with pytest.raises(DataError, match=rf"^{damaged} {problem}"):
        import_dataset("mnist", damaged.parent, home)
    assert leftovers(home) == []


def test_strict_import_still_checks_a_file_without_a_known_content_by_its_sha256(tmp_path: Path) -> None:
    home = tmp_path / "cache"
    npz = write_imdb_npz(tmp_path / "imdb.npz")
    with pytest.raises(DataError, match=rf"{npz} is corrupted or not the published imdb.npz: its SHA-256 is "
                                        r"[0-9a-f]{64}, the published one 69664113"):
        import_dataset("imdb", npz, home)
    assert leftovers(home) == []


def test_strict_import_checks_the_published_counts(tmp_path: Path) -> None:
    home = tmp_path / "cache"
    write_aclimdb(tmp_path / "aclImdb")  # an extracted folder: no checksum, so its counts are checked
    with pytest.raises(DataError, match="holds 2 training and 2 test samples, not the published 25000 and 25000"):
        import_dataset("aclimdb", tmp_path / "aclImdb", home)
    assert leftovers(home) == []


# Debian's dataset-fashion-mnist: the four published idx files, gzipped again by Debian (README,
# "Real data sets"); CI installs it (.ci/run).
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Xiao et al. (2017): 7,000 images per class, 6,000 of them in the training set.
FASHION_PER_CLASS = (6000, 1000)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_debian_fashion_mnist_imports_from_the_command_line(tmp_path: Path) -> None:
    info = DATASETS["fashion-mnist"]
    # Not one of Debian's files has the published SHA-256, and every one holds the published data.
    assert all(sha256_of(DEBIAN_FASHION_MNIST / f.name) != f.sha256 for f in info.files)
    result = run_cli(tmp_path, "import", "fashion-mnist", str(DEBIAN_FASHION_MNIST))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"imported fashion-mnist into {tmp_path / 'cache' / 'fashion-mnist'}\n"
    data = load_dataset("fashion-mnist", home=tmp_path / "cache")
    assert data.train.inputs.shape == (60000, 1, 28, 28) and data.test.inputs.shape == (10000, 1, 28, 28)
    for split, per_class in zip((data.train, data.test), FASHION_PER_CLASS, strict=True):
        assert np.bincount(split.labels).tolist() == [per_class] * 10
    # The same labels with one changed, gzipped as Debian's are: refused, by name.
    labels = info.files[3]
    altered = bytearray(gzip.decompress((DEBIAN_FASHION_MNIST / labels.name).read_bytes()))
    altered[-1] = (altered[-1] + 1) % 10
    path = tmp_path / labels.name
    path.write_bytes(gzip_again(bytes(altered), level=9, mtime=0, name=labels.also[0]))
    with pytest.raises(DataError, match=rf"^{path} is altered or not the published {labels.name}"):
        check_file(labels, path)


def test_a_failed_import_leaves_the_cache_as_it_was(tmp_path: Path) -> None:
    home = tmp_path / "cache"
    good = write_mnist(tmp_path / "good")
    import_dataset("mnist", tmp_path / "good", home, strict=False)
    write_mnist(tmp_path / "bad")
    truncated = tmp_path / "bad" / f"{mnist.TEST_IMAGES}.gz"
    truncated.write_bytes(truncated.read_bytes()[:-20])
    with pytest.raises(DataError, match=f"{mnist.TEST_IMAGES}.gz: it is truncated"):
        import_dataset("mnist", tmp_path / "bad", home, strict=False)
    np.testing.assert_array_equal(load_dataset("mnist", home=home).test.labels, good[mnist.TEST_LABELS])
    assert leftovers(home) == ["mnist"]


def test_import_cifar_archive_and_renamed_folder(tmp_path: Path) -> None:
    home = tmp_path / "cache"
    batches = write_cifar(tmp_path / "my-cifar")
    import_dataset("cifar10", tmp_path / "my-cifar", home, strict=False)  # extracted, then renamed
    assert sorted(p.name for p in (home / "cifar10" / "cifar-10-batches-py").iterdir()) == sorted(batches)
    _check_cifar(load_dataset("cifar10", home=home), batches)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "my-cifar", arcname="cifar-10-batches-py")
    import_dataset("cifar10", archive, home, strict=False)
    assert [p.name for p in (home / "cifar10").iterdir()] == ["cifar-10-python.tar.gz"]
    _check_cifar(load_dataset("cifar10", home=home), batches)
    with pytest.raises(DataError, match=r"is not named cifar-10-python.tar.gz or cifar-10-batches-py"):
        import_dataset("cifar10", tmp_path / "my-cifar" / "test_batch", home, strict=False)


def test_import_aclimdb_folder_copies_only_the_labelled_reviews(tmp_path: Path) -> None:
    home = tmp_path / "cache"
    write_aclimdb(tmp_path / "aclImdb")
    import_dataset("aclimdb", tmp_path / "aclImdb", home, strict=False)
    copied = sorted(p.relative_to(home / "aclimdb" / "aclImdb").as_posix()
                    for p in (home / "aclimdb").rglob("*.txt"))
    assert copied == sorted(ACL_REVIEWS)
    assert load_dataset("aclimdb", vocab=100, steps=8, home=home).train.inputs[1].tolist() == [1, 5, 6, 5, 8, 0, 0, 0]
    with pytest.raises(DataError, match="holds 2 training and 2 test samples, not the published 25000 and 25000"):
        import_dataset("aclimdb", tmp_path / "aclImdb", home)


def test_import_imdb_and_ptb_and_errors(tmp_path: Path) -> None:
    home = tmp_path / "cache"
    import_dataset("imdb", write_imdb_npz(tmp_path / "imdb.npz"), home, strict=False)
    assert load_dataset("imdb", home=home).train.inputs.shape == (4, 150)
    import_dataset("ptb", write_ptb(tmp_path / "ptb"), home, strict=False)
    with pytest.raises(DataError, match=r"the ptb data set has 3 files .* give the folder"):
        import_dataset("ptb", tmp_path / "ptb" / ptb.TRAIN, home)
    (tmp_path / "ptb" / ptb.VALID).unlink()
    with pytest.raises(DataError, match=r"lacks ptb.valid.txt of the ptb data set"):
        import_dataset("ptb", tmp_path / "ptb", home)
    with pytest.raises(DataError, match="does not exist"):
        import_dataset("ptb", tmp_path / "nowhere", home)
    with pytest.raises(DataError, match=r"lacks train-images-idx3-ubyte.gz \(or train-images-idx3-ubyte\) of the"):
        import_dataset("mnist", tmp_path / "ptb", home)
    with pytest.raises(DataError, match="comes with scikit-learn"):
        import_dataset("digits", tmp_path, home)
    assert leftovers(home) == ["imdb", "ptb"]


# ---------------------------------------------------------------------------------------------------
# Download, against a local HTTP server


class Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    drops: dict[str, int]  # path -> bytes sent before the connection is cut, on the next request only
    unsized: set[str]  # paths answered without Content-Length (the body ends when the connection closes)
    requests: list[tuple[str, str | None]]


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        body = self.server.files.get(self.path)
        self.server.requests.append((self.path, self.headers.get("Range")))
        if body is None:
            self.send_error(404)
            return
        wanted = self.headers.get("Range")
        start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted else 0
        payload = body[start:]
        self.send_response(206 if wanted else 200)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if self.path not in self.server.unsized:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        cut = self.server.drops.pop(self.path, None)
        self.wfile.write(payload if cut is None else payload[:cut])  # HTTP/1.0: the connection closes after

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.files, httpd.drops, httpd.unsized, httpd.requests = {}, {}, set(), []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def base_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


BODY = bytes(range(256)) * 400  # 100 KiB
BODY_SHA = hashlib.sha256(BODY).hexdigest()


def test_download_verifies_the_checksum(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = BODY
    target = download([f"{base_url(server)}/f.bin"], tmp_path / "f.bin", BODY_SHA, dataset="x")
    assert target.read_bytes() == BODY and not (tmp_path / "f.bin.part").exists()


def test_download_with_a_wrong_checksum_deletes_the_file(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = BODY
    with pytest.raises(DataError, match=f"f.bin from .* has SHA-256 {BODY_SHA}, not the published 0+, so it was del"):
        download([f"{base_url(server)}/f.bin"], tmp_path / "f.bin", "0" * 64, dataset="x")
    assert list(tmp_path.iterdir()) == []


def test_a_dropped_download_resumes_with_a_range_request(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = BODY
    server.drops["/f.bin"] = 30000
    messages: list[str] = []
    target = download([f"{base_url(server)}/f.bin"], tmp_path / "f.bin", BODY_SHA, dataset="x", retry_wait=0,
                      report=messages.append)
    assert target.read_bytes() == BODY
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=30000-")]
    assert any("closed the connection after 30000 of 102400 bytes" in m for m in messages)
    assert any("resuming f.bin at byte 30000" in m for m in messages)


def test_a_drop_without_content_length_is_caught_by_the_published_size(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = BODY
    server.drops["/f.bin"] = 5000
    server.unsized.add("/f.bin")
    download([f"{base_url(server)}/f.bin"], tmp_path / "f.bin", BODY_SHA, dataset="x", size=len(BODY), retry_wait=0)
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=5000-")]
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_a_download_that_keeps_dropping_keeps_its_part_for_the_next_run(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = BODY
    server.drops["/f.bin"] = 1000
    url = f"{base_url(server)}/f.bin"
    with pytest.raises(DataError, match=r"downloading f.bin broke off once .*1000 bytes received are kept"):
        download([url], tmp_path / "f.bin", BODY_SHA, dataset="x", retries=0, retry_wait=0)
    assert (tmp_path / "f.bin.part").stat().st_size == 1000
    download([url], tmp_path / "f.bin", BODY_SHA, dataset="x", retries=0)  # a later run resumes
    assert server.requests[-1] == ("/f.bin", "bytes=1000-")
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_a_server_that_ignores_range_restarts_the_file(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = BODY
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes from elsewhere")

    class NoRange(Handler):
        def do_GET(self) -> None:
            del self.headers["Range"]
            super().do_GET()

    server.RequestHandlerClass = NoRange
    download([f"{base_url(server)}/f.bin"], tmp_path / "f.bin", BODY_SHA, dataset="x")
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_an_unreachable_host_gives_one_sentence(tmp_path: Path) -> None:
    port = closed_port()
    with pytest.raises(DataError) as error:
        download([f"http://127.0.0.1:{port}/f.bin"], tmp_path / "f.bin", BODY_SHA, dataset="mnist")
    message = str(error.value)
    assert message.startswith(f"could not reach 127.0.0.1:{port} (")
    assert message.endswith("fetch f.bin elsewhere and run `dlarena data import mnist PATH`")
    assert "\n" not in message


def test_download_tries_the_next_url_after_a_404(server: Server, tmp_path: Path) -> None:
    server.files["/b/f.bin"] = BODY
    download([f"{base_url(server)}/a/f.bin", f"{base_url(server)}/b/f.bin"], tmp_path / "f.bin", BODY_SHA,
             dataset="x")
    assert (tmp_path / "f.bin").read_bytes() == BODY
    with pytest.raises(DataError, match=r"answered 404 Not Found for .*/a/f.bin"):
        download([f"{base_url(server)}/a/f.bin"], tmp_path / "g.bin", BODY_SHA, dataset="x")


def _small_ptb_catalogue(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """The ptb entry with the checksums of small hand-made files, so that a mirror can serve them."""
    contents = {f.name: (folder / f.name).read_bytes() for f in DATASETS["ptb"].files}
    files = tuple(dataclasses.replace(f, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
                  for f in DATASETS["ptb"].files for data in [contents[f.name]])
    monkeypatch.setitem(DATASETS, "ptb", dataclasses.replace(DATASETS["ptb"], files=files))


def test_download_dataset_from_a_mirror(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_ptb(tmp_path / "source")
    _small_ptb_catalogue(monkeypatch, source)
    for name in (ptb.TRAIN, ptb.VALID, ptb.TEST):
        server.files[f"/mirror/{name}"] = (source / name).read_bytes()
    home = tmp_path / "cache"
    assert download_dataset("ptb", home, mirror=f"{base_url(server)}/mirror/") == home / "ptb"
    assert load_dataset("ptb", steps=3, home=home).train.inputs.shape == (3, 3)
    before = len(server.requests)
    download_dataset("ptb", home, mirror=f"{base_url(server)}/mirror")  # verified files are not fetched again
    assert len(server.requests) == before
    with pytest.raises(DataError, match="comes with scikit-learn"):
        download_dataset("digits", home)


def test_a_download_gzipped_anew_is_kept_when_its_content_is_the_published_one(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path / "published")
    contents = small_mnist_catalogue(monkeypatch, tmp_path / "published")
    for stem, data in contents.items():  # a mirror that gzipped the same data again
        server.files[f"/mirror/{stem}.gz"] = gzip_again(data, level=1, mtime=42, name=stem)
    home, messages = tmp_path / "cache", []
    download_dataset("mnist", home, mirror=f"{base_url(server)}/mirror", report=messages.append)
    assert sum("is compressed differently from the published file; its decompressed content is the published one"
               in message for message in messages) == len(IDX_STEMS)
    np.testing.assert_array_equal(load_dataset("mnist", home=home).train.inputs.ravel()[:5],
                                  np.frombuffer(contents[mnist.TRAIN_IMAGES], np.uint8, 5, 16) / np.float32(255))
    before = len(server.requests)
    download_dataset("mnist", home, mirror=f"{base_url(server)}/mirror")  # verified by content: not fetched again
    assert len(server.requests) == before


def test_a_download_with_altered_content_is_deleted(server: Server, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path / "published")
    contents = small_mnist_catalogue(monkeypatch, tmp_path / "published")
    altered = bytearray(contents[mnist.TRAIN_IMAGES])
    altered[-1] ^= FLIP
    server.files[f"/{mnist.TRAIN_IMAGES}.gz"] = gzip_again(bytes(altered), level=9, mtime=0, name=mnist.TRAIN_IMAGES)
    with pytest.raises(DataError, match=r"^train-images-idx3-ubyte.gz from http://\S+ has SHA-256 [0-9a-f]{64}, "
                                        r"not the published [0-9a-f]{64}, and is altered or not the published "
                                        r"train-images-idx3-ubyte.gz: its decompressed content has SHA-256 "
                                        r"[0-9a-f]{64}, the published data [0-9a-f]{64}; so it was deleted$"):
        download_dataset("mnist", tmp_path / "cache", mirror=base_url(server))
    assert leftovers(tmp_path / "cache") == []


def test_download_dataset_without_a_checksum_refuses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    info = DATASETS["imdb"]
    monkeypatch.setitem(DATASETS, "imdb", dataclasses.replace(info, files=(DataFile("imdb.npz", None),)))
    with pytest.raises(DataError, match="no published SHA-256 is known for every imdb file"):
        download_dataset("imdb", tmp_path)


# ---------------------------------------------------------------------------------------------------
# The command line


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DLARENA_DATA": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "dlarena.cli", "data", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_cli_data_list(tmp_path: Path) -> None:
    write_ptb(tmp_path / "cache" / "ptb")
    result = run_cli(tmp_path, "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [cell.strip() for cell in lines[0].split("|")[1:-1]] == ["name", "title", "present", "where", "size",
                                                                    "source"]
    table = lines[:len(DATASETS) + 2]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in table[2:]}
    assert set(rows) == set(DATASETS)
    assert rows["ptb"][2] == "yes" and rows["ptb"][3] == str(tmp_path / "cache" / "ptb")
    assert rows["ptb"][5] == "raw.githubusercontent.com"
    assert rows["mnist"][2] == "no"
    # The cache folder on a line of its own, after the table (it was glued to the last row).
    assert lines[len(table):] == ["", f"cache folder: {tmp_path / 'cache'} (set $DLARENA_DATA to move it)"]


def test_cli_data_list_json(tmp_path: Path) -> None:
    write_ptb(tmp_path / "cache" / "ptb")
    result = run_cli(tmp_path, "list", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["cache_folder"] == str(tmp_path / "cache")
    entries = {entry["name"]: entry for entry in listing["data_sets"]}
    assert list(entries) == list(DATASETS)
    assert entries["ptb"] == {
        "name": "ptb", "title": DATASETS["ptb"].title, "present": True, "where": str(tmp_path / "cache" / "ptb"),
        "size_bytes": sum(len((tmp_path / "cache" / "ptb" / f.name).read_bytes()) for f in DATASETS["ptb"].files),
        "source": "raw.githubusercontent.com", "downloadable": True, "files_present": 3, "files_total": 3}
    assert entries["mnist"]["present"] is False and entries["mnist"]["where"] is None


def test_cli_data_import_of_a_bad_file_fails_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    write_mnist(tmp_path / "downloads")
    result = run_cli(tmp_path, "import", "mnist", str(tmp_path / "downloads"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("dlarena: error: ")
    assert ("train-images-idx3-ubyte.gz is not the published train-images-idx3-ubyte.gz: decompressed, it holds "
            "3936 bytes, shorter than the published 47040016") in result.stderr
    assert leftovers(tmp_path / "cache") == []
    result = run_cli(tmp_path, "import", "mnist", str(tmp_path / "downloads" / "train-images-idx3-ubyte.gz"))
    assert result.returncode == 2 and "give the folder that holds them" in result.stderr


def test_cli_data_download_unreachable(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "download", "ptb", "--mirror", f"http://127.0.0.1:{closed_port()}/")
    assert result.returncode == 2
    error = result.stderr.splitlines()[-1]
    assert error.startswith("dlarena: error: could not reach 127.0.0.1:")
    assert error.endswith("fetch ptb.train.txt elsewhere and run `dlarena data import ptb PATH`")
    assert leftovers(tmp_path / "cache") == []


def test_cli_data_download_from_a_mirror(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    source = write_ptb(tmp_path / "source")
    _small_ptb_catalogue(monkeypatch, source)
    for name in (ptb.TRAIN, ptb.VALID, ptb.TEST):
        server.files[f"/{name}"] = (source / name).read_bytes()
    monkeypatch.setenv("DLARENA_DATA", str(tmp_path / "cache"))
    assert cli.main(["data", "download", "ptb", "--mirror", f"{base_url(server)}/"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == (f"downloaded ptb into {tmp_path / 'cache' / 'ptb'}; "
                               "every file holds the published data (checksums verified)")
    assert "downloading ptb.train.txt from http://127.0.0.1" in out.err
    assert sorted(p.name for p in (tmp_path / "cache" / "ptb").iterdir()) == [ptb.TEST, ptb.TRAIN, ptb.VALID]
