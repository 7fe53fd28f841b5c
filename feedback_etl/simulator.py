"""Production-like feedback log simulator (the CausalRM paper's protocol, plus production mess).

Per exposure i (one response shown to one user):

* true reward r*_i in [0, 1] from the text pool's teacher, clean label y_true_i ~ Bernoulli(r*_i);
* propensity p_i = c * alpha ** (max r* - r*_i) * m(context_i) * label_effect ** y_true_i, clipped to
  [0.001, 0.98] (label_effect = 1 by default: selection on r* and context only), with c
  solved so that the mean observation rate is ``obs_rate`` (the paper's selection model), and m a
  context modulation by platform, position and response length (``context_effects``) and, with
  ``extra_context``, by three custom context columns the canonical contract lacks: ``plan_tier``
  and ``app_version`` (per user) and ``turn`` (per exposure) -- declare them in a mapping's
  ``[features]`` table or ingest with ``--keep-extra-columns`` (issue 17, docs/features.md); the
  tier also shifts the clean label, P(y_true = 1) = clip(r* + {-0.15, 0, +0.15}, 0, 1);
* observed o_i ~ Bernoulli(p_i) (always 1 on a randomized, solicited slice);
* observed label r_i = y_true_i flipped with rho01 = P(r=0 | r*=1), rho10 = P(r=1 | r*=0);
* implicit channels copy / regenerate / share with their own reward-dependent propensities.

Messiness (``messiness`` = m in [0, 1]) injects, at these rates:

==========================  ===============================================================
exact duplicate events      each event resent with probability 0.05 m (same event_id)
out-of-order delivery       rows shuffled within each written part file when m > 0
vote toggles                observed: 0.3 m get an opposite vote before the final one;
                            unobserved: 0.05 m get up, down, then vote_cleared
late feedback               0.05 m of exposures get a vote after the attribution window
orphan feedback             0.01 m x n_exposures votes on exposure ids with no impression
malformed rows              0.01 m x n_events extra rows: missing ids, bad timestamps,
                            unknown event types (JSONL also gets unparseable lines)
==========================  ===============================================================

Malformed and orphan rows are *extra* rows, so they never change an exposure's true outcome. The
exact counts injected are in ``DIR/simulation.json`` and per exposure in ``DIR/truth.parquet``.

Randomized slice (issue 11, ``randomized_slice`` = F > 0): a fraction F of exposures is marked
``solicited`` on its impression (feedback was asked for at random). A solicited exposure is always
observed, and its vote (the *solicited label*) is noisy like an organic vote (same rho01 / rho10):
it is the user's own thumbs, only asked for. ``DIR/slice.parquet`` lists the slice, one row per
solicited exposure: ``exposure_id``, ``label`` (the solicited vote, as in the events) and
``true_label``, a careful rating of the same answer (here the clean label y_true: an expert
review or a follow-up survey), which makes the slice a gold audit set for the flip rates
(``causalrm noise estimate --method audit --audit DIR/slice.parquet``). It draws no random numbers,
so the events and truth of a seed are the same with or without it.
Work is streamed in chunks of exposures, so memory stays bounded for any ``n_exposures``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from feedback_etl.texts import TEACHERS, TEXT_SOURCES, TextPool, load_text_pool
from schemas.errors import ConfigError

log = logging.getLogger(__name__)

PLATFORMS = np.array(["web", "ios", "android"], dtype=object)
PLATFORM_FACTOR = np.array([1.25, 0.9, 0.75])
LOCALES = np.array(["en-US", "en-GB", "de-DE", "fr-FR", "es-ES"], dtype=object)
MODELS = np.array(["m-small", "m-base", "m-large"], dtype=object)
# Custom context columns (issue 17, ``extra_context``): logged by the product, not in the canonical
# columns, and driving who votes. Per user: a plan tier and an app version; per exposure: the turn.
PLAN_TIERS = np.array(["free", "plus", "pro"], dtype=object)
PLAN_TIER_FACTOR = np.array([0.4, 1.0, 2.5])
APP_VERSIONS = np.array(["1.9", "2.4", "3.1"], dtype=object)
APP_VERSION_FACTOR = np.array([0.5, 1.0, 2.0])
TURN_FACTOR = 1.15  # per turn after the first (turns 1..8)
# ... and users of a higher tier like answers more: P(y_true = 1) = clip(r* + shift, 0, 1). So the
# tiers that vote most also skew the labels, and only weights that see the tier undo the skew.
PLAN_TIER_LABEL_SHIFT = np.array([-0.15, 0.0, 0.15])
START = datetime(2026, 1, 5, tzinfo=timezone.utc)
_US = 1_000_000


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """What to simulate. Mirrors ``causalrm simulate`` options one to one."""

    out: str
    n_exposures: int = 20_000
    alpha: float = 0.5
    obs_rate: float = 0.2
    rho01: float = 0.2
    rho10: float = 0.1
    texts: str = "synthetic"
    messiness: float = 0.0
    seed: int = 0
    n_users: int | None = None
    days: int = 14
    window_hours: float = 24.0
    randomized_slice: float = 0.0
    label_effect: float = 1.0
    context_effects: bool = True
    # Off by default: the events (and every seeded number) of a config without it stay as they were.
    extra_context: bool = False
    format: str = "parquet"
    chunk_size: int = 100_000
    data_dir: str | None = None
    teacher: str = "ngram"
    teacher_cache: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.n_exposures >= 1, "n_exposures must be >= 1"),
            (0 < self.alpha <= 1, "alpha must be in (0, 1]"),
            (0 < self.obs_rate < 1, "obs_rate must be in (0, 1)"),
            (0 <= self.rho01 < 1 and 0 <= self.rho10 < 1, "rho01 and rho10 must be in [0, 1)"),
            (self.rho01 + self.rho10 < 1, "rho01 + rho10 must be < 1 (else labels carry no signal)"),
            (0 <= self.messiness <= 1, "messiness must be in [0, 1]"),
            (0 <= self.randomized_slice < 1, "randomized_slice must be in [0, 1)"),
            (self.label_effect > 0, "label_effect must be > 0"),
            (self.texts in TEXT_SOURCES, f"texts must be one of {', '.join(TEXT_SOURCES)}"),
            (self.teacher in TEACHERS, f"teacher must be one of {', '.join(TEACHERS)}"),
            (self.format in ("parquet", "jsonl"), "format must be parquet or jsonl"),
            (self.chunk_size >= 1000, "chunk_size must be >= 1000"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message, where="simulate config")

    @property
    def users(self) -> int:
        return self.n_users or max(20, self.n_exposures // 40)


@dataclass
class _Counts:
    events_written: int = 0
    impressions: int = 0
    duplicates: int = 0
    orphan_feedback: int = 0
    late_events: int = 0
    toggled_exposures: int = 0
    cleared_exposures: int = 0
    malformed: dict[str, int] = field(default_factory=lambda: {"missing_field": 0, "bad_timestamp": 0, "unknown_event_type": 0, "unparseable_row": 0})


def _scale_for_obs_rate(base: np.ndarray, target: float) -> float:
    """Solve c such that mean(clip(c * base, 0.001, 0.98)) = target, by bisection."""
    lo, hi = 0.0, 1.0
    while np.clip(hi * base, 0.001, 0.98).mean() < target:
        hi *= 2.0
        if hi > 1e9:
            raise ConfigError(f"obs_rate {target} unreachable with propensity cap 0.98", where="simulate config")
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if np.clip(mid * base, 0.001, 0.98).mean() < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


class _World:
    """Everything fixed across chunks: the text pool, users and the propensity scale."""

    def __init__(self, cfg: SimulationConfig) -> None:
        self.cfg = cfg
        self.pool: TextPool = load_text_pool(cfg.texts, cfg.data_dir, teacher=cfg.teacher, teacher_cache=cfg.teacher_cache)
        rng = np.random.default_rng([cfg.seed, 7])
        n_users = cfg.users
        self.user_platform = rng.integers(0, len(PLATFORMS), n_users)
        self.user_locale = rng.integers(0, len(LOCALES), n_users)
        # Heavy-tailed activity: a few users see many answers, most see a handful.
        activity = rng.pareto(1.5, n_users) + 1.0
        self.user_p = activity / activity.sum()
        if cfg.extra_context:  # its own stream: turning it on changes no other draw
            extra = np.random.default_rng([cfg.seed, 13])
            self.user_plan = extra.choice(len(PLAN_TIERS), n_users, p=[0.6, 0.3, 0.1])
            self.user_app = extra.choice(len(APP_VERSIONS), n_users, p=[0.2, 0.3, 0.5])
        self.max_r = float(self.pool.r_star.max())
        lengths = np.array([len(t) for t in self.pool.response_text], dtype=np.float64)
        self.log_len_z = (np.log1p(lengths) - np.log1p(lengths).mean()) / (np.log1p(lengths).std() + 1e-12)
        pilot = self.exposures(np.random.default_rng([cfg.seed, 11]), 0, min(200_000, max(50_000, cfg.n_exposures)))
        self.scale = _scale_for_obs_rate(pilot["_base"], cfg.obs_rate)

    def exposures(self, rng: np.random.Generator, start: int, stop: int) -> dict[str, np.ndarray]:
        """Exposure-level draws for indices [start, stop) (no propensity scale applied yet)."""
        cfg, n = self.cfg, stop - start
        item = rng.integers(0, len(self.pool), n)
        user = rng.choice(len(self.user_p), n, p=self.user_p)
        position = rng.integers(0, 4, n)
        model = rng.integers(0, len(MODELS), n)
        r_star = self.pool.r_star[item]
        liking = np.clip(r_star + PLAN_TIER_LABEL_SHIFT[self.user_plan[user]], 0.0, 1.0) if cfg.extra_context else r_star
        y_true = (rng.random(n) < liking).astype(np.int8)
        base = cfg.alpha ** (self.max_r - r_star)
        # Missing not at random beyond the features (issue 11): users who liked the answer react
        # label_effect times as often, whatever its context. 1.0 = selection on r* and context only.
        base = base * cfg.label_effect ** y_true
        if cfg.context_effects:
            base = base * PLATFORM_FACTOR[self.user_platform[user]] * 0.85**position * np.exp(-0.15 * self.log_len_z[item])
        draw = {"item": item, "user": user, "position": position, "model": model, "r_star": r_star, "y_true": y_true}
        if cfg.extra_context:
            turn = np.random.default_rng([cfg.seed, 17, start]).integers(1, 9, n)
            base = base * PLAN_TIER_FACTOR[self.user_plan[user]] * APP_VERSION_FACTOR[self.user_app[user]] * TURN_FACTOR ** (turn - 1)
            draw["turn"] = turn
        return {**draw, "_base": base}


def _iso(micros: np.ndarray) -> pl.Series:
    return pl.Series(micros, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")).dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ")


def _events_frame(exposure_id: np.ndarray, event_type: np.ndarray, time_us: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "exposure_id": pl.Series(exposure_id, dtype=pl.Utf8),
            "event_type": pl.Series(event_type, dtype=pl.Utf8),
            "_time_us": pl.Series(time_us, dtype=pl.Int64),
        }
    )


def _chunk(world: _World, chunk_index: int, start: int, stop: int, counts: _Counts) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Simulate exposures [start, stop): return (events, truth)."""
    cfg, pool = world.cfg, world.pool
    rng = np.random.default_rng([cfg.seed, 1000 + chunk_index])
    draw = world.exposures(rng, start, stop)
    n = stop - start
    m = cfg.messiness
    window_us = int(cfg.window_hours * 3600 * _US)

    idx = np.arange(start, stop)
    exposure_id = np.char.add("exp-", np.char.zfill(idx.astype(str), 10)).astype(object)
    user = draw["user"]
    user_id = np.char.add("u", np.char.zfill(user.astype(str), 6)).astype(object)
    t0 = (START.timestamp() * _US + rng.uniform(0, cfg.days * 86400 * _US, n)).astype(np.int64)
    session_id = np.char.add(np.char.add(user_id.astype(str), "-s"), ((t0 // (3 * 3600 * _US)) % 100000).astype(str)).astype(object)

    propensity = np.clip(world.scale * draw["_base"], 0.001, 0.98)
    solicited = rng.random(n) < cfg.randomized_slice
    observed = (rng.random(n) < propensity) | solicited
    y_true = draw["y_true"]
    flip_u = rng.random(n)
    flipped = observed & np.where(y_true == 1, flip_u < cfg.rho01, flip_u < cfg.rho10)
    label = np.where(flipped, 1 - y_true, y_true).astype(np.int8)
    r_star = draw["r_star"]
    copied = rng.random(n) < 0.04 + 0.25 * r_star
    regenerated = rng.random(n) < 0.02 + 0.15 * (1.0 - r_star)
    shared = rng.random(n) < 0.02 * r_star

    vote_delay = np.minimum(rng.exponential(90.0, n) * _US, window_us * 0.9).astype(np.int64) + _US
    toggled = observed & (rng.random(n) < 0.3 * m)
    cleared = ~observed & (rng.random(n) < 0.05 * m)
    late = rng.random(n) < 0.05 * m

    frames: list[pl.DataFrame] = []
    vote_type = np.where(label == 1, "thumbs_up", "thumbs_down").astype(object)
    opposite = np.where(label == 1, "thumbs_down", "thumbs_up").astype(object)
    frames.append(_events_frame(exposure_id[observed], vote_type[observed], t0[observed] + vote_delay[observed]))
    frames.append(_events_frame(exposure_id[toggled], opposite[toggled], t0[toggled] + vote_delay[toggled] // 2))
    for step, kind in enumerate(("thumbs_up", "thumbs_down", "vote_cleared")):
        frames.append(
            _events_frame(exposure_id[cleared], np.full(cleared.sum(), kind, dtype=object), t0[cleared] + (step + 1) * vote_delay[cleared] // 4)
        )
    late_type = np.where(rng.random(n) < 0.5, "thumbs_up", "thumbs_down").astype(object)
    late_delay = window_us + rng.uniform(3600 * _US, 48 * 3600 * _US, n).astype(np.int64)
    frames.append(_events_frame(exposure_id[late], late_type[late], t0[late] + late_delay[late]))
    for flag, kind in ((copied, "copy"), (regenerated, "regenerate"), (shared, "share")):
        delay = rng.uniform(1 * _US, 600 * _US, n).astype(np.int64)
        frames.append(_events_frame(exposure_id[flag], np.full(flag.sum(), kind, dtype=object), t0[flag] + delay[flag]))
    feedback = pl.concat(frames)
    feedback = feedback.with_columns(
        event_id=pl.format("ev-{}-{}-f{}", pl.lit(cfg.seed), pl.lit(chunk_index), pl.int_range(pl.len()))
    )

    impressions = pl.DataFrame(
        {
            "event_id": np.char.add(f"ev-{cfg.seed}-i", idx.astype(str)).astype(object),
            "exposure_id": exposure_id,
            "event_type": np.full(n, "impression", dtype=object),
            "_time_us": t0,
            "user_id": user_id,
            "session_id": session_id,
            "prompt_id": pool.prompt_id[draw["item"]],
            "response_id": pool.response_id[draw["item"]],
            "model_id": MODELS[draw["model"]],
            "prompt_text": pool.prompt_text[draw["item"]],
            "response_text": pool.response_text[draw["item"]],
            "position": draw["position"].astype(np.int32),
            "platform": PLATFORMS[world.user_platform[user]],
            "locale": LOCALES[world.user_locale[user]],
            "latency_ms": np.round(rng.lognormal(6.5, 0.5, n), 1),
            "solicited": solicited,
        }
    )
    if cfg.extra_context:
        impressions = impressions.with_columns(
            plan_tier=pl.Series(PLAN_TIERS[world.user_plan[user]], dtype=pl.Utf8),
            app_version=pl.Series(APP_VERSIONS[world.user_app[user]], dtype=pl.Utf8),
            turn=pl.Series(draw["turn"], dtype=pl.Int32),
        )
    events = pl.concat([impressions, feedback], how="diagonal")

    # Exact duplicates (at-least-once delivery): same event_id, same payload.
    dup_mask = rng.random(events.height) < 0.05 * m
    duplicates = events.filter(pl.Series(dup_mask))
    dup_per_exposure = duplicates.group_by("exposure_id").len()

    n_orphans = int(rng.binomial(n, min(1.0, 0.01 * m)))
    orphans = pl.DataFrame(
        {
            "event_id": [f"ev-{cfg.seed}-{chunk_index}-o{k}" for k in range(n_orphans)],
            "exposure_id": [f"orphan-{cfg.seed}-{chunk_index}-{k}" for k in range(n_orphans)],
            "event_type": rng.choice(["thumbs_up", "thumbs_down", "copy"], n_orphans).astype(object),
            "_time_us": (START.timestamp() * _US + rng.uniform(0, cfg.days * 86400 * _US, n_orphans)).astype(np.int64),
        },
        schema={"event_id": pl.Utf8, "exposure_id": pl.Utf8, "event_type": pl.Utf8, "_time_us": pl.Int64},
    )
    events = pl.concat([events, duplicates, orphans], how="diagonal")
    events = events.with_columns(event_time=_iso(events["_time_us"].to_numpy()))

    n_bad = int(rng.binomial(events.height, min(1.0, 0.01 * m)))
    kinds = rng.integers(0, 4, n_bad)
    bad_src = rng.integers(0, n, n_bad)
    bad = pl.DataFrame(
        {
            "event_id": [None if k == 0 else f"ev-{cfg.seed}-{chunk_index}-b{j}" for j, k in enumerate(kinds)],
            "exposure_id": [None if k == 1 else exposure_id[s] for k, s in zip(kinds, bad_src)],
            "event_type": ["thumbs_sideways" if k == 3 else "thumbs_up" for k in kinds],
            "event_time": ["2026-13-45T99:61:00Z" if k == 2 else "2026-01-06T10:00:00Z" for k in kinds],
        },
        schema={"event_id": pl.Utf8, "exposure_id": pl.Utf8, "event_type": pl.Utf8, "event_time": pl.Utf8},
    )
    counts.malformed["missing_field"] += int((kinds <= 1).sum())
    counts.malformed["bad_timestamp"] += int((kinds == 2).sum())
    counts.malformed["unknown_event_type"] += int((kinds == 3).sum())
    events = pl.concat([events.drop("_time_us"), bad], how="diagonal")
    if m > 0:
        events = events.sample(fraction=1.0, shuffle=True, seed=int(rng.integers(2**31)))
    else:
        events = events.sort("event_time")

    counts.events_written += events.height
    counts.impressions += n
    counts.duplicates += duplicates.height
    counts.orphan_feedback += n_orphans
    counts.late_events += int(late.sum())
    counts.toggled_exposures += int(toggled.sum())
    counts.cleared_exposures += int(cleared.sum())

    truth = pl.DataFrame(
        {
            "exposure_id": exposure_id,
            "user_id": user_id,
            "prompt_id": pool.prompt_id[draw["item"]],
            "response_id": pool.response_id[draw["item"]],
            "r_star": r_star,
            "y_true": y_true,
            "propensity": propensity,
            "observed": observed,
            "flipped": flipped,
            "label": pl.Series(np.where(observed, label, 0), dtype=pl.Int8),
            "copied": copied,
            "regenerated": regenerated,
            "shared": shared,
            "solicited": solicited,
            "toggled": toggled,
            "cleared": cleared,
            "n_late_events": late.astype(np.int32),
        }
    ).with_columns(label=pl.when(pl.col("observed")).then(pl.col("label")))
    truth = truth.join(dup_per_exposure.rename({"len": "n_duplicate_events"}), on="exposure_id", how="left").with_columns(
        pl.col("n_duplicate_events").fill_null(0).cast(pl.Int32)
    )
    return events, truth


def _write_events(events: pl.DataFrame, path: Path, fmt: str, rng: np.random.Generator, counts: _Counts, m: float) -> None:
    if fmt == "parquet":
        events.write_parquet(path.with_suffix(".parquet"))
        return
    lines = events.write_ndjson().splitlines()
    n_garbage = int(rng.binomial(len(lines), min(1.0, 0.001 * m))) if m > 0 else 0
    for k in range(n_garbage):
        lines.insert(int(rng.integers(0, len(lines) + 1)), '{"event_id": "broken-' + str(k) + '", "event_time": ')
    counts.malformed["unparseable_row"] += n_garbage
    counts.events_written += n_garbage
    path.with_suffix(".jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def simulate(cfg: SimulationConfig, *, progress: bool = False) -> dict:
    """Write ``out/events/`` (raw events), ``out/truth.parquet`` and ``out/simulation.json``.

    Returns the summary written to ``simulation.json``.
    """
    out = Path(cfg.out)
    events_dir = out / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    for old in events_dir.glob("part-*"):
        old.unlink()
    world = _World(cfg)
    counts = _Counts()
    truth_writer: pq.ParquetWriter | None = None
    starts = list(range(0, cfg.n_exposures, cfg.chunk_size))
    realised = {"observed": 0, "flipped": 0, "y1_observed": 0, "y0_observed": 0, "flip01": 0, "flip10": 0}
    slice_parts: list[pl.DataFrame] = []
    bar = _progress(progress, len(starts))
    try:
        for chunk_index, start in enumerate(starts):
            stop = min(cfg.n_exposures, start + cfg.chunk_size)
            events, truth = _chunk(world, chunk_index, start, stop, counts)
            rng = np.random.default_rng([cfg.seed, 5000 + chunk_index])
            _write_events(events, events_dir / f"part-{chunk_index:05d}", cfg.format, rng, counts, cfg.messiness)
            table = truth.to_arrow()
            if truth_writer is None:
                truth_writer = pq.ParquetWriter(out / "truth.parquet", table.schema)
            truth_writer.write_table(table)
            obs = truth.filter(pl.col("observed"))
            realised["observed"] += obs.height
            realised["y1_observed"] += int((obs["y_true"] == 1).sum())
            realised["y0_observed"] += int((obs["y_true"] == 0).sum())
            realised["flip01"] += int((obs["flipped"] & (obs["y_true"] == 1)).sum())
            realised["flip10"] += int((obs["flipped"] & (obs["y_true"] == 0)).sum())
            if cfg.randomized_slice > 0:
                slice_parts.append(_slice_rows(truth))
            if bar:
                bar[0].advance(bar[1])
    finally:
        if truth_writer is not None:
            truth_writer.close()
        if bar:
            bar[0].stop()
    if cfg.randomized_slice > 0:
        pl.concat(slice_parts).write_parquet(out / "slice.parquet")
    elif (out / "slice.parquet").exists():
        (out / "slice.parquet").unlink()  # a slice of an earlier run in the same folder would mislead
    summary = {
        "config": asdict(cfg),
        "propensity_scale": world.scale,
        "teacher": {"kind": world.pool.teacher, "cv_auc_vs_human_labels": world.pool.teacher_auc},
        "counts": {
            "n_exposures": cfg.n_exposures,
            "rows_written": counts.events_written,
            "impressions": counts.impressions,
            "duplicates": counts.duplicates,
            "orphan_feedback": counts.orphan_feedback,
            "late_events": counts.late_events,
            "toggled_exposures": counts.toggled_exposures,
            "cleared_exposures": counts.cleared_exposures,
            "malformed": counts.malformed,
            "solicited": sum(part.height for part in slice_parts),
        },
        "realised": {
            "obs_rate": realised["observed"] / cfg.n_exposures,
            "rho01": realised["flip01"] / max(1, realised["y1_observed"]),
            "rho10": realised["flip10"] / max(1, realised["y0_observed"]),
        },
    }
    (out / "simulation.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _slice_rows(truth: pl.DataFrame) -> pl.DataFrame:
    """``slice.parquet`` rows of a truth chunk: each solicited exposure's solicited vote (``label``) and
    careful rating (``true_label`` = y_true)."""
    return truth.filter(pl.col("solicited")).select(
        "exposure_id", pl.col("label").cast(pl.Int8), true_label=pl.col("y_true").cast(pl.Int8)
    )


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import Progress

    progress = Progress(transient=True)
    progress.start()
    return progress, progress.add_task("simulating", total=total)


def exposure_frame(cfg: SimulationConfig) -> pl.DataFrame:
    """Small in-memory helper: the truth table joined with each exposure's impression context.

    Handy for unit tests of downstream code; the real path is simulate -> ingest.
    """
    world = _World(cfg)
    counts = _Counts()
    parts = []
    for chunk_index, start in enumerate(range(0, cfg.n_exposures, cfg.chunk_size)):
        stop = min(cfg.n_exposures, start + cfg.chunk_size)
        events, truth = _chunk(world, chunk_index, start, stop, counts)
        impressions = events.filter(pl.col("event_type") == "impression").unique("exposure_id").drop(
            "event_id", "event_type", "user_id", "prompt_id", "response_id", "solicited"
        )
        parts.append(truth.join(impressions, on="exposure_id", how="left"))
    return pl.concat(parts)
