"""The SQL restatement of the warehouse contracts (feedback_etl.sql_checks) matches the pandera models
and catches what they catch (issue 19: ingest validates in SQL, without importing pandera)."""

from __future__ import annotations

import polars as pl
import pytest

from feedback_etl import sql_checks
from schemas.errors import TableValidationError
from schemas.feedback import FeedbackTable
from schemas.rejects import RejectsTable
from schemas.staged_event import StagedEvent

MODELS = {"events": StagedEvent, "rejects": RejectsTable, "feedback": FeedbackTable}


@pytest.mark.parametrize("table", sorted(MODELS))
def test_contract_equals_the_pandera_model(table: str) -> None:
    columns, frame_checks = sql_checks.derive_contract(MODELS[table])
    assert list(sql_checks.CONTRACTS[table]) == list(columns)
    for name, (dtype, nullable, unique, checks) in columns.items():
        ours = sql_checks.CONTRACTS[table][name]
        assert ours[0] == dtype, name
        assert ours[1:] == (nullable, unique, checks), name
    assert sorted(sql_checks.FRAME_CHECKS[table]) == sorted(frame_checks)
    schema = MODELS[table].to_schema()
    assert schema.strict is True and schema.coerce is True  # what validate_relation / conform assume


def _rejects(duck, **overrides) -> None:
    row = {"run_id": "'r'", "source_file": "'f'", "row_number": "CAST(3 AS BIGINT)", "reason": "'missing_field'",
           "detail": "NULL", "event_id": "NULL", "exposure_id": "NULL", "payload": "NULL", **overrides}
    duck.execute("CREATE OR REPLACE TEMP TABLE r AS SELECT " + ", ".join(f'{v} AS "{k}"' for k, v in row.items()))


def test_valid_rows_pass(duck) -> None:
    _rejects(duck)
    sql_checks.validate_relation(duck, "r", "rejects")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"run_id": "CAST(NULL AS VARCHAR)"}, "run_id not null"),
        ({"reason": "'bogus'"}, "reason isin"),
        ({"row_number": "CAST(-1 AS BIGINT)"}, "row_number greater_than_or_equal_to 0"),
    ],
)
def test_each_rule_is_counted(duck, overrides: dict, message: str) -> None:
    _rejects(duck, **overrides)
    with pytest.raises(TableValidationError, match=message):
        sql_checks.validate_relation(duck, "r", "rejects")


def test_columns_must_match_the_contract(duck) -> None:
    _rejects(duck)
    duck.execute('ALTER TABLE r ADD COLUMN "extra" INTEGER')
    with pytest.raises(TableValidationError, match="extra"):
        sql_checks.validate_relation(duck, "r", "rejects")


def test_unique_and_cross_column_rules(duck) -> None:
    columns = ", ".join(f'NULL AS "{name}"' for name in sql_checks.CONTRACTS["events"] if name not in ("event_id", "event_type", "user_id"))
    duck.execute(f"""CREATE TEMP TABLE e AS SELECT * FROM (VALUES ('a', 'impression', 'u'), ('a', 'impression', NULL))
                     AS t("event_id", "event_type", "user_id"), (SELECT {columns})""")
    with pytest.raises(TableValidationError) as caught:
        sql_checks.validate_relation(duck, "e", "events")
    text = str(caught.value)
    assert "event_id unique" in text and "impressions_carry_ids" in text and "event_time not null" in text
    # skip_unique drops only the uniqueness rule (the caller checked the key already)
    with pytest.raises(TableValidationError) as caught:
        sql_checks.validate_relation(duck, "e", "events", skip_unique=True)
    assert "event_id unique" not in str(caught.value)


def test_conform_casts_like_pandera_coerce() -> None:
    frame = pl.DataFrame({"n_events": [1, 2], "label": [1, None]})  # Int64 in, contract types out
    out = sql_checks.conform(frame, "feedback")
    assert out.schema == {"n_events": pl.Int32, "label": pl.Int8}
    with pytest.raises(TableValidationError, match="cannot cast"):
        sql_checks.conform(pl.DataFrame({"n_events": ["x"]}), "feedback")


@pytest.mark.parametrize("run_id", [None, "r1"])
@pytest.mark.parametrize("table", sorted(MODELS))
def test_arrow_schema_is_that_of_a_validated_polars_batch(table: str, run_id: str | None) -> None:
    """The schema the DuckDB engine commits, derived without polars (issue 19), is the one a
    conformed polars batch converts to: same order, large strings, run_id last."""
    from feedback_etl import io

    columns = list(reversed(sql_checks.contract_columns(table)))  # the relation's order is kept
    if run_id is not None and "run_id" in columns:
        columns.remove("run_id")
    empty = pl.DataFrame(schema={name: pl.String for name in columns}).to_arrow()
    batch = next(io.validated_batches([empty], lambda f: sql_checks.conform(f, table), run_id=run_id))
    assert sql_checks.arrow_schema(table, columns, run_id=run_id is not None) == io.to_arrow(batch).schema
    with pytest.raises(TableValidationError, match="not in the contract"):
        sql_checks.arrow_schema(table, [*columns, "extra"])
