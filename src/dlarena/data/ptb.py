"""Penn Treebank words as Mikolov preprocessed them (ptb.train.txt, ptb.valid.txt, ptb.test.txt).

The files are those of Zaremba's LSTM repository and TensorFlow's PTB tutorial: one sentence a line,
words separated by spaces, rare words already replaced by ``<unk>``, 10,000 distinct words in all.
Reading follows TensorFlow's ``reader.py``: an ``<eos>`` after every line, the vocabulary from the
training file ordered by (-count, word), word ids by position in that order. The id stream is then cut
into non-overlapping sequences of ``steps`` tokens, each with the next token as its label.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from dlarena.data.dataset import DataError, Dataset, Split

TRAIN, VALID, TEST = "ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"
EOS = "<eos>"  # TensorFlow reader.py's end-of-sentence word
UNK = "<unk>"  # Mikolov's replacement for rare words, already in the files
VOCAB = 10000  # TensorFlow ptb_word_lm.py configs' vocab_size; also DLBench's LSTM-32/64 (reference 1.4)
STEPS = 20  # TensorFlow ptb_word_lm.py SmallConfig.num_steps


def read_words(path: Path) -> list[str]:
    """The words of a PTB file, ``<eos>`` after each line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    words = []
    for line in text.splitlines():
        words.extend(line.split())
        words.append(EOS)
    if not words:
        raise DataError(f"{path} is empty")
    return words


def build_vocabulary(words: list[str]) -> dict[str, int]:
    """Word -> id, ordered by (-count, word) as TensorFlow's reader.py _build_vocab does."""
    counts = collections.Counter(words)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {word: index for index, (word, _) in enumerate(ordered)}


def word_ids(words: list[str], vocabulary: dict[str, int], vocab: int, path: Path) -> np.ndarray:
    """Ids of ``words``; ids >= ``vocab`` and words the training file lacks become the id of <unk>."""
    unk = vocabulary.get(UNK)
    if unk is not None and unk >= vocab:
        raise DataError(f"a vocabulary of {vocab} words leaves out {UNK} (id {unk}), which rarer words map to")
    ids = np.fromiter((vocabulary.get(word, -1) for word in words), dtype=np.int64, count=len(words))
    outside = (ids < 0) | (ids >= vocab)
    if outside.any():
        if unk is None:
            first = words[int(np.flatnonzero(outside)[0])]
            raise DataError(f"{path} holds {first!r}, outside the {vocab}-word vocabulary, and the training "
                            f"file has no {UNK} to map it to")
        ids[outside] = unk
    return ids


def sequences(ids: np.ndarray, steps: int, path: Path) -> Split:
    """Non-overlapping windows of ``steps`` ids (N, steps), labelled with the ids one step later."""
    count = (len(ids) - 1) // steps
    if count < 1:
        raise DataError(f"{path} holds {len(ids)} tokens, too few for one sequence of {steps} steps and its labels")
    inputs = ids[: count * steps].reshape(count, steps)
    labels = ids[1 : count * steps + 1].reshape(count, steps)
    return Split(inputs, labels)


def read_ptb(folder: Path, vocab: int = VOCAB, steps: int = STEPS) -> Dataset:
    """Train sequences from ptb.train.txt and test sequences from ptb.test.txt; classes = the vocabulary size."""
    if vocab < 1 or steps < 1:
        raise DataError(f"the vocabulary and the number of steps must be positive, not {vocab} and {steps}")
    train_words = read_words(folder / TRAIN)
    vocabulary = build_vocabulary(train_words)
    size = min(vocab, len(vocabulary))
    train = sequences(word_ids(train_words, vocabulary, size, folder / TRAIN), steps, folder / TRAIN)
    test_words = read_words(folder / TEST)
    test = sequences(word_ids(test_words, vocabulary, size, folder / TEST), steps, folder / TEST)
    return Dataset("ptb", train, test, size)
