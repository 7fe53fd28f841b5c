"""Reading weighted datasets and warehouses for the trainer, and turning rows into tensors.

A weighted dataset ``DATASET/`` holds ``data.parquet`` (``schemas.weighted_dataset.WeightedDataset``,
re-validated here on load), ``manifest.json`` and optionally ``pairs.parquet``
(``schemas.pairs.PairsTable``) and ``embeddings/`` (from ``causalrm embed DATASET``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from schemas.errors import ConfigError, InputFileError
from schemas.validation import validate_table
from schemas.weighted_dataset import WeightedDataset

log = logging.getLogger(__name__)

#: Loss-side columns every training row carries (float32 tensors of shape (n,)).
TARGET_COLUMNS: tuple[str, ...] = ("label", "observed", "weight", "rho01", "rho10")
_UNKNOWN = 0  # index of unseen / null categories in every vocabulary


def _validate(frame: pl.DataFrame, model: Any, table: str) -> pl.DataFrame:
    return validate_table(frame, model, table, fix="re-export with `causalrm weights export`")


def _read_parquet(path: Path, what: str) -> pl.DataFrame:
    if not path.is_file():
        raise InputFileError(f"{what} not found", where=str(path),
                             fix="pass a dataset folder written by `causalrm weights export`")
    try:
        return pl.read_parquet(path, glob=False)  # a literal path (issue 16)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputFileError(f"cannot read {what}: {str(exc).splitlines()[0]}", where=str(path),
                             fix="re-export the dataset") from exc


def read_manifest(dataset: str | Path) -> dict[str, Any]:
    """``DATASET/manifest.json`` as a dict (an empty dict when absent: the data carries what training needs)."""
    path = Path(dataset) / "manifest.json"
    if not path.is_file():
        log.warning("no manifest.json in %s: provenance will be missing from the model", dataset)
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputFileError(f"manifest is not valid JSON: {exc}", where=str(path), fix="re-export the dataset") from exc


def _join_embeddings(frame: pl.DataFrame, root: Path) -> pl.DataFrame:
    """Add ``embedding`` from ``root/embeddings/`` when the frame has none and embed has run."""
    if "embedding" in frame.columns:
        return frame
    from feedback_etl.io import read_embeddings

    vectors = read_embeddings(root)
    if vectors is None:
        return frame
    joined = frame.join(vectors, on="exposure_id", how="left")
    missing = joined["embedding"].null_count()
    if missing:
        raise InputFileError(f"{missing} exposures have no embedding", where=str(root / "embeddings"),
                             fix=f"rerun `causalrm embed {root}` (it resumes)")
    return joined


def _join_truth(frame: pl.DataFrame, truth: str | None, label_column: str) -> pl.DataFrame:
    if label_column in frame.columns:
        return frame
    if truth is None:
        raise ConfigError(f"label column {label_column!r} is not in the dataset",
                          fix=f"pass --truth truth.parquet holding exposure_id and {label_column}")
    table = _read_parquet(Path(truth), "truth table")
    if "exposure_id" not in table.columns or label_column not in table.columns:
        raise InputFileError(f"truth table lacks exposure_id or {label_column!r}", where=str(truth),
                             fix="pass the simulator's truth.parquet")
    joined = frame.join(table.select("exposure_id", label_column), on="exposure_id", how="left")
    missing = joined[label_column].null_count()
    if missing:
        raise InputFileError(f"{missing} exposures have no {label_column!r} in the truth table", where=str(truth),
                             fix="pass the truth table of the same simulation")
    return joined


def load_weighted_dataset(dataset: str | Path, *, label_column: str = "label", truth: str | None = None,
                          all_observed: bool = False) -> pl.DataFrame:
    """Read and re-validate ``DATASET/data.parquet``; join embeddings and (for oracle runs) truth labels.

    The returned frame's ``label``, ``observed``, ``weight``, ``rho01`` and ``rho10`` are what the
    losses see: with ``label_column`` other than ``label`` the labels come from that column and count
    as clean (rho = 0); with ``all_observed`` every row is observed with weight 1.
    """
    root = Path(dataset)
    if not root.is_dir():
        raise InputFileError("dataset folder not found", where=str(root), fix="run `causalrm weights export WH --out DATASET`")
    frame = _validate(_read_parquet(root / "data.parquet", "data.parquet"), WeightedDataset, "weighted_dataset")
    frame = _join_embeddings(frame, root)
    if label_column != "label":
        frame = _join_truth(frame, truth, label_column)
        observed = pl.lit(True) if all_observed else pl.col("observed")
        frame = frame.with_columns(
            observed=observed,
            label=pl.when(observed).then(pl.col(label_column).cast(pl.Float64)),
            rho01=pl.lit(0.0), rho10=pl.lit(0.0),
        )
        if all_observed:
            frame = frame.with_columns(weight=pl.lit(1.0), propensity=pl.lit(1.0))
    return frame


def load_pairs(dataset: str | Path) -> pl.DataFrame:
    """``DATASET/pairs.parquet`` validated with ``schemas.pairs.PairsTable``."""
    from schemas.pairs import PairsTable

    path = Path(dataset) / "pairs.parquet"
    if not path.is_file():
        raise InputFileError("pairs.parquet not found", where=str(path),
                             fix="export with `causalrm weights export WH --out DATASET --pairs`")
    return _validate(_read_parquet(path, "pairs.parquet"), PairsTable, "pairs")


def load_scoring_frame(data: str | Path) -> pl.DataFrame:
    """Rows to score with a trained model: a dataset folder (``data.parquet``) or a warehouse
    (``feedback/`` plus ``embeddings/`` when present)."""
    root = Path(data)
    if (root / "data.parquet").is_file():
        return _join_embeddings(_read_parquet(root / "data.parquet", "data.parquet"), root)
    if (root / "feedback").is_dir():
        from feedback_etl.io import read_feedback

        return _join_embeddings(read_feedback(root), root)
    raise InputFileError("neither a weighted dataset (no data.parquet) nor a warehouse (no feedback/)", where=str(root),
                         fix="pass a folder from `causalrm weights export` or `causalrm ingest`")


@dataclass(kw_only=True)
class FeatureSpec:
    """What the head reads and how: fitted on the training split, saved in the model's config.json."""

    embedding_dim: int = 0
    numeric: list[str] = field(default_factory=list)
    numeric_mean: list[float] = field(default_factory=list)
    numeric_std: list[float] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    vocab: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FeatureSpec":
        return cls(**values)

    def cardinalities(self, columns: list[str]) -> list[int]:
        """Vocabulary sizes including the unknown index 0."""
        return [len(self.vocab[c]) + 1 for c in columns]


def _require_columns(frame: pl.DataFrame, columns: list[str], kind: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"{kind} feature column(s) {missing} not in the dataset",
                          fix=f"use columns among {sorted(frame.columns)}")


def fit_feature_spec(train: pl.DataFrame, *, embedding: bool | None, numeric: tuple[str, ...] = (),
                     categorical: tuple[str, ...] = (), ids: tuple[str, ...] = ()) -> FeatureSpec:
    """Fit standardisation and vocabularies on the training rows (shape of the frame: (n, ...))."""
    spec = FeatureSpec(numeric=list(numeric), categorical=list(categorical), ids=list(ids))
    has_embedding = "embedding" in train.columns
    if embedding and not has_embedding:
        raise ConfigError("the dataset has no embeddings", fix="run `causalrm embed` on the warehouse or dataset first")
    if embedding is not False and has_embedding:
        first = train["embedding"].drop_nulls().head(1)
        spec.embedding_dim = len(first[0]) if len(first) else 0
    _require_columns(train, list(numeric), "numeric")
    _require_columns(train, list(categorical) + list(ids), "categorical/ID")
    for column in numeric:
        if not train.schema[column].is_numeric() and train.schema[column] != pl.Boolean:
            raise ConfigError(f"numeric feature {column!r} has type {train.schema[column]}", fix="pass it as categorical")
        values = train[column].cast(pl.Float64)
        mean, std = values.mean(), values.std()
        spec.numeric_mean.append(float(mean) if mean is not None else 0.0)
        spec.numeric_std.append(float(std) if std else 1.0)
    for column in [*categorical, *ids]:
        spec.vocab[column] = sorted(train[column].cast(pl.String).drop_nulls().unique().to_list())
    if not (spec.embedding_dim or spec.numeric or spec.categorical or spec.ids):
        raise ConfigError("no features to train on: the dataset has no embeddings and no feature columns were named",
                          fix="run `causalrm embed` first, or pass --numeric-features / --categorical-features / --id-features")
    return spec


def _index(frame: pl.DataFrame, column: str, vocabulary: list[str]) -> np.ndarray:
    lookup = pl.DataFrame({column: vocabulary, "_index": np.arange(1, len(vocabulary) + 1, dtype=np.int64)},
                          schema={column: pl.String, "_index": pl.Int64})
    indexed = frame.select(pl.col(column).cast(pl.String)).with_row_index("_row").join(lookup, on=column, how="left")
    return indexed.sort("_row")["_index"].fill_null(_UNKNOWN).to_numpy()


def feature_tensors(frame: pl.DataFrame, spec: FeatureSpec) -> dict[str, torch.Tensor]:
    """Model inputs for ``frame`` (n rows): ``embedding`` (n, d) float32, ``numeric`` (n, k) float32
    standardised (nulls -> 0, the training mean), ``categorical`` (n, c) and ``ids`` (n, m) int64
    vocabulary indices (0 = unseen or null)."""
    tensors: dict[str, torch.Tensor] = {}
    if spec.embedding_dim:
        if "embedding" not in frame.columns:
            raise InputFileError("rows to score have no embeddings", fix="run `causalrm embed` on them first")
        if frame["embedding"].null_count():
            raise InputFileError(f"{frame['embedding'].null_count()} rows have no embedding", fix="rerun `causalrm embed`")
        matrix = frame["embedding"].cast(pl.Array(pl.Float32, spec.embedding_dim)).to_numpy()
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        # Arrow-backed arrays are read-only; torch needs a writable buffer.
        tensors["embedding"] = torch.from_numpy(matrix if matrix.flags.writeable else matrix.copy())
    if spec.numeric:
        _require_columns(frame, spec.numeric, "numeric")
        values = frame.select([pl.col(c).cast(pl.Float64) for c in spec.numeric]).to_numpy()
        standardised = (values - np.array(spec.numeric_mean)) / np.array(spec.numeric_std)
        tensors["numeric"] = torch.from_numpy(np.nan_to_num(standardised, nan=0.0).astype(np.float32))
    for key, columns in (("categorical", spec.categorical), ("ids", spec.ids)):
        if columns:
            _require_columns(frame, columns, "categorical/ID")
            tensors[key] = torch.from_numpy(np.stack([_index(frame, c, spec.vocab[c]) for c in columns], axis=1))
    return tensors


def target_tensors(frame: pl.DataFrame) -> dict[str, torch.Tensor]:
    """Loss inputs of shape (n,), float32: r (``label``, 0 where unobserved), o, w, rho01, rho10."""
    columns = frame.select(
        label=pl.col("label").cast(pl.Float32).fill_null(0.0),
        observed=pl.col("observed").cast(pl.Float32),
        weight=pl.col("weight").cast(pl.Float32),
        rho01=pl.col("rho01").cast(pl.Float32),
        rho10=pl.col("rho10").cast(pl.Float32),
    )
    return {name: torch.from_numpy(columns[name].to_numpy().copy()) for name in TARGET_COLUMNS}


class TensorRows(torch.utils.data.Dataset):
    """Rows held as tensors; indexing with a batch of indices returns the whole batch at once (one
    gather per tensor instead of per-row collation: the loader's overhead stays negligible)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        sizes = {t.shape[0] for t in tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"tensors disagree on the number of rows: {sizes}")
        self.tensors = tensors
        self.n = sizes.pop()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: Any) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}


class ShuffledBatches(torch.utils.data.Sampler):
    """Index batches of one seeded permutation per epoch; under DDP, this rank's share of each batch.

    ``batch_size`` is the GLOBAL batch (rows per optimiser step summed over ranks). Every rank draws the
    same permutation as a single process would and takes the interleaved share ``batch[rank::world_size]``
    of each global batch, so the union of the ranks' step-t batches is exactly the single process's
    step-t batch, every rank takes the same number of steps (one per global batch, the last one
    possibly short), and a rank's rows sit at known positions of the global batch (see
    :meth:`global_rows`; the trainer's dropout uses them). The default (rank 0 of 1) is the
    single-process sampler, unchanged.
    """

    def __init__(self, n: int, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ConfigError(f"batch size {batch_size} is not divisible by the world size {world_size}",
                              fix=f"pass a --batch-size that is a multiple of {world_size} (it is the global batch)")
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        batches = order.split(self.batch_size)
        if self.world_size == 1:
            return iter(batches)
        return (batch[self.rank :: self.world_size] for batch in batches)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def global_rows(self, step: int) -> int:
        """Rows of the global batch ``step`` (all ranks together): ``batch_size`` except for the last."""
        return min(self.batch_size, self.n - step * self.batch_size)
