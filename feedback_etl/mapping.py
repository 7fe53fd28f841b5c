"""``--mapping FILE.toml``: rename fields and event types of in-house log formats.

The file is TOML, parsed into a frozen dataclass, never evaluated::

    [fields]            # canonical column = the column (JSON key) in your files
    event_id = "id"
    user_id = "extra.metadata.user_id"   # a dotted path into nested objects
    event_time = "ts"
    exposure_id = "impression_id"

    [event_types]       # value in your files = canonical event type
    like = "thumbs_up"
    dislike = "thumbs_down"

    [langfuse.scores]   # Langfuse score name = channel (vote, copy, regenerate, share)
    "user-feedback" = "vote"
    [langfuse.categories]   # text / CATEGORICAL value of a vote = up | down
    "helpful" = "up"
    [langfuse]
    organic_sources = ["API"]          # score sources that are organic user feedback
    audit_sources = ["ANNOTATION"]     # score sources whose votes are gold labels (--audit-out)

    [langsmith.feedback]    # LangSmith feedback key = channel
    user_score = "vote"
    [langsmith]
    audit_keys = ["expert_label"]      # feedback keys whose score is a gold label

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
from schemas.event_columns import EVENT_TYPES, KNOWN_COLUMNS

# Letters, digits, underscore, hyphen, dot and space; must start with a letter or underscore.
SOURCE_COLUMN_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-. ]{0,127}$")
SCORE_CHANNELS: tuple[str, ...] = ("vote", "copy", "regenerate", "share")
DEFAULT_SCORE_CHANNELS: dict[str, str] = {"user-feedback": "vote"}
# LangSmith feedback keys that are votes by default (the key LangChain's chat examples log thumbs under).
DEFAULT_FEEDBACK_CHANNELS: dict[str, str] = {"user_score": "vote"}
POLARITIES: tuple[str, ...] = ("up", "down")
# Text values of a vote read as up / down (lower-cased) unless a categories table says otherwise.
DEFAULT_CATEGORIES: dict[str, str] = {
    **dict.fromkeys(("true", "up", "thumbs_up", "positive", "good", "1"), "up"),
    **dict.fromkeys(("false", "down", "thumbs_down", "negative", "bad", "0"), "down"),
}
# Langfuse score sources (ScoreSource: API, ANNOTATION, EVAL): which are organic user feedback and
# which are careful human ratings, i.e. gold labels for the noise-rate audit.
LANGFUSE_SOURCES: tuple[str, ...] = ("API", "ANNOTATION", "EVAL")
DEFAULT_ORGANIC_SOURCES: tuple[str, ...] = ("API",)
DEFAULT_AUDIT_SOURCES: tuple[str, ...] = ("ANNOTATION",)
_SECTIONS = {"fields", "event_types", "langfuse", "langsmith", "openai", "features"}
# Types of a custom context column declared in a [features] table (issue 17, docs/features.md).
FEATURE_TYPES: tuple[str, ...] = ("categorical", "numeric", "boolean")
FEATURE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# The WH/events column holding the custom features' raw values (feedback_etl.features).
CONTEXT_COLUMN = "context"


def check_source_column(name: object, *, where: str) -> str:
    """Return ``name`` if it is a safe source column name, else raise ConfigError.

    A dotted name (``extra.metadata.user_id``) is a path into nested objects (issue 18); each of
    its segments must itself be a safe name, so ``a..b`` or a trailing dot is refused too.
    """
    if not isinstance(name, str) or not SOURCE_COLUMN_PATTERN.fullmatch(name) or not all(
        SOURCE_COLUMN_PATTERN.fullmatch(part) for part in name.split(".")
    ):
        raise ConfigError(
            f"source column name {name!r} is not allowed",
            where=where,
            fix="use 1-128 letters, digits, '_', '-', '.' or spaces, starting with a letter or '_' "
            "(a dot separates the keys of a path into nested objects: extra.metadata.user_id)",
        )
    return name


def path_segments(name: str) -> tuple[str, ...]:
    """The keys of a checked source column name: ``"extra.metadata.user_id"`` -> three keys."""
    return tuple(name.split("."))


def json_path(name: str) -> str:
    """A checked source column name as a JSON path with every key quoted: ``$."extra"."user_id"``."""
    return "$" + "".join(f'."{part}"' for part in path_segments(name))


@dataclass(frozen=True, kw_only=True)
class FieldMapping:
    """Renames applied by the canonical reader and the Langfuse adapter.

    Attributes
    ----------
    fields : canonical column -> source column (only the renamed ones).
    event_types : source event-type value -> canonical event type (added to the identity map).
    score_channels : Langfuse score name -> channel.
    feedback_channels : LangSmith feedback key -> channel.
    categories : source (langfuse, langsmith, openai) -> lower-cased text value of a vote -> up | down
        (on top of :data:`DEFAULT_CATEGORIES`).
    organic_sources, audit_sources : Langfuse score sources counted as organic feedback / as gold labels.
    audit_keys : LangSmith feedback keys whose score is a gold label (1 = good answer).
    path, sha256 : where the mapping came from (recorded in the manifest), None for the default.
    """

    fields: TypingMapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    event_types: TypingMapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    score_channels: TypingMapping[str, str] = field(default_factory=lambda: MappingProxyType(dict(DEFAULT_SCORE_CHANNELS)))
    feedback_channels: TypingMapping[str, str] = field(default_factory=lambda: MappingProxyType(dict(DEFAULT_FEEDBACK_CHANNELS)))
    categories: TypingMapping[str, TypingMapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    organic_sources: tuple[str, ...] = DEFAULT_ORGANIC_SOURCES
    audit_sources: tuple[str, ...] = DEFAULT_AUDIT_SOURCES
    audit_keys: tuple[str, ...] = ()
    # Custom context columns (issue 17): feature name -> (type, source column or dotted path).
    features: TypingMapping[str, tuple[str, str]] = field(default_factory=lambda: MappingProxyType({}))
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
        for table, channels in (("langfuse.scores", self.score_channels), ("langsmith.feedback", self.feedback_channels)):
            for score, channel in channels.items():
                if channel not in SCORE_CHANNELS:
                    raise ConfigError(
                        f"{table} table: {score!r} maps to {channel!r}, not a channel",
                        where=where,
                        fix=f"use one of {', '.join(SCORE_CHANNELS)}",
                    )
        for source, values in self.categories.items():
            for value, polarity in values.items():
                if polarity not in POLARITIES:
                    raise ConfigError(
                        f"{source}.categories table: {value!r} maps to {polarity!r}",
                        where=where,
                        fix="map each value to up or down",
                    )
        for name, sources in (("organic_sources", self.organic_sources), ("audit_sources", self.audit_sources)):
            unknown = [s for s in sources if s not in LANGFUSE_SOURCES]
            if unknown:
                raise ConfigError(
                    f"langfuse.{name}: {unknown} are not Langfuse score sources",
                    where=where,
                    fix=f"use {', '.join(LANGFUSE_SOURCES)}",
                )
        if set(self.organic_sources) & set(self.audit_sources):
            raise ConfigError(
                "langfuse: a score source cannot be both organic feedback and a gold label",
                where=where,
                fix="list each source in organic_sources or audit_sources, not both",
            )

    def category_rows(self, source: str) -> list[tuple[str, str]]:
        """(lower-cased text value, up | down) rows of ``source``: the defaults, then the mapping's."""
        table = dict(DEFAULT_CATEGORIES)
        table.update({k.lower(): v for k, v in self.categories.get(source, {}).items()})
        return sorted(table.items())

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
            "feedback_channels": dict(self.feedback_channels),
            "categories": {k: dict(v) for k, v in self.categories.items()},
            "organic_sources": list(self.organic_sources),
            "audit_sources": list(self.audit_sources),
            "audit_keys": list(self.audit_keys),
            "features": {name: {"type": kind, "source": source} for name, (kind, source) in self.features.items()},
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
    except RecursionError as exc:  # tomllib recurses once per nested array or inline table
        raise InputFileError(
            "mapping file nests arrays or inline tables too deeply to parse",
            where=str(path),
            fix="a mapping holds flat tables of strings: [fields], [event_types], [langfuse.scores]",
        ) from exc
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
    langfuse = _source_table(doc, "langfuse", {"scores": dict, "categories": dict, "organic_sources": list, "audit_sources": list}, path)
    langsmith = _source_table(doc, "langsmith", {"feedback": dict, "categories": dict, "audit_keys": list}, path)
    openai = _source_table(doc, "openai", {"categories": dict}, path)
    categories = {
        source: MappingProxyType(dict(table["categories"]))
        for source, table in (("langfuse", langfuse), ("langsmith", langsmith), ("openai", openai))
        if "categories" in table
    }
    return FieldMapping(
        fields=MappingProxyType(dict(sections["fields"])),
        event_types=MappingProxyType(dict(sections["event_types"])),
        score_channels=MappingProxyType(dict(langfuse.get("scores", DEFAULT_SCORE_CHANNELS))),
        feedback_channels=MappingProxyType(dict(langsmith.get("feedback", DEFAULT_FEEDBACK_CHANNELS))),
        categories=MappingProxyType(categories),
        organic_sources=tuple(s.upper() for s in langfuse.get("organic_sources", DEFAULT_ORGANIC_SOURCES)),
        audit_sources=tuple(s.upper() for s in langfuse.get("audit_sources", DEFAULT_AUDIT_SOURCES)),
        audit_keys=tuple(langsmith.get("audit_keys", ())),
        features=MappingProxyType(_features_table(doc.get("features", {}), path)),
        path=str(path),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _source_table(doc: dict, name: str, keys: dict[str, type], path: Path) -> dict:
    """A source's table of the mapping file: only ``keys``, each a table or list of strings."""
    table = doc.get(name, {})
    shape = ", ".join(f"{name}.{k} ({'table of name = string' if t is dict else 'list of strings'})" for k, t in keys.items())
    ok = isinstance(table, dict) and not set(table) - set(keys)
    for key, kind in keys.items():
        value = table.get(key, kind()) if ok else None
        values = value.values() if isinstance(value, dict) else value
        ok = ok and isinstance(value, kind) and all(isinstance(v, str) for v in values)
    if not ok:
        raise ConfigError(f"the {name} table may only hold {shape}", where=str(path), fix="see docs/sources.md for the mapping file")
    return table


def _features_table(table: object, path: Path) -> dict[str, tuple[str, str]]:
    """The ``[features]`` table: ``name = "categorical"`` or ``name = {type = "numeric", source = "a.b"}``.

    Names and types are checked in :func:`feedback_etl.features.check_feature_name`; here only the shape.
    """
    where = f"{path}, features table"
    if not isinstance(table, dict):
        raise ConfigError("the features table must map column names to a type", where=str(path), fix="see docs/features.md")
    features: dict[str, tuple[str, str]] = {}
    for name, value in table.items():
        check_feature_name(name, where=where)
        if isinstance(value, dict) and not set(value) - {"type", "source"} and "type" in value:
            kind, source = value["type"], value.get("source", name)
        elif isinstance(value, str):
            kind, source = value, name
        else:
            raise ConfigError(
                f"features table: {name!r} must be a type or {{type = ..., source = ...}}",
                where=where,
                fix=f'write {name} = "categorical" (or numeric, boolean), or {name} = {{type = "numeric", source = "meta.{name}"}}',
            )
        if kind not in FEATURE_TYPES:
            raise ConfigError(
                f"features table: column {name!r} has type {kind!r}",
                where=where,
                fix=f"declare it {' | '.join(FEATURE_TYPES)}",
            )
        features[name] = (kind, check_source_column(source, where=f"{where}, column {name}"))
    return features


def contract_columns() -> list[str]:
    """The feedback table's contract columns (``schemas.feedback.FeedbackTable``), in order."""
    from schemas.feedback import FeedbackTable

    return list(FeedbackTable.to_schema().columns)


def check_feature_name(name: object, *, where: str) -> str:
    """``name`` if it can be a feedback-table column (an identifier, not a contract column)."""
    if not isinstance(name, str) or not FEATURE_NAME.fullmatch(name):
        raise ConfigError(
            f"feature name {name!r} is not allowed",
            where=where,
            fix="name a feature with 1-64 letters, digits or '_', starting with a letter or '_' "
            "(give the raw column as source = \"...\" when it is spelled otherwise)",
        )
    if name in contract_columns() or name == CONTEXT_COLUMN:
        raise ConfigError(
            f"feature name {name!r} is a column of the feedback table already",
            where=where,
            fix="canonical columns are used as features anyway; rename the custom one (and give source = ...)",
        )
    return name
