"""add_feature_columns does a constant number of passes whatever the number of features (issue 19),
with the per-column semantics unchanged: inferred types, counts, and the first faulty feature wins."""

from __future__ import annotations

import json

import duckdb
import pytest

from feedback_etl.features import add_feature_columns
from schemas.errors import ConfigError, InputFileError


class _Counting:
    """A DuckDB connection that counts the statements run through it."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn, self.statements = conn, 0

    def execute(self, *args):
        self.statements += 1
        return self.conn.execute(*args)


def _conn(contexts: list[dict]) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    conn.execute('CREATE TEMP TABLE "all_events" ("exposure_id" VARCHAR, "event_type" VARCHAR, "context" VARCHAR, '
                 '"source_file" VARCHAR, "row_number" BIGINT)')
    rows = [(f"e{i}", "impression", json.dumps(c), "a.jsonl", i + 1) for i, c in enumerate(contexts)]
    rows += [(f"e{i}", "feedback", None, "a.jsonl", len(contexts) + i + 1) for i in range(len(contexts))]
    conn.executemany('INSERT INTO "all_events" VALUES (?, ?, ?, ?, ?)', rows)
    conn.execute('CREATE TEMP TABLE "feedback_mart" AS SELECT DISTINCT "exposure_id" FROM "all_events"')
    return conn


def _spec(kind: str, origin: str = "declared") -> dict:
    return {"type": kind, "source": "src", "origin": origin}


def _inferred() -> dict:
    return {"type": "inferred", "source": "src", "origin": "extra column"}


def test_statements_do_not_grow_with_the_number_of_features():
    contexts = [{f"n{k}": str(i % 3 + k) for k in range(40)} | {"b": "true" if i % 2 else "false", "c": f"x{i % 4}"}
                for i in range(30)]
    counted = []
    for width in (2, 40):
        wanted = {f"n{k}": _spec("numeric") for k in range(width)} | {"b": _inferred(), "c": _inferred()}
        conn = _Counting(_conn(contexts))
        kept, warnings = add_feature_columns(conn, wanted)
        counted.append(conn.statements)
        assert len(kept) == width + 2 and warnings == []
    assert counted[0] == counted[1]


def test_types_counts_and_values_match_the_per_column_rules():
    contexts = [{"flag": "TRUE" if i % 2 else "false", "num": f"{i}.5", "mix": "1" if i % 3 else "one",
                 "empty": " ", "same": "k", "dnum": "nan" if i == 0 else str(i)} for i in range(12)]
    conn = _conn(contexts)
    wanted = {"flag": _inferred(), "num": _inferred(), "mix": _inferred(), "empty": _spec("categorical"),
              "same": _spec("categorical"), "dnum": _spec("categorical")}
    kept, warnings = add_feature_columns(conn, wanted)
    assert {n: r["type"] for n, r in kept.items()} == {
        "flag": "boolean", "num": "numeric", "mix": "categorical", "empty": "categorical", "same": "categorical", "dnum": "categorical"}
    assert (kept["flag"]["distinct"], kept["num"]["distinct"], kept["mix"]["distinct"]) == (2, 12, 2)
    assert kept["empty"]["non_null"] == 0 and kept["same"]["distinct"] == 1 and len(warnings) == 2
    frame = conn.execute('SELECT "exposure_id", "flag", "num", "mix" FROM "feedback_mart" ORDER BY "num"').fetchall()
    assert frame[0] == ("e0", False, 0.5, "one") and frame[1] == ("e1", True, 1.5, "1")


def test_the_first_faulty_feature_in_order_is_the_error():
    contexts = [{"turn": "seven" if i == 4 else str(i), "trace": f"t{i}"} for i in range(10)]
    # the over-cap categorical comes first: its ConfigError wins over the later bad number
    with pytest.raises(ConfigError, match="'trace' has 10 distinct values"):
        add_feature_columns(_conn(contexts), {"trace": _spec("categorical"), "turn": _spec("numeric")}, max_levels=5)
    with pytest.raises(InputFileError) as info:
        add_feature_columns(_conn(contexts), {"turn": _spec("numeric"), "trace": _spec("categorical")}, max_levels=5)
    assert "declared numeric but holds 'seven'" in str(info.value) and "a.jsonl, row 5, column src" in str(info.value)
