"""Plain text for `tidemark inspect`: durations, token counts, times, first lines.

Event values are read leniently (a damaged or hand-edited record shows as 0 or "?").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["first_line", "ms", "num", "offset", "tokens", "when", "whole"]


def num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def whole(value: Any) -> int:
    return int(num(value))


def ms(value: Any) -> str:
    """A duration given in milliseconds, in the unit that reads best."""
    millis = num(value)
    if millis < 10:
        return f"{millis:.1f} ms"
    if millis < 1000:
        return f"{millis:.0f} ms"
    if millis < 60_000:
        return f"{millis / 1000:.2f} s"
    minutes, seconds = divmod(millis / 1000, 60)
    return f"{minutes:.0f} min {seconds:02.0f} s"


def tokens(value: Any) -> str:
    return f"{whole(value):,}"


def when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def offset(start: datetime | None, value: Any) -> str:
    """The time `value` (an ISO timestamp) as +[h:]mm:ss.sss after `start`."""
    now = when(value)
    if start is None or now is None:
        return "?"
    seconds = (now - start).total_seconds()
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"+{hours:.0f}:{minutes:02.0f}:{secs:06.3f}"
    return f"+{minutes:02.0f}:{secs:06.3f}"


def first_line(text: Any, width: int = 60) -> str:
    line = str(text or "").strip().splitlines()[0] if str(text or "").strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"
