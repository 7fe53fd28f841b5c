"""A privacy scan for tests (issue 22): look for raw ids and texts in the *decoded* values of every
Parquet file under a folder (Delta tables' data files of every version, embeddings, datasets,
predictions) and in every text file (json, jsonl, html, toml, csv, md, txt, yaml).

Why decoded: Parquet pages are dictionary-encoded and snappy-compressed, so a raw byte search finds
only the values that happen to sit uncompressed (30 of 125 user ids, 0 of 200 response texts on the
messy fixture) and a leak check on bytes cannot fail. Imported by the privacy tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TEXT_SUFFIXES: frozenset[str] = frozenset({".json", ".jsonl", ".html", ".toml", ".csv", ".md", ".txt", ".yaml", ".yml", ".log"})


@dataclass
class ScanResult:
    """What a scan saw and which secrets it found where (``found[secret]`` = files, ``path:column``)."""

    parquet_files: int = 0
    text_files: int = 0
    string_values: int = 0
    found: dict[str, list[str]] = field(default_factory=dict)

    def leaked(self, secrets: Iterable[str]) -> list[str]:
        return [s for s in secrets if s in self.found]


def _string_columns(table: pa.Table) -> Iterable[tuple[str, pl.Series]]:
    """(column, decoded non-null values) for every column whose values are or contain strings
    (nested lists and structs are flattened to their string leaves)."""
    for name in table.column_names:
        yield from _leaves(name, table[name].combine_chunks())


def _leaves(name: str, array) -> Iterable[tuple[str, pl.Series]]:
    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.cast(kind.value_type)
        kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        yield name, pl.Series(array.cast(pa.large_string())).drop_nulls()
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        yield name, pl.Series([v.decode("utf-8", "replace") for v in array.to_pylist() if v is not None], dtype=pl.String)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        yield from _leaves(name, pc.list_flatten(array))
    elif pa.types.is_struct(kind):
        for i in range(kind.num_fields):
            yield from _leaves(f"{name}.{kind.field(i).name}", pc.struct_field(array, [i]))


def scan(roots: Iterable[Path], secrets: Iterable[str]) -> ScanResult:
    """Search every secret (a substring match) in every Parquet file's decoded string values and in
    every text file under ``roots``. Unreadable Parquet files fail the scan (they are not skipped).

    Matching is polars' Aho-Corasick (``str.contains_any`` / ``str.extract_many``): one pass over
    the values for all secrets at once."""
    secrets = [s for s in dict.fromkeys(secrets) if s]
    result = ScanResult()

    def look(series: pl.Series, where: str) -> None:
        if series.is_empty() or not secrets:
            return
        hits = series.filter(series.str.contains_any(secrets))
        if hits.is_empty():
            return
        for secret in set(hits.str.extract_many(secrets, overlapping=True).explode().drop_nulls().to_list()):
            result.found.setdefault(secret, []).append(where)

    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if not path.is_file():
                continue
            if path.suffix == ".parquet":
                result.parquet_files += 1
                for column, values in _string_columns(pq.read_table(path)):
                    result.string_values += len(values)
                    look(values, f"{path}:{column}")
            elif path.suffix in TEXT_SUFFIXES:
                result.text_files += 1
                look(pl.Series([path.read_text(encoding="utf-8", errors="replace")], dtype=pl.String), str(path))
    return result
