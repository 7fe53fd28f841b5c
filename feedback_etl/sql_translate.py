"""The transforms in ``sql/`` (written once, in DuckDB SQL) as Spark SQL, for ``--engine spark``.

:func:`spark_sql` loads ``sql/<name>.sql``, binds its ``$parameters`` as literals (Spark views
cannot take bound parameters either), parses it with sqlglot's DuckDB dialect, applies the
post-fixes below on the syntax tree and writes it in sqlglot's Spark dialect. Translations are
cached (one per file and parameter values).

Post-fixes: what sqlglot does not translate, or translates to something that runs on Spark but
answers differently from DuckDB. Each is one function over the tree, tested against DuckDB's
answer (``tests/feedback_etl/test_spark_ingest.py``):

======================  ===========================================================================
``_hex_cast``           ``CAST('0x' || h AS BIGINT)`` (DuckDB reads hex) -> ``CAST(CONV(h, 16, 10) AS
                        BIGINT)``: Spark's cast of ``'0x..'`` is NULL (the split offset in marts/user_splits).
``_timestamp_ltz``      ``TIMESTAMP WITH TIME ZONE`` -> ``TIMESTAMP_LTZ``, not sqlglot's bare
                        ``TIMESTAMP``, whose meaning depends on ``spark.sql.timestampType``.
``_timestamp_text``     ``CAST(ts AS VARCHAR)`` ends in ``+00`` as DuckDB's does (reject payloads).
``_cte_hints``          ``WITH x AS [NOT] MATERIALIZED (...)`` -> ``WITH x AS (...)``: DuckDB's planning
                        hints (sql/staging/stg_resolution.sql) are not Spark syntax; Spark plans every
                        CTE itself (inlined, a shuffle read twice is reused).
``_text_casts``         ``TRY_CAST(text AS ...)`` accepts what DuckDB accepts, no more:
                        TIMESTAMP: only ``YYYY-MM-DD`` or ``YYYY-MM-DD[T ]HH:MM...`` shapes (Spark
                        also reads ``'2026'``, ``'2026-01'``, ``'2026-01-05T10'``, ``'yesterday'``,
                        ``'now'`` ...); INTEGER: decimals round half away from zero (``'2.0'`` is 2,
                        ``'2.5'`` is 3; a DOUBLE rounds half to even), Spark's cast refuses them;
                        DOUBLE: no Java ``d``/``f`` suffix (``'1d'``); BOOLEAN: no surrounding
                        whitespace (DuckDB refuses ``' true'``).
======================  ===========================================================================

Translated by sqlglot itself and checked by the tests: ``DATE_DIFF('microsecond', a, b)`` ->
``DATEDIFF(MICROSECOND, a, b)`` (Spark's TIMESTAMPDIFF), ``STRUCT_PACK(k := v)`` -> ``STRUCT(v AS
k)``, ``TO_JSON``, ``IS NOT DISTINCT FROM``, ``NULLS LAST`` made explicit (Spark sorts NULLs first
by default), double-quoted identifiers -> backquoted ones.

Differences left, by design (documented in docs/ingest.md, "Engines"): DuckDB-only spellings the guards do not
add back (``'2026/01/05 10:00'``, ``'T24:00:00'``, ``'epoch'`` timestamps; ``'0x10'`` or ``'1_000'``
integers) read as bad values on Spark; inside the JSON payload of a rejected Parquet row, a
TIMESTAMP column is written ``2026-01-05T10:00:00.000Z`` by Spark's ``to_json`` and
``2026-01-05 10:00:00+00`` by DuckDB's.
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from typing import Any, Callable, Mapping

import sqlglot
from sqlglot import exp

from feedback_etl.sqlfiles import _strip_comments, load_sql, sql_parameters

# TRY_CAST(text AS TIMESTAMP) on Spark only for DuckDB's shapes: a date, alone or with HH:MM after
# 'T' or a space (seconds, fractions and zone are left to Spark, which reads them as DuckDB does).
TIMESTAMP_SHAPE = r"^\s*[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}($|[T ][0-9]{1,2}:[0-9]{1,2})"
# Java's parseDouble reads '1d' and '1f'; DuckDB does not.
DOUBLE_SUFFIX = r"[0-9.][dDfF]\s*$"
SURROUNDING_SPACE = r"^\s|\s$"


def spark_sql(name: str, params: Mapping[str, Any] | None = None) -> str:
    """``sql/<name>.sql`` as Spark SQL with its ``$parameters`` bound as literals.

    Only the parameters the file uses are bound (as :func:`feedback_etl.sqlfiles.run_sql` does).

    Raises
    ------
    KeyError : a parameter the file uses is missing.
    TypeError : a parameter value has no literal form (str, int, float, bool, timedelta).
    """
    return _translate_file(name, _bound(name, params))


def spark_statements(
    name: str, params: Mapping[str, Any] | None = None, *, keep: tuple[str, ...] = ()
) -> tuple[tuple[str | None, str], ...]:
    """``sql/<name>.sql`` as Spark SQL statements, honouring DuckDB's ``AS MATERIALIZED`` CTEs.

    Each CTE the file marks ``MATERIALIZED`` (or named in ``keep``: the Spark engine's own choice)
    comes first as its own statement, ``(view, sql)``, to be kept under ``view``
    (``<file>__<cte>``) before the next runs; the file's query comes last as ``(None, sql)``,
    reading those views. Spark plans a CTE read twice by inlining it: its joins and aggregates
    computed once per reference, and joins planned on the optimiser's guess of its size (a full
    shuffle of the wide rows it joins) where the kept view's files show it is small (issue 19).
    Parameters as :func:`spark_sql`.

    Raises
    ------
    KeyError : a CTE in ``keep`` that the file does not define, or a missing parameter.
    """
    return _split_file(name, _bound(name, params), tuple(keep))


def _bound(name: str, params: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """The parameters ``sql/<name>.sql`` uses, as a hashable cache key; KeyError when one is missing."""
    used = sql_parameters(_strip_comments(load_sql(name)))
    bound = {k: v for k, v in (params or {}).items() if k in used}
    missing = used - set(bound)
    if missing:
        raise KeyError(f"sql/{name}.sql needs parameters {sorted(missing)}")
    return tuple(sorted(bound.items()))


@lru_cache(maxsize=None)
def _translate_file(name: str, params: tuple[tuple[str, Any], ...]) -> str:
    return translate(load_sql(name), dict(params))


@lru_cache(maxsize=None)
def _split_file(name: str, params: tuple[tuple[str, Any], ...], keep: tuple[str, ...]) -> tuple[tuple[str | None, str], ...]:
    tree = _bound_tree(load_sql(name), dict(params))
    with_ = tree.args.get("with_")
    ctes = list(with_.expressions) if with_ is not None else []
    unknown = set(keep) - {cte.alias for cte in ctes}
    if unknown:
        raise KeyError(f"sql/{name}.sql has no CTE {sorted(unknown)}")
    statements: list[tuple[str | None, str]] = []
    kept: list[exp.CTE] = []
    renamed: dict[str, str] = {}
    for cte in ctes:
        _rename_tables(cte, renamed)
        if cte.args.get("materialized") is True or cte.alias in keep:
            view = f"{name.rsplit('/', 1)[-1]}__{cte.alias}"
            query = cte.this.copy()
            if kept:
                query.set("with_", exp.With(expressions=[c.copy() for c in kept]))
            statements.append((view, _spark_text(query)))
            renamed[cte.alias] = view
        else:
            kept.append(cte)
    if with_ is not None:
        tree.set("with_", exp.With(expressions=kept) if kept else None)
    _rename_tables(tree, renamed)
    statements.append((None, _spark_text(tree)))
    return tuple(statements)


def _rename_tables(tree: exp.Expression, renamed: Mapping[str, str]) -> None:
    """Point every reference to a materialised CTE at its view (aliases kept)."""
    for table in list(tree.find_all(exp.Table)):
        if not table.args.get("db") and table.name in renamed:
            table.set("this", exp.to_identifier(renamed[table.name]))


def translate(text: str, params: Mapping[str, Any] | None = None) -> str:
    """One DuckDB statement as Spark SQL: bind ``$parameters``, post-fix, generate (no caching)."""
    return _spark_text(_bound_tree(text, params or {}))


def _bound_tree(text: str, params: Mapping[str, Any]) -> exp.Expression:
    """Parse as DuckDB and bind the parameters."""
    return sqlglot.parse_one(text, read="duckdb").transform(lambda node: _bind(node, params))


def _spark_text(tree: exp.Expression) -> str:
    """Apply :data:`POST_FIXES` and write Spark SQL."""
    for fix in POST_FIXES:
        tree = fix(tree)
    return tree.sql(dialect="spark", comments=False)


def interval_literal(window: timedelta) -> exp.Expression:
    """A timedelta as ``INTERVAL '<seconds>' SECOND`` (microsecond precision, as DuckDB keeps)."""
    micros = round(window / timedelta(microseconds=1))
    sign, micros = ("-" if micros < 0 else ""), abs(micros)
    seconds = f"{sign}{micros // 1_000_000}" + (f".{micros % 1_000_000:06d}" if micros % 1_000_000 else "")
    return exp.Interval(this=exp.Literal.string(seconds), unit=exp.var("SECOND"))


def _bind(node: exp.Expression, params: Mapping[str, Any]) -> exp.Expression:
    if not isinstance(node, (exp.Placeholder, exp.Parameter)):
        return node
    name = node.name
    if name not in params:
        raise KeyError(f"no value for parameter ${name}")
    value = params[name]
    if isinstance(value, timedelta):
        return interval_literal(value)
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, str):
        # The Spark generator escapes quotes and backslashes (Spark reads backslash escapes).
        return exp.Literal.string(value)
    if isinstance(value, (int, float)):
        return exp.Literal.number(repr(value))
    raise TypeError(f"parameter ${name}: no SQL literal for {type(value).__name__}")


# ---------------------------------------------------------------- post-fixes (on the DuckDB tree, before Spark is written)


def _hex_cast(tree: exp.Expression) -> exp.Expression:
    """``CAST('0x' || h AS <integer>)`` -> ``CAST(CONV(h, 16, 10) AS <integer>)``."""
    for node in list(tree.find_all(exp.Cast)):
        if type(node) is not exp.Cast or not node.to.is_type(*exp.DataType.INTEGER_TYPES):
            continue
        inner = node.this.unnest()
        prefix = inner.this if isinstance(inner, exp.DPipe) else None
        if isinstance(prefix, exp.Literal) and prefix.is_string and prefix.this.lower() == "0x":
            conv = exp.Anonymous(this="CONV", expressions=[inner.expression.copy(), exp.Literal.number(16), exp.Literal.number(10)])
            node.replace(exp.Cast(this=conv, to=node.to.copy()))
    return tree


def _timestamp_ltz(tree: exp.Expression) -> exp.Expression:
    """``TIMESTAMP WITH TIME ZONE`` -> ``TIMESTAMP_LTZ`` (instants, shown in the UTC session zone)."""
    for node in list(tree.find_all(exp.DataType)):
        if node.is_type(exp.DataType.Type.TIMESTAMPTZ):
            node.replace(exp.DataType.build("TIMESTAMPLTZ"))
    return tree


def _text_casts(tree: exp.Expression) -> exp.Expression:
    """Guard every ``TRY_CAST`` so Spark accepts the strings DuckDB accepts (module docstring)."""
    for node in list(tree.find_all(exp.TryCast)):
        guarded = _guarded_cast(node.this, node.to)
        if guarded is not None:
            node.replace(guarded)
    return tree


def _guarded_cast(value: exp.Expression, target: exp.DataType) -> exp.Expression | None:
    def when(condition: exp.Expression, then: exp.Expression, default: exp.Expression | None = None) -> exp.Case:
        return exp.Case(ifs=[exp.If(this=condition, true=then)], default=default)

    def matches(pattern: str) -> exp.Expression:
        return exp.RegexpLike(this=exp.cast(value.copy(), "TEXT"), expression=exp.Literal.string(pattern))

    def try_cast(this: exp.Expression, to: exp.DataType | str) -> exp.TryCast:
        return exp.TryCast(this=this, to=exp.DataType.build(to) if isinstance(to, str) else to.copy(), safe=True)

    plain = try_cast(value.copy(), target)
    if target.is_type(exp.DataType.Type.TIMESTAMPTZ, exp.DataType.Type.TIMESTAMPLTZ, exp.DataType.Type.TIMESTAMP):
        return when(matches(TIMESTAMP_SHAPE), plain)
    if target.is_type(exp.DataType.Type.INT):
        # Text through DECIMAL rounds half away from zero (DuckDB's text cast); a DOUBLE rounds half
        # to even (DuckDB's numeric cast, Spark's BROUND); integers pass unchanged either way.
        as_decimal = try_cast(value.copy(), "DECIMAL(38, 9)")
        from_text = try_cast(exp.Round(this=as_decimal, decimals=exp.Literal.number(0)), target)
        from_float = try_cast(exp.Anonymous(this="BROUND", expressions=[value.copy(), exp.Literal.number(0)]), target)
        kind = exp.Anonymous(this="TYPEOF", expressions=[value.copy()])
        is_float = exp.In(this=kind, expressions=[exp.Literal.string("float"), exp.Literal.string("double")])
        return when(is_float, from_float, from_text)
    if target.is_type(exp.DataType.Type.DOUBLE):
        return when(exp.not_(matches(DOUBLE_SUFFIX)), plain)
    if target.is_type(exp.DataType.Type.BOOLEAN):
        return when(exp.not_(matches(SURROUNDING_SPACE)), plain)
    return None


def _timestamp_text(tree: exp.Expression) -> exp.Expression:
    """``CAST(column AS VARCHAR)`` of a timestamp keeps DuckDB's ``+00``: Spark writes
    ``2026-01-05 10:00:00.5``, DuckDB ``2026-01-05 10:00:00.5+00`` (both trim the fraction's zeros;
    the session time zone is UTC on both engines). The type is known to Spark only: TYPEOF."""
    for node in list(tree.find_all(exp.Cast)):
        if type(node) is not exp.Cast or not node.to.is_type(*exp.DataType.TEXT_TYPES) or not isinstance(node.this, exp.Column):
            continue
        is_instant = exp.EQ(this=exp.Anonymous(this="TYPEOF", expressions=[node.this.copy()]), expression=exp.Literal.string("timestamp"))
        with_zone = exp.DPipe(this=node.copy(), expression=exp.Literal.string("+00"), safe=True)
        node.replace(exp.Case(ifs=[exp.If(this=is_instant, true=with_zone)], default=node.copy()))
    return tree


def _cte_hints(tree: exp.Expression) -> exp.Expression:
    """``AS [NOT] MATERIALIZED`` dropped from every CTE (Spark SQL has no such hint)."""
    for node in tree.find_all(exp.CTE):
        node.set("materialized", None)
    return tree


# Order matters: the guards read the DuckDB type names, then TIMESTAMPTZ becomes TIMESTAMP_LTZ.
POST_FIXES: tuple[Callable[[exp.Expression], exp.Expression], ...] = (
    _cte_hints, _hex_cast, _text_casts, _timestamp_text, _timestamp_ltz,
)
