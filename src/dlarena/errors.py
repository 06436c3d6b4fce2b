"""Errors that reach a user as one sentence (never a traceback), and the "did you mean" of a mistyped name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# How alike a mistyped name and a valid one must be (difflib's ratio: twice the matched characters
# over both lengths) to be suggested. 0.6 is difflib's own default; it takes `pytorch` to `torch`
# (0.83) and leaves `tf` alone (0.33 against `tensorflow`).
SUGGESTION_CUTOFF = 0.6
# A suggestion is one or a few names to try, not a second list of the valid ones.
MAX_SUGGESTIONS = 3
# A typed name this short inside a valid one is a coincidence more often than a hint (`cnn`, `a`).
MIN_CONTAINED_LENGTH = 4
# Characters people write between the parts of a name in more ways than one: `cifar-10`, `cifar_10`.
_SEPARATORS = str.maketrans("", "", "-_ .")


class DlarenaError(Exception):
    """A problem the user can fix; the command line prints it as one sentence and exits with 2."""

    exit_code = 2


def _folded(name: str) -> str:
    return name.casefold().translate(_SEPARATORS)


def suggestions(name: str, choices: Iterable[str]) -> list[str]:
    """The valid names the user probably meant by ``name``, best first; empty when nothing is close.

    The same name but for case and separators wins alone (`Torch`, `CIFAR_10`); otherwise valid names
    that contain the typed one or are contained in it (`keras` in `keras-jax`, `torch` in `pytorch`,
    `cifar10` in `cifar10-cnn`), else the closest by difflib.
    """
    valid = list(dict.fromkeys(choices))
    typed = _folded(name)
    by_fold = {_folded(choice): choice for choice in valid}
    if typed in by_fold:
        return [by_fold[typed]] if by_fold[typed] != name else []
    contained = [
        choice for folded, choice in by_fold.items()
        if (len(typed) >= MIN_CONTAINED_LENGTH and typed in folded)
        or (len(folded) >= MIN_CONTAINED_LENGTH and folded in typed)
    ]
    if contained:  # the closest first: `alexnet-smal` is `alexnet-small` before it is `alexnet`
        contained.sort(key=lambda choice: -difflib.SequenceMatcher(None, typed, _folded(choice)).ratio())
        return contained[:MAX_SUGGESTIONS]
    close = difflib.get_close_matches(typed, list(by_fold), n=MAX_SUGGESTIONS, cutoff=SUGGESTION_CUTOFF)
    return [by_fold[folded] for folded in close]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """` (did you mean 'torch'?)` to put after a name that is not among ``choices``; empty when none is close."""
    quoted = [repr(choice) for choice in suggestions(name, choices)]
    if not quoted:
        return ""
    return f" (did you mean {quoted[0] if len(quoted) == 1 else ', '.join(quoted[:-1]) + ' or ' + quoted[-1]}?)"


def unknown(kind: str, name: str, choices: Iterable[str]) -> str:
    """The one sentence for a name that does not exist: what it is, the likely intended one, every valid one."""
    valid = sorted(set(choices))
    return f"unknown {kind} {name!r}{did_you_mean(name, valid)}; valid {kind}s: {', '.join(valid)}"


class UnknownNameError(DlarenaError):
    """A framework, workload, suite, scenario or data set name that does not exist."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        self.suggestions = suggestions(name, self.valid)
        super().__init__(unknown(kind, name, self.valid))
