"""The weighted dataset's inputs read out of core (issue 23): DuckDB joins the feedback table, the
channel's propensities and the embeddings, and hands back rows sorted by exposure_id in batches.

``weights export`` goes this way when the feedback table is larger than the export's memory budget
(:func:`propensity.weights.export.export_weighted_dataset`); memory is then DuckDB's (capped at half
the budget, spilling to a temporary folder beyond it), one batch, and the observed rows' weights.
The rows come in DuckDB's scan order, each batch sorted by exposure_id, not globally sorted as an
in-memory export writes them: the same rows and values in another order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from propensity.io import score_files as channel_score_files
from propensity.io import scores_path
from schemas.errors import InputFileError, WarehouseError
from schemas.feedback import CHANNELS, CONTEXT_CATEGORICAL, CONTEXT_NUMERIC

# The feedback columns a dataset row carries (before the channel's own flag column).
FEEDBACK_COLUMNS: tuple[str, ...] = (
    "exposure_id", "user_id", "prompt_id", "response_id", "split", "observed", "label", "solicited",
    "prompt_text", "response_text", *CONTEXT_CATEGORICAL, *CONTEXT_NUMERIC,
)
# Label-aware scores: P(o=1 | x, r) at the row's own vote, as propensity.slice.label_aware.propensity_for_labels.
_LABEL_AWARE_P = """CASE WHEN f.solicited THEN s.propensity
    WHEN f.observed AND f.label = 1 THEN s.propensity_label1
    WHEN f.observed AND f.label = 0 THEN s.propensity_label0
    ELSE s.propensity_context END"""


@dataclass(frozen=True, kw_only=True)
class JoinedInputs:
    """Counts of the joined inputs (pass 1): rows, rows without a propensity (and a few of their
    ids), rows without an embedding, and per split the sum of o / p (the snips denominators)."""

    n_rows: int
    missing_propensity: int
    missing_sample: list[str]
    lacking_embedding: int
    rows_by_split: dict[str, int]
    inverse_propensity_sum: dict[str, float]


def _score_files(warehouse: Path, channel: str, label_aware: bool) -> tuple[list[Path], bool]:
    """The Parquet files holding the channel's scores, and whether they carry a ``channel`` column."""
    if label_aware:
        from propensity.slice.label_aware import label_aware_scores_path

        path = label_aware_scores_path(warehouse)
        if not path.is_file():
            raise WarehouseError("warehouse has no label-aware propensities", where=str(path),
                                 fix=f"run `causalrm propensity fit-label-aware {warehouse}` first")
        return [path], True
    parts, has_channel = channel_score_files(warehouse, channel)
    if not parts:
        raise WarehouseError(f"no propensity scores for channel {channel!r}", where=str(scores_path(warehouse)),
                             fix=f"run `causalrm propensity fit {warehouse} --channel {channel}` first")
    return parts, has_channel


@contextmanager
def joined_inputs(warehouse: Path, feedback_files: list[Path], *, channel: str, label_aware: bool,
                  memory_limit_bytes: int, n_rows: int, schema: Any = None) -> Iterator["_Joined"]:
    """A DuckDB connection with the view ``joined``: one row per feedback row with its columns,
    ``propensity`` (null when the channel has none) and ``embedding`` when WH/embeddings exists.
    Scores are read as written (one row per exposure and channel, as every fit writes them; a
    window to drop duplicates cost 1 GB more at 10M exposures); the last row of an exposure in the
    embedding files wins, as in :func:`feedback_etl.io.read_embeddings`. ``n_rows`` (the feedback
    rows, as the export's plan counted them) sizes the passes of :meth:`_Joined.batches`."""
    from propensity.models.casecontrol import embedding_dim, feedback_connection, join_partitions

    score_files, has_channel = _score_files(warehouse, channel, label_aware)
    embedding_files = sorted((warehouse / "embeddings").glob("*.parquet"))
    with feedback_connection(feedback_files, schema, memory_limit_bytes=memory_limit_bytes,
                             prefix="causalrm-export-") as (con, links):
        scores = [str(links.file(p)) for p in score_files]
        score_columns = ("propensity, propensity_label1, propensity_label0, propensity_context" if label_aware else "propensity")
        where = "WHERE channel = $channel" if has_channel else ""
        con.execute(f"""
            CREATE TEMP VIEW scores AS
            SELECT exposure_id, {score_columns} FROM read_parquet({_list(scores)}) {where}
        """.replace("$channel", _quote(channel)))
        flag = CHANNELS[channel]
        columns = list(dict.fromkeys([*FEEDBACK_COLUMNS, flag]))
        selected = ", ".join(f'f."{c}"' for c in columns)
        p = _LABEL_AWARE_P if label_aware else "s.propensity"
        embedding_join, embedding = "", ""
        if embedding_files:
            files = [str(links.file(p)) for p in embedding_files]
            con.execute(f"""
                CREATE TEMP VIEW embedding_rows AS
                SELECT exposure_id, embedding, filename, file_row_number
                FROM read_parquet({_list(files)}, filename = true, file_row_number = true)
            """)
            # the last row of an exposure wins; the pass's predicate is applied before the window
            # (it is on exposure_id, the window's partition, so each pass keeps whole partitions)
            embedding_join = ("LEFT JOIN (SELECT exposure_id, embedding FROM embedding_rows WHERE {part} QUALIFY row_number() OVER "
                              "(PARTITION BY exposure_id ORDER BY filename DESC, file_row_number DESC) = 1) e ON e.exposure_id = f.exposure_id")
            embedding = ", e.embedding"
        # The rows of one pass (``{part}``: a predicate on exposure_id, TRUE for every row); the view
        # ``joined`` is every row (the counts), batches() reads it pass by pass (join_partitions).
        template = (f'SELECT {selected}, {p} AS propensity{embedding}, f."{flag}" AS _observed '
                    "FROM (SELECT * FROM feedback WHERE {part}) f LEFT JOIN (SELECT * FROM scores WHERE {part}) s "
                    f"ON s.exposure_id = f.exposure_id {embedding_join}")
        con.execute(f"CREATE TEMP VIEW joined AS {template.replace('{part}', 'TRUE')}")
        parts = join_partitions(n_rows, memory_limit_bytes, embedding_dim=embedding_dim(warehouse) if embedding_files else 0)
        yield _Joined(con, has_embeddings=bool(embedding_files), label_aware=label_aware, propensity=p, flag=flag,
                      template=template, parts=parts)


def _list(paths: list[str]) -> str:
    return "[" + ", ".join(_quote(p) for p in paths) + "]"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class _Joined:
    """The ``joined`` view of :func:`joined_inputs`: its counts and its rows in batches."""

    def __init__(self, con: Any, *, has_embeddings: bool, label_aware: bool, propensity: str = "s.propensity",
                 flag: str = "observed", template: str = "SELECT * FROM joined WHERE {part}", parts: int = 1) -> None:
        self.con = con
        self.template, self.parts = template, parts  # the rows of one pass, and the passes (join_partitions)
        self.has_embeddings = has_embeddings
        self.label_aware = label_aware
        self.propensity, self.flag = propensity, flag  # the SQL of p over f and s, the channel's flag column

    def check_scores(self, where: str) -> None:
        """Context propensities must lie in (0, 1] (the in-memory export's check)."""
        if self.label_aware:
            return
        bad = "FROM scores WHERE propensity IS NULL OR NOT (propensity > 0 AND propensity <= 1)"
        n_bad = self.con.execute(f"SELECT count(*) {bad}").fetchone()[0]
        if n_bad:
            sample = [row[0] for row in self.con.execute(f"SELECT propensity {bad} LIMIT 3").fetchall()]
            raise InputFileError(
                f"{n_bad:,} propensities outside (0, 1] (e.g. {sample})", where=where,
                fix="refit with a clipping floor > 0 (`causalrm propensity fit --clip 0.05`)",
            )

    def totals(self) -> JoinedInputs:
        """What the weights need before the first batch, without joining every row: the rows per
        split (the feedback table alone) and the per-split sums of 1/p over the observed rows (an
        inner join of the observed rows only, so DuckDB builds on them: a join of every row built
        30M scores into a hash table at 30M exposures and ran past its memory share). Missing
        propensities and embeddings are counted by :meth:`counts` once a batch shows one."""
        per_split = self.con.execute("SELECT split, count(*) FROM feedback GROUP BY split").fetchall()
        sums = dict(self.con.execute(
            f"SELECT f.split, sum(1.0 / ({self.propensity})) FROM feedback f JOIN scores s ON s.exposure_id = f.exposure_id "
            f'WHERE f."{self.flag}" GROUP BY f.split').fetchall())
        return JoinedInputs(n_rows=sum(int(c) for _, c in per_split), missing_propensity=0, missing_sample=[], lacking_embedding=0,
                            rows_by_split={str(k): int(c) for k, c in per_split},
                            inverse_propensity_sum={str(k): float(sums.get(k) or 0.0) for k, _ in per_split})

    def counts(self) -> JoinedInputs:
        """Every count over the joined rows (the error path: a batch lacked a propensity or an embedding)."""
        lacking = "count(*) FILTER (WHERE embedding IS NULL)" if self.has_embeddings else "0"
        n, missing, n_lacking = self.con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE propensity IS NULL), {lacking} FROM joined"
        ).fetchone()
        sample = [row[0] for row in self.con.execute(
            "SELECT exposure_id FROM joined WHERE propensity IS NULL ORDER BY exposure_id LIMIT 3").fetchall()] if missing else []
        per_split = self.con.execute(
            "SELECT split, count(*), sum(CASE WHEN _observed THEN 1.0 / propensity ELSE 0.0 END) FROM joined GROUP BY split"
        ).fetchall()
        return JoinedInputs(n_rows=int(n), missing_propensity=int(missing), missing_sample=sample, lacking_embedding=int(n_lacking),
                            rows_by_split={str(k): int(c) for k, c, _ in per_split},
                            inverse_propensity_sum={str(k): float(v or 0.0) for k, _, v in per_split})

    def batches(self, batch_rows: int) -> Iterator[pl.DataFrame]:
        """Every joined row, ``batch_rows`` at a time, in the order DuckDB streams them (no global
        sort: sorting whole rows, texts included, took DuckDB past its memory limit, 5 GB at 10M
        exposures; issue 23), one pass per partition of the exposures when the scores' hash table
        would not fit DuckDB's share (:func:`propensity.models.casecontrol.join_partitions`: at 30M
        exposures a spilled join cost 73 CPU s, two passes 29). Each batch is sorted by exposure_id."""
        from propensity.models.casecontrol import partitioned_batches

        self.con.execute("SET preserve_insertion_order = false")
        query = f"SELECT * EXCLUDE (_observed) FROM ({self.template})"
        for batch in partitioned_batches(self.con, query, self.parts, batch_rows):
            yield pl.from_arrow(batch).sort("exposure_id")
