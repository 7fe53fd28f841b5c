"""``--mapping FILE.toml``: rename fields and event types of in-house log formats.

The file is TOML, parsed into a frozen dataclass, never evaluated::

    [fields]            # canonical column = the column (JSON key) in your files
    event_id = "id"
    event_time = "ts"
    exposure_id = "impression_id"

    [event_types]       # value in your files = canonical event type
    like = "thumbs_up"
    dislike = "thumbs_down"

    [langfuse.scores]   # Langfuse score name = channel (vote, copy, regenerate, share)
    "user-feedback" = "vote"

Source column names end up as quoted SQL identifiers and JSON paths, so they are also checked
against a conservative pattern: a name such as ``x"; DROP TABLE`` is a ConfigError, not SQL.
Event-type and score names are data (bound through a lookup table), so any string is allowed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping as TypingMapping

from schemas.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from schemas.raw_event import EVENT_TYPES, KNOWN_COLUMNS

# Letters, digits, underscore, hyphen, dot and space; must start with a letter or underscore.
SOURCE_COLUMN_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-. ]{0,127}$")
SCORE_CHANNELS: tuple[str, ...] = ("vote", "copy", "regenerate", "share")
DEFAULT_SCORE_CHANNELS: dict[str, str] = {"user-feedback": "vote"}
_SECTIONS = {"fields", "event_types", "langfuse"}


def check_source_column(name: object, *, where: str) -> str:
    """Return ``name`` if it is a safe source column name, else raise ConfigError."""
    if not isinstance(name, str) or not SOURCE_COLUMN_PATTERN.fullmatch(name):
        raise ConfigError(
            f"source column name {name!r} is not allowed",
            where=where,
            fix="use 1-128 letters, digits, '_', '-', '.' or spaces, starting with a letter or '_'",
        )
    return name


@dataclass(frozen=True, kw_only=True)
class FieldMapping:
    """Renames applied by the canonical reader and the Langfuse adapter.

    Attributes
    ----------
    fields : canonical column -> source column (only the renamed ones).
    event_types : source event-type value -> canonical event type (added to the identity map).
    score_channels : Langfuse score name -> channel.
    path, sha256 : where the mapping came from (recorded in the manifest), None for the default.
    """

    fields: TypingMapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    event_types: TypingMapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    score_channels: TypingMapping[str, str] = field(default_factory=lambda: MappingProxyType(dict(DEFAULT_SCORE_CHANNELS)))
    path: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        where = self.path or "mapping"
        for canonical, source in self.fields.items():
            if canonical not in KNOWN_COLUMNS:
                raise ConfigError(
                    f"fields table: key {canonical!r} is not a canonical column",
                    where=where,
                    fix=f"use one of {', '.join(KNOWN_COLUMNS)}",
                )
            check_source_column(source, where=f"{where}, fields table, key {canonical}")
        for source_value, canonical in self.event_types.items():
            if canonical not in EVENT_TYPES:
                raise ConfigError(
                    f"event_types table: {source_value!r} maps to {canonical!r}, not a canonical event type",
                    where=where,
                    fix=f"use one of {', '.join(EVENT_TYPES)}",
                )
        for score, channel in self.score_channels.items():
            if channel not in SCORE_CHANNELS:
                raise ConfigError(
                    f"langfuse.scores table: {score!r} maps to {channel!r}, not a channel",
                    where=where,
                    fix=f"use one of {', '.join(SCORE_CHANNELS)}",
                )

    def column(self, canonical: str) -> str:
        """The source column holding ``canonical``."""
        return self.fields.get(canonical, canonical)

    def event_type_rows(self) -> list[tuple[str, str]]:
        """(source value, canonical type) rows: the identity for every canonical type, then renames."""
        table = {name: name for name in EVENT_TYPES}
        table.update(self.event_types)
        return sorted(table.items())

    def to_manifest(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "fields": dict(self.fields),
            "event_types": dict(self.event_types),
            "score_channels": dict(self.score_channels),
        }


def load_mapping(path: str | Path | None) -> FieldMapping:
    """Parse a mapping TOML file (None: the default, no renames).

    Raises
    ------
    InputFileError : the file is missing or is not TOML.
    ConfigError : an unknown section or key, or an unsafe source column name.
    """
    from schemas.errors import InputFileError

    if path is None:
        return FieldMapping()
    path = Path(path)
    try:
        raw = path.read_bytes()
        doc = tomllib.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise InputFileError(f"cannot read mapping file ({exc.strerror})", where=str(path), fix="pass an existing TOML file") from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputFileError(f"mapping file is not valid TOML: {exc}", where=str(path), fix="fix the TOML syntax") from exc
    unknown = set(doc) - _SECTIONS
    if unknown:
        raise ConfigError(
            f"unknown mapping section(s) {sorted(unknown)}",
            where=str(path),
            fix=f"use only {sorted(_SECTIONS)}",
        )
    sections = {}
    for name in ("fields", "event_types"):
        table = doc.get(name, {})
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise ConfigError(f"the {name} table must map names to strings", where=str(path))
        sections[name] = table
    langfuse = doc.get("langfuse", {})
    scores = langfuse.get("scores", DEFAULT_SCORE_CHANNELS) if isinstance(langfuse, dict) else None
    if not isinstance(scores, dict) or set(langfuse) - {"scores"} or not all(isinstance(v, str) for v in scores.values()):
        raise ConfigError("the langfuse table must only hold a langfuse.scores table of name = channel", where=str(path))
    return FieldMapping(
        fields=MappingProxyType(dict(sections["fields"])),
        event_types=MappingProxyType(dict(sections["event_types"])),
        score_channels=MappingProxyType(dict(scores)),
        path=str(path),
        sha256=hashlib.sha256(raw).hexdigest(),
    )
