"""Small helpers for the words of messages, so that every one of them reads right (`1 thread`, `2 threads`)."""

from __future__ import annotations

# Nouns whose plural adds "es": those that end in a hissing sound (`process`, `batch`). Not every
# "ch" hisses (`epoch` -> `epochs`), so only "tch" is taken for one.
_ES_ENDINGS = ("s", "x", "z", "sh", "tch")


def plural(noun: str) -> str:
    """The plural of a regular English noun: `thread` -> `threads`, `process` -> `processes`."""
    return f"{noun}es" if noun.endswith(_ES_ENDINGS) else f"{noun}s"


def counted(number: float, noun: str, plural_form: str | None = None) -> str:
    """``number`` and ``noun``, in the plural unless the number is exactly one: `1 process`, `3 processes`.

    A float is written as its integer when it is one (`13.0` epochs -> `13 epochs`) and otherwise as
    it comes (`2.5 epochs`): a count's fraction is real information, its `.0` is not.
    """
    text = f"{int(number)}" if float(number).is_integer() else f"{number:g}"
    return f"{text} {noun if number == 1 else (plural_form or plural(noun))}"
