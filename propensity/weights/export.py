"""Weighted-dataset export: the handoff from propensity / noise estimation to a reward-model trainer.

``export_weighted_dataset(cfg)`` joins the feedback table, the channel's propensities
(``WH/propensity/scores.parquet``), its noise rates (``WH/noise.json`` / ``WH/noise/<channel>.json``)
and, when present, text embeddings, and writes ``DATASET/``:

* ``data.parquet`` (or ``data.jsonl``): one row per exposure, observed or not, validated against
  :class:`schemas.weighted_dataset.WeightedDataset` (CausalRM's losses average over *all*
  exposures, with weight 0 on unobserved rows);
* ``manifest.json``: everything else a trainer needs (see :func:`export_weighted_dataset`);
* ``pairs.parquet`` (with ``pairs=True``): Bradley-Terry pairs, :class:`schemas.pairs.PairsTable`;
* ``pairs_trl/{train,val,test}.parquet`` (with ``pairs_format="trl"``, beside ``pairs.parquet``): the
  same pairs as TRL's RewardTrainer reads them, ``prompt / chosen / rejected`` (:func:`trl_pairs`).

Weights (o observed indicator, p propensity, N_s exposures of split s)::

    ips          w = o / p
    clipped-ips  w = o / max(p, clip)
    snips        w = o / p * N_s / sum_{j in s} o_j / p_j

so that the plain mean of ``weight * loss`` over the rows of a split is the IPS, clipped-IPS or
self-normalised IPS estimate of the loss over all exposures of that split.

``read_weighted_dataset(path)`` re-validates on read; the trainer calls it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from propensity.diagnostics import kish_ess
from propensity.io import json_safe, metrics_path, read_metrics, read_scores, replace_dir, scores_path
from propensity.noise.estimate import noise_path, read_noise
from schemas.errors import ConfigError, IdentifiabilityError, InputFileError, WarehouseError
from schemas.feedback import CHANNELS, CONTEXT_CATEGORICAL, CONTEXT_NUMERIC, SPLITS
from schemas.pairs import PairsTable
from schemas.validation import validate_table
from schemas.weighted_dataset import SCHEMA_VERSION, WeightedDataset

log = logging.getLogger(__name__)

SCHEMES: tuple[str, ...] = ("ips", "snips", "clipped-ips")
FORMATS: tuple[str, ...] = ("parquet", "jsonl")
#: ``pairs_format``: ``causalrm`` writes pairs.parquet; ``trl`` writes it and pairs_trl/ beside it (issue 21).
PAIRS_FORMATS: tuple[str, ...] = ("causalrm", "trl")
DEFAULT_CLIP = 0.05
# Implicit channels carry one polarity only: a copy or a share says "good", a regenerate "bad".
# Their rows get observed = the channel's flag and this constant label (docs/weights.md, "Channels").
IMPLICIT_LABEL: dict[str, int] = {"copy": 1, "share": 1, "regenerate": 0}

PAIR_WEIGHT_FORMULA = (
    "ips: f / (p_chosen * p_rejected); clipped-ips: f / (max(p_chosen, clip) * max(p_rejected, clip)); "
    "snips: the ips pair weights scaled so that they average 1 over the pairs of each split; "
    "f = candidate pairs / sampled pairs of the prompt (1 unless the prompt hit max_pairs_per_prompt)"
)
PAIR_FLIP_FORMULA = (
    "P(clean order reversed | observed) + P(clean labels tied | observed) / 2, posterior over the two rows' clean labels "
    "with prior pi = P(r* = 1 | observed row) = (mean vote - rho10) / (1 - rho01 - rho10) per (rho01, rho10) segment; "
    "the trainer's Bradley-Terry target is 1 - flip_probability"
)
WEIGHT_FORMULA = {
    "ips": "o / p",
    "clipped-ips": "o / max(p, clip)",
    "snips": "o / p * N_split / sum_{j in split} o_j / p_j (observed weights of a split sum to its row count)",
}


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """What ``causalrm weights export`` writes. Mirrors its options one to one.

    Parameters
    ----------
    warehouse : warehouse folder holding ``feedback/``, ``propensity/`` and ``noise.json``.
    out : dataset folder to write (replaced when it holds an earlier export).
    channel : feedback channel (``schemas.feedback.CHANNELS``).
    scheme : ``ips``, ``snips`` or ``clipped-ips``.
    clip : propensity floor for ``clipped-ips`` (default 0.05); not allowed with the other schemes.
    format : ``parquet`` or ``jsonl`` (rows and pairs; the manifest is JSON either way).
    pairs : also write Bradley-Terry pairs.
    max_pairs_per_prompt : cap on pairs per (prompt, split); larger prompts are subsampled and
        their pair weights scaled up by the inverse sampling rate.
    no_noise : export with rho01 = rho10 = 0 when no noise estimate exists (recorded in the manifest).
        Implicit channels always get 0: they are one-class, so no flip rates are defined.
    segment_noise : when the estimate has per-segment rates (``noise estimate --segment-by``), give
        each row its segment's rates (the overall ones where a segment is not identified).
    seed : seed of the pair subsampling.
    pairs_format : ``causalrm`` (``pairs.parquet``) or ``trl`` (also ``pairs_trl/``, see :func:`trl_pairs`).
    propensity : ``context`` (``scores.parquet``, P(o=1 | x)) or ``label-aware``
        (``scores_label_aware.parquet``, P(o=1 | x, r) from ``causalrm propensity fit-label-aware``:
        an organic vote's propensity at its own label, a solicited one's the slice response rate).
    max_rows : feedback rows the export may hold in memory (None: what ``memory_limit`` allows). A
        larger table is streamed: DuckDB joins and sorts it out of core and the rows are written
        batch by batch, with the same output (issue 23, :func:`export_plan`).
    memory_limit : memory budget (``4GB``, ``512MB``), turned into rows as ``propensity fit`` does.
    batch_rows : rows per batch when streaming.
    """

    warehouse: str
    out: str
    channel: str = "vote"
    scheme: str = "ips"
    clip: float | None = None
    format: str = "parquet"
    pairs: bool = False
    max_pairs_per_prompt: int = 1000
    no_noise: bool = False
    segment_noise: bool = True
    seed: int = 0
    propensity: str = "context"
    pairs_format: str = "causalrm"
    as_of: str | None = None
    max_rows: int | None = None
    memory_limit: str = "4GB"
    batch_rows: int = 200_000

    def __post_init__(self) -> None:
        where = "weights export config"
        if self.as_of is not None:
            from feedback_etl.warehouse import parse_version

            parse_version(self.as_of)  # ConfigError naming --as-of
        if self.propensity not in ("context", "label-aware"):
            raise ConfigError(f"unknown propensity kind {self.propensity!r}", where=where, fix="use context or label-aware")
        if self.propensity == "label-aware" and self.channel != "vote":
            raise ConfigError("label-aware propensities exist for the vote channel only", where=where,
                              fix="use --propensity context for implicit channels")
        if self.channel not in CHANNELS:
            raise ConfigError(f"unknown channel {self.channel!r}", where=where, fix=f"use one of {', '.join(CHANNELS)}")
        if self.scheme not in SCHEMES:
            raise ConfigError(f"unknown weighting scheme {self.scheme!r}", where=where, fix=f"use one of {', '.join(SCHEMES)}")
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}", where=where, fix="use parquet or jsonl")
        if self.clip is not None:
            if self.scheme != "clipped-ips":
                raise ConfigError(
                    f"--clip only applies to --scheme clipped-ips (got --scheme {self.scheme})", where=where,
                    fix="drop --clip or pass --scheme clipped-ips",
                )
            if not 0 < self.clip < 1:
                raise ConfigError(f"clip must be in (0, 1), got {self.clip}", where=where, fix="pass e.g. --clip 0.05")
        if self.max_pairs_per_prompt < 1:
            raise ConfigError("max_pairs_per_prompt must be >= 1", where=where)
        if self.pairs_format not in PAIRS_FORMATS:
            raise ConfigError(f"unknown pairs format {self.pairs_format!r}", where=where, fix="use causalrm or trl")
        if self.pairs_format != "causalrm" and not self.pairs:
            raise ConfigError(f"--pairs-format {self.pairs_format} needs --pairs", where=where, fix="add --pairs")
        if self.max_rows is not None and self.max_rows < 1:
            raise ConfigError(f"max_rows must be >= 1, got {self.max_rows}", where="--max-rows", fix="use e.g. --max-rows 2000000")
        if self.batch_rows < 1:
            raise ConfigError(f"batch_rows must be >= 1, got {self.batch_rows}", where="batch_rows")
        from feedback_etl.sizes import parse_memory

        parse_memory(self.memory_limit)
        if Path(self.out).resolve() == Path(self.warehouse).resolve():
            raise ConfigError("the dataset folder cannot be the warehouse itself", where=self.out, fix="pass another --out")

    @property
    def effective_clip(self) -> float | None:
        """The propensity floor the weights use (None for ips / snips)."""
        if self.scheme == "clipped-ips":
            return self.clip if self.clip is not None else DEFAULT_CLIP
        return None


# --------------------------------------------------------------------------- pure computations


def compute_weights(
    propensity: np.ndarray, observed: np.ndarray, split: np.ndarray | None = None, *, scheme: str = "ips", clip: float | None = None
) -> np.ndarray:
    """Per-exposure weights under a scheme.

    Parameters
    ----------
    propensity : array of shape (n_exposures,), values in (0, 1].
    observed : bool array of shape (n_exposures,).
    split : array of shape (n_exposures,) of split names; snips normalises within each split
        (None: one group).
    scheme : ``ips`` (o / p), ``clipped-ips`` (o / max(p, clip)) or ``snips``
        (o / p * N_s / sum_{j in s} o_j / p_j, so a split's observed weights sum to its row count N_s).
    clip : floor for ``clipped-ips`` (default 0.05).

    Returns
    -------
    array of shape (n_exposures,): 0 on unobserved rows, > 0 on observed ones.
    """
    p = np.asarray(propensity, dtype=np.float64)
    o = np.asarray(observed, dtype=bool)
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown weighting scheme {scheme!r}", fix=f"use one of {', '.join(SCHEMES)}")
    if scheme == "clipped-ips":
        p = np.maximum(p, DEFAULT_CLIP if clip is None else clip)
    w = np.where(o, 1.0 / p, 0.0)
    if scheme == "snips":
        groups = np.zeros(len(w), dtype=np.int64) if split is None else np.unique(np.asarray(split), return_inverse=True)[1]
        for g in np.unique(groups):
            rows = groups == g
            total = w[rows].sum()
            if total > 0:
                w[rows] *= rows.sum() / total
    return w


def pair_order_posterior(
    rho01_chosen: np.ndarray | float, rho10_chosen: np.ndarray | float, rho01_rejected: np.ndarray | float,
    rho10_rejected: np.ndarray | float, prior_chosen: np.ndarray | float = 0.5, prior_rejected: np.ndarray | float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """(P(clean order reversed | observed), P(clean labels tied | observed)) for pairs observed as
    (chosen r = 1, rejected r = 0). Arrays of shape (n_pairs,).

    With prior pi = P(r* = 1) for each row (among observed rows) and independent flips, the four clean
    label pairs (r*_c, r*_r) have posterior weights::

        (1, 0): pi_c (1 - rho01_c) (1 - pi_r) (1 - rho10_r)      right order
        (0, 1): (1 - pi_c) rho10_c pi_r rho01_r                  reversed
        (1, 1): pi_c (1 - rho01_c) pi_r rho01_r                  tied
        (0, 0): (1 - pi_c) rho10_c (1 - pi_r) (1 - rho10_r)      tied

    Pairs are *selected* on their observed labels, so this posterior (not a forward flip rate given
    the true order) is what makes the pair loss unbiased for the clean Bradley-Terry target (issue 15).
    """
    r01c, r10c, r01r, r10r, pi_c, pi_r = (np.asarray(x, dtype=np.float64) for x in (
        rho01_chosen, rho10_chosen, rho01_rejected, rho10_rejected, prior_chosen, prior_rejected))
    right = pi_c * (1 - r01c) * (1 - pi_r) * (1 - r10r)
    reversed_ = (1 - pi_c) * r10c * pi_r * r01r
    tied = pi_c * (1 - r01c) * pi_r * r01r + (1 - pi_c) * r10c * (1 - pi_r) * (1 - r10r)
    total = right + reversed_ + tied
    return reversed_ / total, tied / total


def pair_flip_probability(
    rho01_chosen: np.ndarray | float, rho10_chosen: np.ndarray | float, rho01_rejected: np.ndarray | float,
    rho10_rejected: np.ndarray | float, prior_chosen: np.ndarray | float = 0.5, prior_rejected: np.ndarray | float = 0.5,
) -> np.ndarray:
    """epsilon = P(reversed | observed) + P(tied | observed) / 2 (:func:`pair_order_posterior`): one
    minus the posterior mean of the clean pair target y* = (r*_c - r*_r + 1) / 2 in {0, 1/2, 1}, which
    the trainer uses as the Bradley-Terry soft label 1 - epsilon (``rm_train.losses.pair_loss``).
    < 0.5 whenever rho01 + rho10 < 1 and both rows share the prior. Arrays of shape (n_pairs,).
    """
    reversed_, tied = pair_order_posterior(rho01_chosen, rho10_chosen, rho01_rejected, rho10_rejected,
                                           prior_chosen, prior_rejected)
    return reversed_ + tied / 2


def _clean_positive_rate(observed: pl.DataFrame) -> pl.DataFrame:
    """pi = P(r* = 1 | observed) per (rho01, rho10) segment: (mean vote - rho10) / (1 - rho01 - rho10),
    kept in [0.01, 0.99] (the prior of :func:`pair_order_posterior`)."""
    return observed.group_by("rho01", "rho10").agg(_vote_rate=pl.col("label").cast(pl.Float64).mean()).with_columns(
        prior=((pl.col("_vote_rate") - pl.col("rho10")) / (1 - pl.col("rho01") - pl.col("rho10"))).clip(0.01, 0.99)
    ).drop("_vote_rate")


def weight_summary(weights: np.ndarray, observed: np.ndarray, propensity: np.ndarray, floor: float | None) -> dict[str, Any]:
    """ESS, ESS / n_observed, max, quantiles and clipped share of the observed rows' weights."""
    o = np.asarray(observed, dtype=bool)
    w = np.asarray(weights, dtype=np.float64)[o]
    p = np.asarray(propensity, dtype=np.float64)[o]
    n_obs = int(o.sum())
    ess = kish_ess(w)
    clipped = int((p <= floor * (1 + 1e-9)).sum()) if floor else 0
    q = np.quantile(w, [0.5, 0.9, 0.99]) if n_obs else [math.nan] * 3
    return {
        "n_observed": n_obs,
        "ess": ess,
        "ess_over_n": ess / n_obs if n_obs else 0.0,
        "max": float(w.max()) if n_obs else 0.0,
        "mean": float(w.mean()) if n_obs else 0.0,
        "p50": float(q[0]),
        "p90": float(q[1]),
        "p99": float(q[2]),
        "floor": floor,
        "clipped": clipped,
        "clipped_share": clipped / n_obs if n_obs else 0.0,
    }


def build_weighted_frame(
    feedback: pl.DataFrame,
    scores: pl.DataFrame,
    *,
    channel: str,
    scheme: str,
    clip: float | None,
    rho01: float,
    rho10: float,
    embeddings: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The dataset rows (pure): feedback x propensities x noise rates (x embeddings).

    Parameters
    ----------
    feedback : the validated feedback table, one row per exposure.
    scores : (exposure_id, propensity) for the channel, one row per exposure.
    channel : ``vote`` (observed / label from the vote) or an implicit channel (observed = its
        flag, label = its polarity, ``IMPLICIT_LABEL``).
    embeddings : (exposure_id, embedding) or None.

    Raises
    ------
    WarehouseError : some exposures have no propensity (or no embedding).
    """
    frame = feedback.join(scores.select("exposure_id", "propensity"), on="exposure_id", how="left")
    missing = frame["propensity"].null_count()
    if missing:
        sample = frame.filter(pl.col("propensity").is_null())["exposure_id"].head(3).to_list()
        raise _missing_propensity(missing, frame.height, sample, channel)
    frame = weighted_rows(frame, channel=channel, scheme=scheme, clip=clip, rho01=rho01, rho10=rho10)
    if embeddings is not None:
        frame = frame.join(embeddings.select("exposure_id", "embedding"), on="exposure_id", how="left")
        lacking = frame["embedding"].null_count()
        if lacking:
            raise _lacking_embeddings(lacking, frame.height)
    return frame.sort("exposure_id")


def _missing_propensity(missing: int, total: int, sample: list[str], channel: str) -> WarehouseError:
    return WarehouseError(
        f"{missing:,} of {total:,} exposures have no {channel!r} propensity (e.g. {sample})",
        where="propensity/scores.parquet",
        fix=f"rerun `causalrm propensity fit WH --channel {channel}` after the latest ingest",
    )


def _lacking_embeddings(lacking: int, total: int) -> WarehouseError:
    return WarehouseError(
        f"{lacking:,} of {total:,} exposures have no embedding", where="embeddings/",
        fix="rerun `causalrm embed WH` after the latest ingest (or remove WH/embeddings to export without)",
    )


def weighted_rows(
    frame: pl.DataFrame, *, channel: str, scheme: str, clip: float | None, rho01: float, rho10: float,
    snips_scale: dict[str, float] | None = None,
) -> pl.DataFrame:
    """Feedback rows with their ``propensity`` -> dataset rows (pure): observed / label / channel,
    weight, rho01 / rho10, the dataset's columns in order (``embedding`` last when present).

    Parameters
    ----------
    snips_scale : for ``snips`` on a batch of a larger table (issue 23): N_s / sum_{j in s} o_j / p_j
        per split, computed over the whole table; the batch's weights are o / p times it. None:
        normalise within ``frame`` (:func:`compute_weights`).
    """
    if channel == "vote":
        observed, label = pl.col("observed"), pl.col("label")
    else:
        observed = pl.col(CHANNELS[channel])
        label = pl.when(observed).then(pl.lit(IMPLICIT_LABEL[channel]))
    frame = frame.with_columns(observed=observed, label=label.cast(pl.Int8), channel=pl.lit(channel))
    propensity, observed_rows, split = frame["propensity"].to_numpy(), frame["observed"].to_numpy(), frame["split"].to_numpy()
    if snips_scale is None:
        weights = compute_weights(propensity, observed_rows, split, scheme=scheme, clip=clip)
    else:
        # compute_weights' snips is w = o / p, then w *= N_s / total_s: the same two operations.
        weights = compute_weights(propensity, observed_rows, scheme="ips")
        weights = weights * frame["split"].replace_strict(snips_scale, default=1.0, return_dtype=pl.Float64).to_numpy()
    frame = frame.with_columns(
        weight=pl.Series(weights, dtype=pl.Float64),
        rho01=pl.lit(float(rho01), dtype=pl.Float64),
        rho10=pl.lit(float(rho10), dtype=pl.Float64),
    )
    columns = [
        "exposure_id", "user_id", "prompt_id", "response_id", "channel", "split", "observed", "label",
        "propensity", "weight", "rho01", "rho10", "solicited", "prompt_text", "response_text",
        *CONTEXT_CATEGORICAL, *CONTEXT_NUMERIC,
    ]
    return frame.select(columns + (["embedding"] if "embedding" in frame.columns else []))


def build_pairs(
    frame: pl.DataFrame, *, scheme: str, clip: float | None, max_pairs_per_prompt: int = 1000, seed: int = 0
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Bradley-Terry pairs (pure) from the dataset rows.

    Candidates are pairs of observed exposures of the same prompt and split showing different
    responses. Pairs whose observed labels tie carry no order and are dropped (counted in the
    returned summary); the rest become (chosen = label 1, rejected = label 0). A prompt with more
    than ``max_pairs_per_prompt`` label-differing pairs keeps a seeded random subset of its chosen
    and rejected rows, and its pair weights are multiplied by the inverse inclusion probability so
    the weighted pair loss stays unbiased.

    Returns
    -------
    (pairs frame per :class:`schemas.pairs.PairsTable`, summary dict for the manifest)
    """
    observed = frame.filter(pl.col("observed")).sort("exposure_id")
    keep = ["prompt_id", "split", "exposure_id", "response_id", "label", "propensity", "rho01", "rho10", "prompt_text", "response_text"]
    sides = observed.select(keep).join(_clean_positive_rate(observed), on=["rho01", "rho10"], how="left")
    rng = np.random.default_rng(seed)
    sides = sides.with_columns(_key=pl.Series(rng.random(sides.height)))
    group = ["prompt_id", "split"]
    n_side = sides.group_by(group).agg(
        n1=(pl.col("label") == 1).sum().cast(pl.Int64), n0=(pl.col("label") == 0).sum().cast(pl.Int64)
    )
    cap = max_pairs_per_prompt
    root = int(math.isqrt(cap))
    # Balanced caps: each side keeps k rows so that k1 * k0 <= cap, using the budget a small side leaves.
    n_side = n_side.with_columns(
        k1=pl.min_horizontal(pl.col("n1"), pl.max_horizontal(pl.lit(root), pl.lit(cap) // pl.max_horizontal(pl.col("n0"), pl.lit(1))))
    ).with_columns(k0=pl.min_horizontal(pl.col("n0"), pl.lit(cap) // pl.max_horizontal(pl.col("k1"), pl.lit(1))))
    sides = sides.join(n_side, on=group).with_columns(_rank=pl.col("_key").rank("ordinal").over([*group, "label"]))
    chosen = sides.filter((pl.col("label") == 1) & (pl.col("_rank") <= pl.col("k1")))
    rejected = sides.filter((pl.col("label") == 0) & (pl.col("_rank") <= pl.col("k0")))
    pairs = chosen.join(rejected.drop("n1", "n0", "k1", "k0", "prompt_text"), on=group, suffix="_rej")
    pairs = pairs.filter(pl.col("response_id") != pl.col("response_id_rej"))
    factor = (pl.col("n1") * pl.col("n0")) / (pl.col("k1") * pl.col("k0"))
    if scheme == "clipped-ips":
        floor = DEFAULT_CLIP if clip is None else clip
        p_c, p_r = pl.max_horizontal("propensity", pl.lit(floor)), pl.max_horizontal("propensity_rej", pl.lit(floor))
    else:
        p_c, p_r = pl.col("propensity"), pl.col("propensity_rej")
    pairs = pairs.with_columns(weight=factor / (p_c * p_r))
    if scheme == "snips":
        pairs = pairs.with_columns(weight=pl.col("weight") / pl.col("weight").mean().over("split"))
    reversed_, tied = pair_order_posterior(
        pairs["rho01"].to_numpy(), pairs["rho10"].to_numpy(), pairs["rho01_rej"].to_numpy(), pairs["rho10_rej"].to_numpy(),
        pairs["prior"].to_numpy(), pairs["prior_rej"].to_numpy(),
    )
    flip = reversed_ + tied / 2
    channel = frame["channel"][0] if frame.height else "vote"
    pairs = pairs.with_columns(flip_probability=pl.Series(flip, dtype=pl.Float64)).select(
        pair_id=pl.col("exposure_id") + "~" + pl.col("exposure_id_rej"),
        prompt_id="prompt_id",
        split="split",
        channel=pl.lit(channel),
        chosen_exposure_id="exposure_id",
        rejected_exposure_id="exposure_id_rej",
        chosen_response_id="response_id",
        rejected_response_id="response_id_rej",
        prompt_text="prompt_text",
        chosen_text="response_text",
        rejected_text="response_text_rej",
        chosen_propensity="propensity",
        rejected_propensity="propensity_rej",
        weight="weight",
        flip_probability="flip_probability",
    ).sort("pair_id")
    # Candidate and tie counts (before subsampling) in closed form, so huge prompts cost no join:
    # candidates = C(n, 2) - sum_r C(m_r, 2) (pairs showing two different responses), of which
    # label-differing = n1 n0 - sum_r m_r1 m_r0; the rest are ties.
    per_response = observed.group_by([*group, "response_id"]).agg(
        m1=(pl.col("label") == 1).sum().cast(pl.Int64), m0=(pl.col("label") == 0).sum().cast(pl.Int64)
    ).group_by(group).agg(
        same=((pl.col("m1") + pl.col("m0")) * (pl.col("m1") + pl.col("m0") - 1) // 2).sum(),
        same_diff=(pl.col("m1") * pl.col("m0")).sum(),
    )
    counts = n_side.join(per_response, on=group).select(
        candidates=((pl.col("n1") + pl.col("n0")) * (pl.col("n1") + pl.col("n0") - 1) // 2 - pl.col("same")).sum(),
        differing=(pl.col("n1") * pl.col("n0") - pl.col("same_diff")).sum(),
    )
    n_candidates = int(counts["candidates"][0] or 0)
    n_ties = n_candidates - int(counts["differing"][0] or 0)
    subsampled = n_side.filter((pl.col("k1") < pl.col("n1")) | (pl.col("k0") < pl.col("n0"))).height
    summary = {
        "rows": pairs.height,
        "rows_by_split": {s: int((pairs["split"] == s).sum()) for s in SPLITS},
        "candidate_pairs": n_candidates,
        "tied_pairs_dropped": n_ties,
        "prompts_subsampled": subsampled,
        "max_pairs_per_prompt": cap,
        "weight_formula": PAIR_WEIGHT_FORMULA,
        "flip_probability_formula": PAIR_FLIP_FORMULA,
        # Expected shares of the exported pairs whose clean labels tie / are in the reverse order (issue 15).
        "expected_tied_share": float(tied.mean()) if pairs.height else None,
        "expected_misordered_share": float(reversed_.mean()) if pairs.height else None,
        "ess": kish_ess(pairs["weight"].to_numpy()),
        "max_weight": float(pairs["weight"].max()) if pairs.height else 0.0,
    }
    return pairs, summary


# --------------------------------------------------------------------------- validation




def validate_weighted_dataset(frame: pl.DataFrame) -> pl.DataFrame:
    """Validate (and coerce) dataset rows against :class:`WeightedDataset`."""
    return validate_table(frame, WeightedDataset, "weighted_dataset")


def validate_pairs(frame: pl.DataFrame) -> pl.DataFrame:
    """Validate (and coerce) pairs against :class:`PairsTable`."""
    return validate_table(frame, PairsTable, "pairs")


def trl_pairs(pairs: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The pairs as TRL's RewardTrainer reads them (pure): one frame per split with ``prompt``,
    ``chosen``, ``rejected`` (issue 21).

    TRL tokenises ``prompt + chosen`` and ``prompt + rejected``, so ``prompt`` carries the training
    template's separator (``feedback_etl.embed.TEXT_TEMPLATE``, ``"{prompt}\n\n{response}"``): the
    texts TRL scores are exactly the ones causalrm trains and scores on. Pair weights and flip
    probabilities are dropped (TRL has no per-sample weight), and so is ``margin``: labels are
    binary, so a pair carries an order, not a size of preference. Splits with no pairs are omitted.

    Raises
    ------
    ConfigError : a pair lacks its response text (ingested with ``--text hash`` or ``drop``).
    """
    from feedback_etl.embed import TEXT_TEMPLATE

    prefix = TEXT_TEMPLATE[: TEXT_TEMPLATE.index("{response}")]
    hashed = pl.col("chosen_text").is_null() | pl.col("rejected_text").is_null()
    for column in ("chosen_text", "rejected_text"):
        hashed = hashed | pl.col(column).str.starts_with("sha256:") | pl.col(column).str.starts_with("hmac-sha256:")
    lacking = pairs.filter(hashed).height
    if lacking:
        raise ConfigError(f"{lacking:,} of {pairs.height:,} pairs have no response text, which TRL pairs need",
                          where="pairs_trl", fix="ingest with --text keep, or export without --pairs-format trl")
    frame = pairs.select(
        "split",
        prompt=pl.format(prefix.replace("{prompt}", "{}"), pl.col("prompt_text").fill_null("")),
        chosen="chosen_text",
        rejected="rejected_text",
    )
    return {split: frame.filter(pl.col("split") == split).drop("split") for split in SPLITS
            if frame.filter(pl.col("split") == split).height}


# --------------------------------------------------------------------------- warehouse inputs


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_scores(warehouse: Path, channel: str) -> pl.DataFrame:
    """The channel's propensities (``propensity.io.read_scores``), checked to lie in (0, 1]."""
    scores = read_scores(warehouse, channel)
    bad = scores.filter(~pl.col("propensity").is_between(0, 1, closed="right") | pl.col("propensity").is_null())
    if bad.height:
        raise InputFileError(
            f"{bad.height:,} propensities outside (0, 1] (e.g. {bad['propensity'].head(3).to_list()})",
            where=str(scores_path(warehouse)), fix="refit with a clipping floor > 0 (`causalrm propensity fit --clip 0.05`)",
        )
    return scores.unique("exposure_id", keep="last")


def _noise_path(warehouse: Path, channel: str) -> Path | None:
    """The file ``propensity.noise.estimate.read_noise`` reads for the channel, or None when there is none."""
    candidates = [noise_path(warehouse, channel)] + ([warehouse / "noise.json"] if channel == "vote" else [])
    return next((p for p in candidates if p.is_file()), None)


def _read_noise(warehouse: Path, channel: str) -> dict[str, Any] | None:
    """The channel's noise estimate (``propensity.noise.estimate.read_noise``), checked, or None when there is none."""
    path = _noise_path(warehouse, channel)
    if path is None:
        return None
    try:
        noise = read_noise(warehouse, channel)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(f"cannot read noise estimate: {exc}", where=str(path), fix="rerun `causalrm noise estimate`") from exc
    for key in ("rho01", "rho10"):
        value = noise.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise InputFileError(f"noise estimate has no valid {key} (got {value!r})", where=str(path), fix="rerun `causalrm noise estimate`")
    return noise


def segment_noise_rates(frame: pl.DataFrame, noise: dict[str, Any], rho01: float, rho10: float) -> tuple[pl.DataFrame, dict[str, Any] | None]:
    """Per-row rho01 / rho10 from the estimate's segments (``segment_by``, ``segment``), falling back
    to the channel's overall rates for rows whose segment has no (identified) estimate.

    Returns the frame with ``rho01`` / ``rho10`` columns and a summary for the manifest (None when
    the estimate has no usable segments).
    """
    segments = [s for s in noise.get("segments") or [] if isinstance(s, dict) and s.get("segment_by") and s.get("segment") is not None]
    usable = [s for s in segments if all(isinstance(s.get(k), (int, float)) and 0 <= s[k] < 1 for k in ("rho01", "rho10"))
              and s["rho01"] + s["rho10"] < 1]
    by = {s["segment_by"] for s in usable}
    if not usable or len(by) != 1 or next(iter(by)) not in frame.columns:
        return frame.with_columns(rho01=pl.lit(rho01, dtype=pl.Float64), rho10=pl.lit(rho10, dtype=pl.Float64)), None
    column = next(iter(by))
    table = pl.DataFrame(
        {"_segment": [str(s["segment"]) for s in usable], "_rho01": [float(s["rho01"]) for s in usable], "_rho10": [float(s["rho10"]) for s in usable]}
    )
    # propensity.noise.estimate names a missing segment value "<null>".
    key = pl.col(column).cast(pl.Utf8).fill_null("<null>").alias("_segment")
    frame = frame.with_columns(key).join(table, on="_segment", how="left", maintain_order="left")
    fallback = int(frame["_rho01"].null_count())
    frame = frame.with_columns(
        rho01=pl.col("_rho01").fill_null(rho01).cast(pl.Float64), rho10=pl.col("_rho10").fill_null(rho10).cast(pl.Float64)
    ).drop("_segment", "_rho01", "_rho10")
    summary = {"segment_by": column, "segments_used": sorted(table["_segment"].to_list()),
               "segments_skipped": sorted(str(s["segment"]) for s in segments if s not in usable), "rows_on_overall_rates": fallback}
    return frame, summary


def _read_metrics(warehouse: Path, channel: str) -> dict[str, Any] | None:
    """The channel's entry of ``WH/propensity/metrics.json`` (config and diagnostics), or None."""
    if not metrics_path(warehouse).is_file():
        return None
    metrics = read_metrics(warehouse)
    entry = metrics.get(channel)
    if not isinstance(entry, dict):
        log.warning("propensity/metrics.json has no entry for channel %r", channel)
        return None
    return entry


def _fit_clip(metrics: dict[str, Any] | None) -> float | None:
    """The clipping floor the propensity fit used, wherever metrics.json keeps it."""
    if not metrics:
        return None
    for holder in (metrics, metrics.get("config") or {}, metrics.get("clipping") or {}):
        for key in ("clip", "clip_floor", "floor"):
            value = holder.get(key) if isinstance(holder, dict) else None
            if isinstance(value, (int, float)) and 0 < value < 1:
                return float(value)
    return None


def _input_files(warehouse: Path, channel: str, feedback: list[Path]) -> list[Path]:
    """Files the export read: the feedback version's data files, scores, metrics, noise, embeddings."""
    files = sorted(feedback)
    files += [warehouse / "propensity" / "scores.parquet", warehouse / "propensity" / "metrics.json"]
    files += [warehouse / "propensity" / name for name in ("scores_label_aware.parquet", "label_aware.json", "slice.parquet")]
    noise = _noise_path(warehouse, channel)
    if noise:
        files.append(noise)
    files += sorted((warehouse / "embeddings").glob("*.parquet"))
    # `propensity score --layout partitioned` leaves scores.parquet as a folder of parts.
    files = [part for f in files for part in (sorted(f.rglob("*.parquet")) if f.is_dir() else [f])]
    return [f for f in files if f.exists()]


# --------------------------------------------------------------------------- export / read


def _write_table(frame: pl.DataFrame, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        frame.write_parquet(path, statistics=True)
    else:
        frame.write_ndjson(path)


def _previous_embedding_dim(out: Path) -> int | None:
    """``columns.embedding_dim`` of the dataset ``out`` holds now, if any."""
    try:
        return json.loads((out / "manifest.json").read_text(encoding="utf-8"))["columns"]["embedding_dim"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _prepare_out(out: Path) -> Path:
    """A fresh staging folder beside ``out``; refuse to replace a folder that is not a dataset."""
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise ConfigError(
            "output folder exists, is not empty and holds no earlier dataset", where=str(out), fix="pass an empty or new --out folder"
        )
    staging = out.parent / f".{out.name}.staging-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def export_weighted_dataset(cfg: ExportConfig) -> dict[str, Any]:
    """Write ``cfg.out/`` (data, manifest, optional pairs) and return the manifest.

    Manifest fields: ``schema_version``, ``created_at``, ``channel``, ``label_source``, ``format``,
    ``files`` (names of data / pairs files), ``columns`` (feature columns, embedding dim),
    ``input`` (warehouse path, sha256 of every input file), ``propensity`` (fit config and
    diagnostics from metrics.json, clip floor), ``noise`` (the estimate with intervals, or
    ``assumed_zero``), ``weights`` (scheme, formula, clip, ESS, ESS / n_observed, max, quantiles,
    clipped share, overall and per split), ``rows`` (total, observed, positive, per split) and
    ``pairs`` (when written).

    Raises
    ------
    WarehouseError : missing feedback, scores or noise estimate (without ``no_noise``).
    IdentifiabilityError : rho01 + rho10 >= 1.
    TableValidationError : the rows break the WeightedDataset contract.
    """
    from feedback_etl.io import feedback_dataset, feedback_files, read_embeddings, read_feedback, warehouse_versions

    warehouse = Path(cfg.warehouse)
    out = Path(cfg.out)
    # The warehouse tables' versions, pinned (issue 16): --as-of rebuilds a past dataset exactly.
    table_versions = warehouse_versions(warehouse, as_of=cfg.as_of)
    dataset = feedback_dataset(warehouse, version=table_versions["feedback"])
    plan = export_plan(dataset.count_rows(), cfg)
    feedback = scores = None
    if not plan.streamed:
        feedback = read_feedback(warehouse, version=table_versions["feedback"])
        scores = _read_scores(warehouse, cfg.channel)
    metrics = _read_metrics(warehouse, cfg.channel)
    label_aware = None
    if cfg.propensity == "label-aware":
        # Issue 11: P(o=1 | x, r) at each row's own vote (propensity.slice.label_aware).
        from propensity.slice.label_aware import propensity_for_labels, read_label_aware_report, read_label_aware_scores

        if not plan.streamed:
            scores = propensity_for_labels(read_label_aware_scores(warehouse, cfg.channel), feedback)
        label_aware = read_label_aware_report(warehouse)
    # Implicit channels are one-class (propensity.noise.estimate refuses them): no flip rates are defined.
    implicit = cfg.channel != "vote"
    noise = None if implicit else _read_noise(warehouse, cfg.channel)
    if noise is None and not (cfg.no_noise or implicit):
        raise WarehouseError(
            f"no noise estimate for channel {cfg.channel!r}",
            where=str(noise_path(warehouse, cfg.channel)),
            fix=f"run `causalrm noise estimate {warehouse} --channel {cfg.channel}`, or pass --no-noise to export with rho01 = rho10 = 0",
        )
    rho01, rho10 = (float(noise["rho01"]), float(noise["rho10"])) if noise else (0.0, 0.0)
    if rho01 + rho10 >= 1:
        raise IdentifiabilityError(
            f"rho01 + rho10 = {rho01 + rho10:.3f} >= 1: the noise-corrected loss is undefined",
            where=str(_noise_path(warehouse, cfg.channel)), fix="re-estimate the noise rates (larger anchor quantile or an audit set)",
        )
    has_embeddings = any((warehouse / "embeddings").glob("*.parquet"))
    fit_clip = _fit_clip(metrics)
    floor = max(x for x in (fit_clip, cfg.effective_clip, 0.0) if x is not None) or None
    data_file = f"data.{cfg.format}"

    staging = _prepare_out(out)
    try:
        if plan.streamed:
            rows = _write_rows_streamed(cfg, warehouse, feedback_files(warehouse, version=table_versions["feedback"]),
                                        dataset.schema, staging / data_file, noise, rho01, rho10, plan)
        else:
            frame = build_weighted_frame(
                feedback, scores, channel=cfg.channel, scheme=cfg.scheme, clip=cfg.effective_clip, rho01=rho01, rho10=rho10,
                embeddings=read_embeddings(warehouse),
            )
            del feedback, scores
            noise_segments = None
            if noise and cfg.segment_noise:
                frame, noise_segments = segment_noise_rates(frame, noise, rho01, rho10)
            frame = validate_weighted_dataset(frame)
            if frame["observed"].sum() == 0:
                raise _no_observed_rows(cfg.channel, warehouse)
            _write_table(frame, staging / data_file, cfg.format)
            rows = _RowsWritten.of_frame(frame, noise_segments, keep=_observed_columns(cfg.pairs))
            del frame
        by_split = {s: weight_summary(part["weight"].to_numpy(), np.ones(part.height, dtype=bool), part["propensity"].to_numpy(), floor)
                    for s in SPLITS if rows.by_split[s]["rows"]
                    for part in [rows.observed.filter(pl.col("split") == s)]}
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "channel": cfg.channel,
            "label_source": "vote (1 = thumbs up)" if cfg.channel == "vote" else f"implicit: observed = {CHANNELS[cfg.channel]}, label = {IMPLICIT_LABEL[cfg.channel]}",
            "format": cfg.format,
            "files": {"data": data_file, "pairs": f"pairs.{cfg.format}" if cfg.pairs else None},
            "columns": {
                "categorical": list(CONTEXT_CATEGORICAL),
                "numeric": list(CONTEXT_NUMERIC),
                "text": ["prompt_text", "response_text"],
                "embedding_dim": rows.embedding_dim,
            },
            "input": {
                "warehouse": str(warehouse.resolve()),
                "files": {
                    str(p.relative_to(warehouse)): _sha256(p)
                    for p in _input_files(warehouse, cfg.channel, feedback_files(warehouse, version=table_versions["feedback"]))
                },
                "table_versions": table_versions,
                "as_of": cfg.as_of,
            },
            "propensity": {
                "kind": cfg.propensity,
                "source": "propensity/scores.parquet" if label_aware is None else "propensity/scores_label_aware.parquet",
                "fit_clip": fit_clip,
                "metrics": metrics,
                "label_aware": None if label_aware is None else {
                    k: label_aware.get(k) for k in ("estimator", "assumptions", "strata", "label_factors", "slice", "context", "clipping", "estimates", "warnings")
                },
            },
            "noise": (
                {**noise, "assumed_zero": False, "source": str(_noise_path(warehouse, cfg.channel).relative_to(warehouse)),
                 "per_row": rows.noise_segments or "overall rates on every row"}
                if noise
                else {"channel": cfg.channel, "rho01": 0.0, "rho10": 0.0, "assumed_zero": True, "source": None,
                      "note": (f"implicit channel {cfg.channel!r} is one-class: flip rates are undefined, rho01 = rho10 = 0"
                               if implicit else "no noise estimate: exported with --no-noise, rho01 = rho10 = 0")}
            ),
            "weights": {
                "scheme": cfg.scheme,
                "formula": WEIGHT_FORMULA[cfg.scheme],
                "clip": cfg.effective_clip,
                **weight_summary(rows.observed["weight"].to_numpy(), np.ones(rows.observed.height, dtype=bool),
                                 rows.observed["propensity"].to_numpy(), floor),
                "by_split": by_split,
            },
            "rows": {
                "total": rows.total,
                "observed": rows.observed.height,
                "positive": rows.positive,
                "by_split": rows.by_split,
            },
            "pairs": None,
            # Issue 23: whether the rows were read whole or streamed (the output is the same).
            "memory": plan.to_dict(),
            "config": asdict(cfg),
        }
        previous_dim = _previous_embedding_dim(out)
        if not has_embeddings and previous_dim:
            # Issue 16: a failed or deleted `causalrm embed` must not silently drop the column.
            message = (f"exported without an embedding column although the dataset in {out} had {previous_dim}-dim "
                       f"embeddings (WH/embeddings is missing); run `causalrm embed {warehouse}` again first")
            log.warning("weights export: %s", message)
            manifest["warnings"] = [message]
        if cfg.pairs:
            pairs, pair_summary = build_pairs(
                rows.observed, scheme=cfg.scheme, clip=cfg.effective_clip, max_pairs_per_prompt=cfg.max_pairs_per_prompt, seed=cfg.seed
            )
            pairs = validate_pairs(pairs)
            _write_table(pairs, staging / manifest["files"]["pairs"], cfg.format)
            manifest["pairs"] = pair_summary
            if pairs.is_empty():
                log.warning("no prompt has two observed responses with different labels in one split: pairs file is empty")
            if cfg.pairs_format == "trl":
                (staging / "pairs_trl").mkdir()
                files = {}
                for split, table in trl_pairs(pairs).items():
                    # datasets.load_dataset(fmt, data_dir=".../pairs_trl") maps train / val / test to its splits.
                    files[split] = f"pairs_trl/{split}.{cfg.format}"
                    _write_table(table, staging / files[split], cfg.format)
                manifest["files"]["pairs_trl"] = files
        manifest = json_safe(manifest)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        replace_dir(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s rows (%s observed) to %s", manifest["rows"]["total"], manifest["rows"]["observed"], out)
    return manifest


def _no_observed_rows(channel: str, warehouse: Path) -> WarehouseError:
    return WarehouseError(f"channel {channel!r} has no observed rows", where=str(warehouse), fix="check the channel name and the ingest")


def _observed_columns(pairs: bool) -> list[str]:
    """Columns of the observed rows kept for the manifest (and for the pairs, which need their texts)."""
    columns = ["exposure_id", "split", "label", "propensity", "weight"]
    if pairs:
        columns += ["observed", "channel", "prompt_id", "response_id", "rho01", "rho10", "prompt_text", "response_text"]
    return columns


@dataclass(kw_only=True)
class _RowsWritten:
    """What the manifest needs from the written rows: counts, the observed rows (a few columns), the
    embedding dimension and the per-row noise summary."""

    total: int
    positive: int
    by_split: dict[str, dict[str, int]]
    observed: pl.DataFrame
    embedding_dim: int | None
    noise_segments: dict[str, Any] | None

    @classmethod
    def of_frame(cls, frame: pl.DataFrame, noise_segments: dict[str, Any] | None, *, keep: list[str]) -> "_RowsWritten":
        return cls(
            total=frame.height, positive=int((frame["label"] == 1).sum()), by_split=_split_counts(frame),
            observed=frame.filter(pl.col("observed")).select(keep),
            embedding_dim=int(len(frame["embedding"][0])) if "embedding" in frame.columns and frame.height else None,
            noise_segments=noise_segments,
        )


def _split_counts(frame: pl.DataFrame) -> dict[str, dict[str, int]]:
    split = frame["split"]
    return {s: {"rows": int((split == s).sum()), "observed": int((frame["observed"] & (split == s)).sum()),
                "positive": int(((frame["label"] == 1) & (split == s)).sum())} for s in SPLITS}


@dataclass(frozen=True, kw_only=True)
class ExportPlan:
    """Whether ``weights export`` reads the feedback table whole or streams it (issue 23):
    :func:`propensity.models.casecontrol.stream_plan` with the export's options."""

    n_rows: int
    max_rows: int
    streamed: bool  # every row is written either way
    memory_limit: str
    memory_limit_bytes: int
    max_rows_option: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"streamed": self.streamed, "n_rows": self.n_rows, "max_rows": self.max_rows,
                "max_rows_option": self.max_rows_option, "memory_limit": self.memory_limit}


def export_plan(n_rows: int, cfg: ExportConfig) -> ExportPlan:
    """Stream when the table has more rows than ``cfg.max_rows`` or than ``cfg.memory_limit`` holds
    at the fit's bytes per row (the same threshold as ``propensity fit``)."""
    from propensity.models.casecontrol import stream_plan

    return ExportPlan(**stream_plan(n_rows, max_rows=cfg.max_rows, memory_limit=cfg.memory_limit))


class _DataWriter:
    """``data.parquet`` / ``data.jsonl`` written one batch at a time."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self._parquet: Any = None
        self._schema: Any = None
        self._handle: Any = None

    def write(self, frame: pl.DataFrame) -> None:
        if self.fmt == "jsonl":
            if self._handle is None:
                self._handle = self.path.open("wb")
            frame.write_ndjson(self._handle)
            return
        import pyarrow.parquet as pq

        table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
        if self._parquet is None:
            self._schema = table.schema
            self._parquet = pq.ParquetWriter(self.path, self._schema, compression="zstd")
        self._parquet.write_table(table.cast(self._schema))

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._handle is not None:
            self._handle.close()


def _write_rows_streamed(
    cfg: ExportConfig, warehouse: Path, files: list[Path], schema: Any, path: Path, noise: dict[str, Any] | None, rho01: float, rho10: float,
    plan: ExportPlan,
) -> _RowsWritten:
    """Write the dataset rows to ``path`` batch by batch (issue 23): DuckDB joins the feedback table,
    the propensities and the embeddings out of core and sorts by exposure_id; each batch gets its
    weights (snips with the whole table's per-split sums), noise rates and validation, and is
    appended to the file. Only the observed rows' few columns are kept for the manifest and pairs.

    Validation is per batch: a duplicate exposure_id across two batches is not caught here (the
    feedback table's ingest validation guarantees unique ids).
    """
    from propensity.models.casecontrol import detached
    from propensity.weights._stream import joined_inputs

    label_aware = cfg.propensity == "label-aware"
    with joined_inputs(warehouse, files, channel=cfg.channel, label_aware=label_aware,
                       memory_limit_bytes=plan.memory_limit_bytes // 2, n_rows=plan.n_rows, schema=schema) as joined:
        joined.check_scores(str(scores_path(warehouse)))

        def refuse_missing() -> None:
            """A batch lacks a propensity or an embedding: count them over every row and refuse (the
            staging folder is removed, nothing is written)."""
            counts = joined.counts()
            if counts.missing_propensity:
                if label_aware:
                    raise WarehouseError(
                        f"{counts.missing_propensity:,} of {counts.n_rows:,} exposures have no label-aware propensity",
                        where="propensity/scores_label_aware.parquet", fix="rerun `causalrm propensity fit-label-aware WH` after the latest ingest",
                    )
                raise _missing_propensity(counts.missing_propensity, counts.n_rows, counts.missing_sample, cfg.channel)
            if counts.lacking_embedding:
                raise _lacking_embeddings(counts.lacking_embedding, counts.n_rows)

        counts = joined.totals()
        snips_scale = None
        if cfg.scheme == "snips":
            snips_scale = {s: (counts.rows_by_split[s] / total if total > 0 else 1.0) for s, total in counts.inverse_propensity_sum.items()}
        keep = _observed_columns(cfg.pairs)
        writer = _DataWriter(path, cfg.format)
        total = positive = 0
        by_split = {s: {"rows": 0, "observed": 0, "positive": 0} for s in SPLITS}
        observed: list[pl.DataFrame] = []
        embedding_dim: int | None = None
        noise_segments: dict[str, Any] | None = None
        try:
            batches = joined.batches(cfg.batch_rows)
            for batch in batches:
                if batch["propensity"].null_count() or ("embedding" in batch.columns and batch["embedding"].null_count()):
                    batches.close()
                    refuse_missing()
                rows = weighted_rows(batch, channel=cfg.channel, scheme=cfg.scheme, clip=cfg.effective_clip, rho01=rho01, rho10=rho10,
                                     snips_scale=snips_scale)
                del batch
                if noise and cfg.segment_noise:
                    rows, segments = segment_noise_rates(rows, noise, rho01, rho10)
                    if segments is not None:
                        fallback = (noise_segments or {}).get("rows_on_overall_rates", 0)
                        noise_segments = {**segments, "rows_on_overall_rates": fallback + segments["rows_on_overall_rates"]}
                rows = validate_weighted_dataset(rows)
                writer.write(rows)
                if embedding_dim is None and "embedding" in rows.columns:
                    embedding_dim = int(len(rows["embedding"][0]))
                total += rows.height
                positive += int((rows["label"] == 1).sum())
                for s, c in _split_counts(rows).items():
                    by_split[s] = {k: by_split[s][k] + c[k] for k in c}
                observed.append(detached(rows.filter(pl.col("observed")).select(keep)))
        finally:
            writer.close()
    if not any(part.height for part in observed):
        raise _no_observed_rows(cfg.channel, warehouse)
    return _RowsWritten(total=total, positive=positive, by_split=by_split, observed=pl.concat(observed),
                        embedding_dim=embedding_dim, noise_segments=noise_segments)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """``DATASET/manifest.json`` as a dict (``path``: the dataset folder or a file inside it).

    Raises
    ------
    InputFileError : missing or unreadable manifest, or a schema version newer than this code.
    """
    root = Path(path)
    root = root if root.is_dir() else root.parent
    target = root / "manifest.json"
    try:
        manifest = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputFileError("weighted dataset has no manifest.json", where=str(root), fix="export it with `causalrm weights export`") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(f"cannot read manifest: {exc}", where=str(target), fix="re-export the dataset") from exc
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise InputFileError(
            f"dataset schema_version {version!r} is not supported (this code reads <= {SCHEMA_VERSION})",
            where=str(target), fix="upgrade causalrm or re-export the dataset with this version",
        )
    return manifest


def _locate(path: str | Path, kind: str) -> Path:
    root = Path(path)
    if root.is_file():
        return root
    for suffix in FORMATS:
        candidate = root / f"{kind}.{suffix}"
        if candidate.exists():
            return candidate
    raise InputFileError(f"no {kind}.parquet or {kind}.jsonl", where=str(root), fix="export it with `causalrm weights export`")


def _read_table(path: Path) -> pl.DataFrame:
    try:
        if path.suffix == ".jsonl":
            # Whole-file type inference: label is null on the first rows of many files.
            return pl.read_ndjson(path.read_bytes(), infer_schema_length=None)  # bytes: read_ndjson globs a path
        return pl.read_parquet(path, glob=False)
    except Exception as exc:  # polars / pyarrow raise many types for a damaged file
        raise InputFileError(f"cannot read {path.name}: {exc}", where=str(path), fix="re-export the dataset") from exc


def read_weighted_dataset(path: str | Path) -> pl.DataFrame:
    """Read and re-validate a weighted dataset's rows (the trainer's entry point).

    Parameters
    ----------
    path : the dataset folder (``data.parquet`` or ``data.jsonl`` inside) or the data file itself.

    Returns
    -------
    polars frame of shape (n_exposures, n_columns) per :class:`WeightedDataset`.
    """
    target = _locate(path, "data")
    if target.parent.joinpath("manifest.json").exists():
        read_manifest(target.parent)
    return validate_weighted_dataset(_read_table(target))


def read_pairs(path: str | Path) -> pl.DataFrame:
    """Read and re-validate ``DATASET/pairs.parquet`` (or ``.jsonl``): frame per :class:`PairsTable`."""
    target = _locate(path, "pairs")
    return validate_pairs(_read_table(target))
