"""How numbers are written for people."""

from __future__ import annotations


def format_seconds(seconds: float) -> str:
    """A step time with three significant digits in a readable unit (whole seconds from 1000 s on)."""
    seconds = float(f"{seconds:.3g}")  # rounded first: 0.9999 ms is `1 ms`, not `1e+03 us`
    if seconds >= 1000.0:
        return f"{seconds:.0f} s"
    if seconds >= 1.0:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


def format_optional_seconds(seconds: float | None) -> str:
    """``format_seconds``, or nothing where a cell has no such figure."""
    return "" if seconds is None else format_seconds(seconds)


def format_count(value: float) -> str:
    """A rate or a count with three significant digits, grouped by thousands: `10,100`, `987`, `4.56`."""
    rounded = float(f"{value:.3g}")
    return f"{rounded:,.0f}" if abs(rounded) >= 100 else f"{rounded:.3g}"


def format_duration(seconds: float) -> str:
    """A wall-clock span such as 4 s, 2 min 05 s or 1 h 03 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"
