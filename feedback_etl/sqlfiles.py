"""Load the transforms in ``sql/`` and run them on DuckDB with bound parameters."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import duckdb

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_PARAMETER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


@lru_cache(maxsize=None)
def load_sql(name: str) -> str:
    """The text of ``sql/<name>.sql`` (e.g. ``"staging/stg_events_typed"``)."""
    return (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")


def sql_parameters(text: str) -> set[str]:
    """Names of the ``$parameters`` a SQL text uses (comments included, harmlessly)."""
    return set(_PARAMETER.findall(text))


def run_sql(
    conn: duckdb.DuckDBPyConnection,
    name: str,
    params: dict[str, Any] | None = None,
    *,
    into: str | None = None,
    append: bool = False,
) -> duckdb.DuckDBPyConnection | duckdb.DuckDBPyRelation:
    """Run ``sql/<name>.sql``; with ``into``, materialise it as the temp table of that name
    (``append``: insert into that existing table instead). Without ``into``, return the query as
    a DuckDB relation (``.pl()``, ``.fetchall()``, ...).

    Only the parameters the file uses are bound (DuckDB refuses unused named parameters).
    """
    text = load_sql(name)
    used = sql_parameters(_strip_comments(text))
    bound = {k: v for k, v in (params or {}).items() if k in used}
    missing = used - set(bound)
    if missing:
        raise KeyError(f"sql/{name}.sql needs parameters {sorted(missing)}")
    if into is None:
        return conn.sql(text, params=bound or None)
    table = '"' + into.replace('"', '""') + '"'
    text = f"INSERT INTO {table}\n{text}" if append else f"CREATE OR REPLACE TEMP TABLE {table} AS\n{text}"
    return conn.execute(text, bound) if bound else conn.execute(text)


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())
