"""How numbers look on screen. Every missing value (None) renders as "n/a", never as 0."""

from __future__ import annotations

NA = "n/a"


def num(v: float | int | None, digits: int = 0) -> str:
    if v is None:
        return NA
    if digits == 0:
        return f"{round(v):,}"
    return f"{v:,.{digits}f}"


def pct(v: float | None) -> str:
    return NA if v is None else f"{v:.0f}%"


def size(v: int | None) -> str:
    """Bytes in binary units, 3-4 significant characters: 812M, 1.4G, 12G."""
    if v is None:
        return NA
    x = float(v)
    for unit in ("B", "K", "M", "G", "T"):
        if x < 1024 or unit == "T":
            if unit == "B":
                return f"{int(x)}B"
            return f"{x:.1f}{unit}" if x < 10 else f"{x:.0f}{unit}"
        x /= 1024
    return NA  # pragma: no cover


def duration(s: float | None, seconds_after_a_minute: bool = True) -> str:
    """Compact elapsed time: 42s, 5m03s, 2h07m, 3d04h (5m without seconds_after_a_minute)."""
    if s is None:
        return NA
    s = max(0, int(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if seconds_after_a_minute else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def age(s: float | None) -> str:
    """How long something has been up: seconds only in its first minute (42s, 12m, 2h07m), so a 1 s
    refresh does not redraw every uptime cell every second."""
    return duration(s, seconds_after_a_minute=False)


def ms(v: float | None) -> str:
    if v is None:
        return NA
    return f"{v:.0f}ms" if v < 10_000 else f"{v / 1000:.1f}s"


def ratio(a: float | int | None, b: float | int | None) -> str:
    """"busy/total"; one "n/a" when neither side is known."""
    if a is None and b is None:
        return NA
    return f"{num(a)}/{num(b)}"
