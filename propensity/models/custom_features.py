"""Which columns a propensity, outcome or noise model uses: the contract's context plus custom ones.

Custom context columns (issue 17, docs/features.md) are extra columns of the feedback table,
declared in the ingest mapping's ``[features]`` table or kept with ``--keep-extra-columns``. They
are used by default, beside the contract's context and user-history columns
(``schemas.feedback.CONTEXT_CATEGORICAL`` / ``CONTEXT_NUMERIC``); ``--features`` picks an exact
list and ``--exclude-features`` drops some. Boolean features enter the models as 0/1 numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from schemas.errors import ConfigError
from schemas.feedback import CONTEXT_CATEGORICAL, CONTEXT_NUMERIC

log = logging.getLogger(__name__)


def parse_feature_list(text: str | Sequence[str] | None, *, where: str) -> tuple[str, ...] | None:
    """``"plan,turn"`` (or a list) -> ("plan", "turn"); None or "" -> None (the default set)."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(item.strip() for item in items if item and item.strip()))
    if not names:
        return None
    if any(not n.replace("_", "").isalnum() for n in names):
        raise ConfigError(f"feature list {','.join(names)!r} holds a name that is no column name", where=where,
                          fix="give comma-separated column names of the feedback table, e.g. plan_tier,turn")
    return names


def with_custom_features(feedback: pl.DataFrame, warehouse: str | Path, *, version: int | str | None = None) -> pl.DataFrame:
    """``feedback`` (the contract columns) plus the warehouse's custom feature columns, same row order."""
    from feedback_etl.features import read_feature_frame

    custom = read_feature_frame(warehouse, version=version)
    if custom is None:
        return feedback
    custom = custom.select(["exposure_id", *[c for c in custom.columns if c != "exposure_id" and c not in feedback.columns]])
    return feedback.join(custom, on="exposure_id", how="left", maintain_order="left")


def select_features(
    feedback: pl.DataFrame,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    *,
    where: str = "--features",
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(categorical, numeric) feature columns of ``feedback``: the contract's context and every custom one.

    Parameters
    ----------
    feedback : frame holding the contract columns and any custom feature columns.
    include : exact list to use (None: all of them).
    exclude : names to leave out.

    Raises
    ------
    ConfigError : a name in ``include`` / ``exclude`` is no feature column, or nothing is left.
    """
    from feedback_etl.features import feature_types

    custom = feature_types(dict(feedback.schema))
    available: dict[str, str] = {
        **{c: "categorical" for c in CONTEXT_CATEGORICAL}, **{c: "numeric" for c in CONTEXT_NUMERIC},
        **{c: ("categorical" if kind == "categorical" else "numeric") for c, kind in custom.items()},
    }
    for names, option in ((include or (), where), (exclude, "--exclude-features")):
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ConfigError(
                f"{unknown} {'is' if len(unknown) == 1 else 'are'} not feature column(s) of the feedback table",
                where=option,
                fix=f"choose among {', '.join(available)}",
            )
    chosen = [c for c in (include if include is not None else available) if c not in set(exclude)]
    if not chosen:
        raise ConfigError("no feature column is left", where=f"{where} / --exclude-features", fix="keep at least one column")
    constant = [c for c in chosen if c in custom and feedback[c].drop_nulls().n_unique() <= 1]
    if constant:
        log.warning("custom feature(s) %s hold at most one value here: they carry no information", constant)
    categorical = tuple(c for c in chosen if available[c] == "categorical")
    numeric = tuple(c for c in chosen if available[c] == "numeric")
    return categorical, numeric
