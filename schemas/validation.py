"""One way to validate a collected frame against a pandera model, shared by every layer."""

from __future__ import annotations

import pandera.errors
import polars as pl

from schemas.errors import TableValidationError


def validate_table(frame: pl.DataFrame, model, table: str, *, fix: str | None = None) -> pl.DataFrame:
    """Validate ``frame`` against ``model`` on its full data (lazy: every failing check is reported).

    Raises
    ------
    TableValidationError : naming the table, the number of failing checks and a sample of them.
    """
    try:
        return model.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        sample = str(cases.head(5).to_dicts()) if hasattr(cases, "head") else str(cases)[:500]
        raise TableValidationError(table, len(cases), sample, fix=fix) from exc
    except pandera.errors.SchemaError as exc:
        raise TableValidationError(table, 1, str(exc).splitlines()[0][:500], fix=fix) from exc
