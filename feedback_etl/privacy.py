"""Privacy controls applied to staged events before anything reaches the warehouse (issue 9).

* Pseudonymisation: ``user_id`` and ``session_id`` become HMAC-SHA256(key, id), hex. The key is
  read from an environment variable named by the user, never from the command line or a file in
  the warehouse, and is never written anywhere. The same key maps the same id to the same
  pseudonym, so joins, splits and history features keep working across ingest runs.
* Text retention: ``keep`` the texts, ``hash`` them (keyed when a key is given, so short prompts
  cannot be recovered by hashing guesses; equal texts still hash equal, so dedup and joins work) or
  ``drop`` them (null).
* Redaction: a best-effort regex scrubber for e-mail addresses, phone numbers, card-like numbers
  (Luhn-checked) and access tokens. It is not a guarantee: names, addresses and free-form secrets
  pass through. Counts of what was redacted go to the ingest manifest.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemas.errors import ConfigError

if TYPE_CHECKING:
    import polars as pl

# polars is imported by the functions that rewrite values: `causalrm ingest` without privacy
# options never needs it (issue 19: start-up).

TEXT_MODES: tuple[str, ...] = ("keep", "hash", "drop")
TEXT_COLUMNS: tuple[str, ...] = ("prompt_text", "response_text")
ID_COLUMNS: tuple[str, ...] = ("user_id", "session_id")
MIN_KEY_BYTES = 16

# Ordered: tokens before phones (a token can contain digit runs), cards before phones.
REDACTION_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "access_token": (
        r"(?:sk-[A-Za-z0-9_-]{16,}|ghp_[A-Za-z0-9]{20,}|xox[abpr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}"
        r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}|(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,}=*)"
    ),
    "card_number": r"\b(?:\d[ -]?){12,18}\d\b",
    # Not part of a longer digit run (a card-like number that failed Luhn is not a phone).
    "phone": (
        r"(?<!\d)(?<!\d[ .-])(?:\+\d{1,3}[ .-]?(?:\(?\d{1,4}\)?[ .-]?){1,3}\d{3,4}"
        r"|(?:\(\d{2,4}\)[ .-]?)?\d{3,4}[ .-]\d{3,4}(?:[ .-]\d{2,4})?)(?![ .-]?\d)"
    ),
}


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """How ingest treats personal data. ``key`` is the secret itself, read from the environment."""

    key: bytes | None = None
    key_env: str | None = None
    text: str = "keep"
    redact: bool = False

    def __post_init__(self) -> None:
        if self.text not in TEXT_MODES:
            raise ConfigError(f"unknown text mode {self.text!r}", where="--text", fix=f"use one of {', '.join(TEXT_MODES)}")
        if self.key is not None and len(self.key) < MIN_KEY_BYTES:
            raise ConfigError(
                f"pseudonymisation key in ${self.key_env} is shorter than {MIN_KEY_BYTES} bytes",
                where=f"environment variable {self.key_env}",
                fix="use a long random secret, e.g. `export VAR=$(openssl rand -hex 32)`",
            )

    @classmethod
    def from_env(cls, key_env: str | None, *, text: str = "keep", redact: bool = False) -> "PrivacyConfig":
        """Build the config, reading the key from ``$key_env`` (never from argv or a file)."""
        if key_env is None:
            return cls(text=text, redact=redact)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_env):
            raise ConfigError(f"{key_env!r} is not an environment variable name", where="--pseudonymize-key-env", fix="pass the NAME of the variable, not the secret")
        value = os.environ.get(key_env)
        if not value:
            raise ConfigError(f"environment variable {key_env} is unset or empty", where="--pseudonymize-key-env", fix=f"export {key_env}=<secret> before ingesting")
        return cls(key=value.encode("utf-8"), key_env=key_env, text=text, redact=redact)

    @property
    def pseudonymized(self) -> bool:
        return self.key is not None

    def describe(self) -> dict:
        """What the manifest records: that pseudonymisation was applied, never the key."""
        return {
            "pseudonymized": self.pseudonymized,
            "pseudonym": "hmac-sha256" if self.pseudonymized else None,
            "key_env": self.key_env,
            "text": self.text,
            "redact": self.redact,
        }


def _hmac_hex(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def _map_unique(column: pl.Series, fn) -> pl.Series:
    """Apply ``fn`` once per distinct non-null value (ids and texts repeat a lot)."""
    import polars as pl

    uniques = column.drop_nulls().unique()
    mapping = dict(zip(uniques.to_list(), (fn(v) for v in uniques.to_list())))
    return column.replace_strict(mapping, default=None, return_dtype=pl.Utf8)


def pseudonymize(frame: pl.DataFrame, key: bytes, columns: tuple[str, ...] = ID_COLUMNS) -> pl.DataFrame:
    """Replace each id column present by HMAC-SHA256(key, id) as 64 hex characters."""
    import polars as pl

    return frame.with_columns(
        [_map_unique(frame[c].cast(pl.Utf8), lambda v: _hmac_hex(key, v)).alias(c) for c in columns if c in frame.columns]
    )


def apply_text_mode(frame: pl.DataFrame, mode: str, key: bytes | None = None, columns: tuple[str, ...] = TEXT_COLUMNS) -> pl.DataFrame:
    """keep / hash (``sha256:`` + hex, keyed HMAC when a key is given) / drop (null) the text columns."""
    import polars as pl

    present = [c for c in columns if c in frame.columns]
    if mode == "keep" or not present:
        return frame
    if mode == "drop":
        return frame.with_columns([pl.lit(None, dtype=pl.Utf8).alias(c) for c in present])
    if mode == "hash":
        return frame.with_columns([_map_unique(frame[c], text_digest_fn(key)).alias(c) for c in present])
    raise ConfigError(f"unknown text mode {mode!r}", where="--text", fix=f"use one of {', '.join(TEXT_MODES)}")


def text_digest_fn(key: bytes | None):
    """The ``--text hash`` digest: ``hmac-sha256:<hex>`` when keyed, else ``sha256:<hex>``."""
    if key is None:
        return lambda v: "sha256:" + hashlib.sha256(v.encode("utf-8")).hexdigest()
    return lambda v: "hmac-sha256:" + _hmac_hex(key, v)


def _luhn_ok(candidate: str) -> bool:
    digits = [int(ch) for ch in candidate if ch.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return 13 <= len(digits) <= 19 and total % 10 == 0


def redact_text(text: str, counts: dict[str, int]) -> str:
    """Scrub one string, adding what was replaced to ``counts`` (by kind)."""
    for kind, pattern in REDACTION_PATTERNS.items():
        def replace(match: re.Match, kind: str = kind) -> str:
            if kind == "card_number" and not _luhn_ok(match.group(0)):
                return match.group(0)
            counts[kind] = counts.get(kind, 0) + 1
            return f"[{kind.upper()}]"

        text = re.sub(pattern, replace, text)
    return text


# Cheap superset of the patterns above, valid both in Rust regex syntax (polars; no look-around
# there) and in Python's re (the ingest hook): text without any of these cannot hold a match.
_PREFILTER = r"@|sk-|ghp_|xox[abpr]-|AKIA|eyJ|(?i:bearer)|\d{3}"


def redact(frame: pl.DataFrame, columns: tuple[str, ...] = TEXT_COLUMNS) -> tuple[pl.DataFrame, dict[str, int]]:
    """Redact the text columns; returns the new frame and counts by kind (summed over columns).

    A vectorised regex pre-filter picks the rows that may hold something, so clean rows cost one
    regex scan in Rust, not a Python call.
    """
    import polars as pl

    counts: dict[str, int] = {kind: 0 for kind in REDACTION_PATTERNS}
    updates = []
    for column in columns:
        if column not in frame.columns:
            continue
        values = frame[column]
        suspect = values.str.contains(_PREFILTER).fill_null(False)
        if not suspect.any():
            continue
        texts = values.to_list()
        for i in suspect.arg_true().to_list():
            texts[i] = redact_text(texts[i], counts)
        updates.append(pl.Series(column, texts, dtype=pl.Utf8))
    return (frame.with_columns(updates) if updates else frame), counts


def apply_privacy(frame: pl.DataFrame, cfg: PrivacyConfig) -> tuple[pl.DataFrame, dict]:
    """Redact (before hashing, so counts are meaningful), then text mode, then pseudonymise ids.

    Returns the frame and the manifest entry (``cfg.describe()`` plus redaction counts).
    """
    record = cfg.describe()
    if cfg.redact:
        frame, record["redacted"] = redact(frame)
    frame = apply_text_mode(frame, cfg.text, cfg.key)
    if cfg.key is not None:
        frame = pseudonymize(frame, cfg.key)
    return frame, record


def _rewrite_column(conn, column: str, fn, *, weight_counts: bool = False) -> dict[str, int] | None:
    """Replace each distinct value v of typed_events.column by fn(v) (None keeps it unchanged).

    fn sees each distinct value once; with ``weight_counts`` it also receives the value's row count
    and the returned counts are per row.
    """
    distinct = conn.sql(
        f'SELECT "{column}" AS v, COUNT(*) AS n FROM "typed_events" WHERE "{column}" IS NOT NULL GROUP BY 1'
    ).pl()
    if distinct.is_empty():
        return None
    old, new, counts = [], [], {}
    for value, n in zip(distinct["v"].to_list(), distinct["n"].to_list()):
        local: dict[str, int] = {}
        replaced = fn(value, local)
        if replaced is not None and replaced != value:
            old.append(value)
            new.append(replaced)
        for kind, k in local.items():
            counts[kind] = counts.get(kind, 0) + k * (n if weight_counts else 1)
    if old:
        import polars as pl

        mapping = pl.DataFrame({"old": old, "new": new}, schema={"old": pl.Utf8, "new": pl.Utf8})
        conn.register("privacy_mapping", mapping)
        conn.execute(
            f'UPDATE "typed_events" SET "{column}" = m."new" FROM "privacy_mapping" AS m WHERE "typed_events"."{column}" = m."old"'
        )
        conn.unregister("privacy_mapping")
    return counts


def ingest_hook(cfg: PrivacyConfig, *, capture_texts: str | None = None):
    """The ingest pipeline's ``typed_hook``: rewrites the DuckDB temp table ``typed_events`` in
    place before anything is written (see ``feedback_etl.ingest``).

    Order: redact texts (when asked and kept), hash or drop texts, pseudonymise ids, then withhold
    the raw payload of rejected rows (it would carry the raw ids and texts): a reject keeps its
    source file, row number, reason and a keyed digest of the payload, so the row can be found in
    the user's own copy of the input. Returns the manifest record (never the key).
    """

    def hook(conn) -> dict:
        record = cfg.describe()
        if cfg.redact:
            redacted: dict[str, int] = {kind: 0 for kind in REDACTION_PATTERNS}
            prefilter = re.compile(_PREFILTER)
            for column in TEXT_COLUMNS:
                counts = _rewrite_column(
                    conn, column, lambda v, c: redact_text(v, c) if prefilter.search(v) else None, weight_counts=True
                ) or {}
                for kind, k in counts.items():
                    redacted[kind] += k
            record["redacted"] = redacted
        if capture_texts is not None:
            # Texts (redacted when asked) of accepted impressions, kept outside the warehouse only until `embed` has run
            # (ingest-time embedding: vectors are kept, raw text need not be).
            conn.execute(
                "COPY (SELECT \"exposure_id\", \"prompt_text\", \"response_text\" FROM \"typed_events\" "
                "WHERE \"event_type\" = 'impression' AND \"reject_reason\" IS NULL) "
                "TO '" + str(capture_texts).replace("'", "''") + "' (FORMAT parquet)"
            )
        if cfg.text == "drop":
            conn.execute('UPDATE "typed_events" SET "prompt_text" = NULL, "response_text" = NULL')
        elif cfg.text == "hash":
            digest = text_digest_fn(cfg.key)
            for column in TEXT_COLUMNS:
                _rewrite_column(conn, column, lambda v, _c: digest(v))
        if cfg.key is not None:
            for column in ID_COLUMNS:
                _rewrite_column(conn, column, lambda v, _c: _hmac_hex(cfg.key, v))
        if cfg.key is not None or cfg.text != "keep" or cfg.redact:
            payload_digest = text_digest_fn(cfg.key)
            _rewrite_column(conn, "payload", lambda v, _c: "withheld " + payload_digest(v))
            record["reject_payloads"] = "withheld (digest only)"
        return record

    # The content columns of typed_events this hook reads or rewrites (issue 19): ingest keeps
    # these in typed_events for it; the others it reads from the input when writing. The key
    # columns (ids, times, types, payload) are always there.
    columns: set[str] = set()
    if cfg.redact or cfg.text != "keep" or capture_texts is not None:
        columns.update(TEXT_COLUMNS)
    if cfg.key is not None:
        columns.update(ID_COLUMNS)
    hook.columns = frozenset(columns)  # type: ignore[attr-defined]
    return hook

