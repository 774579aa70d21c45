"""Durations as people write them in the config file: ``30s``, ``5m``, ``2h``, ``1h30m``."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")


def parse_duration(text: str) -> float:
    """Seconds in ``text``; ``ValueError`` with the accepted forms if it is not a duration."""
    compact = text.strip().replace(" ", "")
    if not _WHOLE.match(compact):
        raise ValueError(f"{text!r} is not a duration: write e.g. 500ms, 30s, 5m, 2h or 1h30m")
    return sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(compact))


def format_duration(seconds: float) -> str:
    """A short human form: ``45s``, ``3m20s``, ``2h13m``, ``4d2h``."""
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"
