"""Helpers for the ETL tests: tiny in-memory DuckDB tables and event rows (imported by tests)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import duckdb

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)

STAGED_TYPES: dict[str, str] = {
    "event_id": "VARCHAR", "event_time": "TIMESTAMPTZ", "event_type": "VARCHAR", "exposure_id": "VARCHAR",
    "user_id": "VARCHAR", "session_id": "VARCHAR", "prompt_id": "VARCHAR", "response_id": "VARCHAR",
    "model_id": "VARCHAR", "prompt_text": "VARCHAR", "response_text": "VARCHAR", "position": "INTEGER",
    "platform": "VARCHAR", "locale": "VARCHAR", "latency_ms": "DOUBLE", "solicited": "BOOLEAN",
    "source_file": "VARCHAR", "row_number": "BIGINT",
}
TYPED_TYPES: dict[str, str] = {
    "file_index": "INTEGER", "source_file": "VARCHAR", "row_number": "BIGINT", "reject_reason": "VARCHAR",
    "reject_detail": "VARCHAR", "payload": "VARCHAR",
    **{k: v for k, v in STAGED_TYPES.items() if k not in ("source_file", "row_number")},
}


def make_table(conn: duckdb.DuckDBPyConnection, name: str, types: dict[str, str], rows: list[dict]) -> None:
    """CREATE TEMP TABLE name with ``types`` and insert ``rows`` (missing keys are NULL)."""
    columns = ", ".join(f'"{c}" {t}' for c, t in types.items())
    conn.execute(f'CREATE OR REPLACE TEMP TABLE "{name}" ({columns})')
    if rows:
        marks = ", ".join("?" for _ in types)
        conn.executemany(f'INSERT INTO "{name}" VALUES ({marks})', [[r.get(c) for c in types] for r in rows])


def impression(exposure_id: str, *, minutes: float = 0, user: str = "u1", event_id: str | None = None, **extra) -> dict:
    """A typed impression row at T0 + minutes."""
    return {
        "event_id": event_id or f"imp-{exposure_id}", "event_time": T0 + timedelta(minutes=minutes),
        "event_type": "impression", "exposure_id": exposure_id, "user_id": user, "session_id": f"{user}-s",
        "prompt_id": "p1", "response_id": f"r-{exposure_id}", "model_id": "m", "prompt_text": "hi",
        "response_text": "hello there", "position": 0, "platform": "web", "locale": "en-US", "latency_ms": 10.0,
        "solicited": False, **extra,
    }


def feedback(exposure_id: str, event_type: str, *, minutes: float, event_id: str | None = None) -> dict:
    return {
        "event_id": event_id or f"{event_type}-{exposure_id}-{minutes}", "event_time": T0 + timedelta(minutes=minutes),
        "event_type": event_type, "exposure_id": exposure_id,
    }


def typed(rows: list[dict], *, file_index: int = 0) -> list[dict]:
    """Number accepted rows as typed_events rows of one file (row_number 1, 2, ...)."""
    return [{"file_index": file_index, "source_file": f"f{file_index}", "row_number": k + 1, **r} for k, r in enumerate(rows)]


def staged(rows: list[dict]) -> list[dict]:
    return [{"source_file": "old", "row_number": k + 1, **r} for k, r in enumerate(rows)]
