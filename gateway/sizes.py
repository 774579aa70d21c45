"""Sizes of files, as a person writes and reads them: ``500M``, ``1.2 GB``."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: str) -> int:
    """Bytes of ``500M`` / ``2G`` / ``1.5GB`` / ``4096`` (binary units: 1K = 1024)."""
    found = _SIZE.match(value)
    if not found:
        raise ValueError(f"{value!r} is not a size: write e.g. 500M, 2G or 1.5G")
    return int(float(found.group(1)) * _UNITS[found.group(2).lower()])


def format_size(count: int) -> str:
    """``1.2 GB``, ``340 kB``, ``12 B`` (binary units, as ``parse_size`` reads them)."""
    value = float(count)
    unit = "B"
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            break
        value /= 1024
    if unit == "B":
        return f"{count} B"
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
