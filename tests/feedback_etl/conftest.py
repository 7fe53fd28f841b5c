"""Fixtures for the ETL tests."""

from __future__ import annotations

import duckdb
import pytest


@pytest.fixture
def duck():
    """An in-memory DuckDB connection with UTC as session time zone (as ingest sets it)."""
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")
    yield conn
    conn.close()
