"""Sizes given on the command line (``--memory-limit 2GB``), read as bytes."""

from __future__ import annotations

import re

from schemas.errors import ConfigError

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(K|M|G|T)i?B\s*", re.IGNORECASE)
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(text: str, *, where: str = "--memory-limit") -> int:
    """Bytes of a size such as ``4GB``, ``512MB`` or ``1.5GiB`` (binary units, like DuckDB's)."""
    match = _SIZE.fullmatch(str(text))
    if not match:
        raise ConfigError(f"memory limit {text!r} is not a size", where=where, fix="use e.g. --memory-limit 4GB or 512MB")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])
