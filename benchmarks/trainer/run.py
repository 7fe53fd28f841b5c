"""Trainer throughput: `rm_train.train` vs a minimal hand-written torch loop on the same data.

Both train the same MLP head (384 -> 256 -> 64 -> 1, GELU, dropout 0.1) with AdamW (lr 1e-3,
batch 512) on the same N x 384 float32 embeddings for the same number of epochs, on CPU with the
same number of threads. The hand loop is the floor of what any trainer must do per step: gather a
batch, forward, weighted MSE on sigmoid, backward, step. The trainer's figure is its
``train_samples_per_s`` (training steps only) and, separately, its wall time end to end (reading and
validating the parquet, tensors, per-epoch validation, checkpoints). Goal (issue 6): >= 90 %.

    .venv/bin/python benchmarks/trainer/run.py --n 300000 --epochs 2 --threads 1
    .venv/bin/python benchmarks/trainer/run.py --n 0 --embed-texts 1000   # MiniLM embedding tokens/s only

Writes benchmarks/trainer/results.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rm_train.config import TrainConfig  # noqa: E402
from rm_train.train import train  # noqa: E402

DIM = 384


def make_dataset(root: Path, n: int, seed: int = 0) -> Path:
    """A weighted dataset of n exposures with random 384-d embeddings and the paper's selection model."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, DIM)).astype(np.float32) / np.sqrt(DIM)
    w_true = rng.normal(0, 3, DIM)
    r_star = 1 / (1 + np.exp(-(x @ w_true)))
    propensity = np.clip(0.2 * 0.5 ** (r_star.max() - r_star) / np.mean(0.5 ** (r_star.max() - r_star)), 0.01, 1.0)
    observed = rng.random(n) < propensity
    y_true = rng.random(n) < r_star
    flip = np.where(y_true, rng.random(n) < 0.2, rng.random(n) < 0.1)
    label = np.where(y_true ^ flip, 1, 0).astype(np.int8)
    split = np.where(rng.random(n) < 0.9, "train", "val")
    frame = pl.DataFrame({
        "exposure_id": [f"e{i:08d}" for i in range(n)], "user_id": "u", "prompt_id": "p",
        "response_id": [f"r{i}" for i in range(n)], "prompt_text": None, "response_text": None, "channel": "vote",
        "observed": observed, "label": label, "propensity": propensity,
        "weight": np.where(observed, 1 / propensity, 0.0), "split": split, "rho01": 0.2, "rho10": 0.1,
        "embedding": pl.Series(x).cast(pl.List(pl.Float32)),
    }).with_columns(label=pl.when(pl.col("observed")).then(pl.col("label")))
    root.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(root / "data.parquet")
    (root / "manifest.json").write_text(json.dumps({"schema_version": 1, "source": "benchmarks/trainer/run.py"}))
    return root


def hand_loop(dataset: Path, epochs: int, batch_size: int, seed: int) -> dict:
    """The minimal loop: all exposures of the train split, weighted MSE (the IPS loss), AdamW."""
    frame = pl.read_parquet(dataset / "data.parquet").filter(pl.col("split") == "train")
    x = torch.from_numpy(frame["embedding"].cast(pl.Array(pl.Float32, DIM)).to_numpy().copy())
    y = torch.from_numpy(frame["label"].fill_null(0).cast(pl.Float32).to_numpy().copy())
    w = torch.from_numpy(frame["weight"].cast(pl.Float32).to_numpy().copy())
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(DIM, 256), torch.nn.GELU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(256, 64), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(64, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = (w[idx] * (torch.sigmoid(model(x[idx]).squeeze(-1)) - y[idx]).square()).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"rows": len(x), "seconds": round(seconds, 2), "samples_per_s": round(len(x) * epochs / seconds, 1),
            "samples_per_cpu_s": round(len(x) * epochs / cpu_seconds, 1)}


def run_trainer(dataset: Path, loss: str, epochs: int, batch_size: int, seed: int) -> dict:
    cfg = TrainConfig(loss=loss, epochs=epochs, batch_size=batch_size, seed=seed, device="cpu", hidden=(256, 64),
                      dropout=0.1, patience=epochs + 1, lr=1e-3)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        metrics = train(dataset, cfg, out)
        wall = time.perf_counter() - start
    return {"rows": metrics["n_train_rows"], "train_seconds": metrics["train_seconds"], "wall_seconds": round(wall, 2),
            "samples_per_s": metrics["train_samples_per_s"],
            "samples_per_cpu_s": round(metrics["n_train_rows"] * epochs / metrics["train_cpu_seconds"], 1),
            "wall_samples_per_s": round(metrics["n_train_rows"] * epochs / wall, 1)}


def embed_speed(n_texts: int) -> dict:
    """MiniLM (default model) on CPU over synthetic texts: tokens/s and texts/s, all texts distinct."""
    from feedback_etl.embed import EmbedConfig, embed
    from feedback_etl.texts import load_text_pool

    pool = load_text_pool("synthetic")
    take = np.arange(n_texts) % len(pool)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dataset"
        root.mkdir()
        pl.DataFrame({"exposure_id": [f"e{i}" for i in range(n_texts)],
                      "prompt_text": [f"{pool.prompt_text[k]} (variant {i})" for i, k in enumerate(take)],
                      "response_text": pool.response_text[take].tolist()}).write_parquet(root / "data.parquet")
        summary = embed(root, EmbedConfig(device="cpu"))
    return {"texts": n_texts, "seconds": summary["seconds"], "encode_seconds": summary["encode_seconds"],
            "tokens_per_s": summary["tokens_per_s"], "texts_per_s": summary["texts_per_s"], "tokens": summary["tokens_encoded"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300_000, help="exposures (rows of N x 384 embeddings); 0: embedding timing only")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for every run")
    parser.add_argument("--losses", default="ips,causalrm-ips,causalrm-dr", help="trainer losses to time (ips always)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating hand-loop / trainer-ips runs (median kept)")
    parser.add_argument("--embed-texts", type=int, default=0, help="also time MiniLM embedding on this many texts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(__file__).with_name("results.json")
    if args.n == 0:  # embedding timing only, merged into the existing results
        results = json.loads(out.read_text()) if out.is_file() else {}
        results["embed_minilm_cpu"] = {**embed_speed(args.embed_texts), "threads": args.threads}
        print(f"embed: {results['embed_minilm_cpu']}", flush=True)
        out.write_text(json.dumps(results, indent=2))
        return
    results: dict = {"n": args.n, "epochs": args.epochs, "batch_size": args.batch_size, "threads": args.threads,
                     "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}"}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        dataset = make_dataset(Path(tmp) / "dataset", args.n)
        results["make_dataset_seconds"] = round(time.perf_counter() - start, 1)
        # The machine is shared: alternate hand loop and trainer (IPS, the same loss as the hand loop)
        # and keep each one's median, so a burst of foreign load does not land on one side only.
        hand_runs, ips_runs = [], []
        for repeat in range(args.repeats):
            hand_runs.append(hand_loop(dataset, args.epochs, args.batch_size, repeat))
            ips_runs.append(run_trainer(dataset, "ips", args.epochs, args.batch_size, repeat))
            print(f"repeat {repeat}: hand {hand_runs[-1]['samples_per_s']:,.0f}/s ({hand_runs[-1]['samples_per_cpu_s']:,.0f}/cpu-s), "
                  f"trainer ips {ips_runs[-1]['samples_per_s']:,.0f}/s ({ips_runs[-1]['samples_per_cpu_s']:,.0f}/cpu-s)", flush=True)
        # Samples per CPU-second is the fairer figure on a shared machine: waiting for a core is not counted.
        key = "samples_per_cpu_s"
        results["hand_loop"] = sorted(hand_runs, key=lambda r: r[key])[len(hand_runs) // 2]
        results["hand_loop"]["all_samples_per_cpu_s"] = [r[key] for r in hand_runs]
        results["ips"] = sorted(ips_runs, key=lambda r: r[key])[len(ips_runs) // 2]
        results["ips"]["all_samples_per_cpu_s"] = [r[key] for r in ips_runs]
        for loss in args.losses.split(","):
            if loss != "ips":
                results[loss] = run_trainer(dataset, loss, args.epochs, args.batch_size, 0)
        for loss in args.losses.split(","):
            results[loss]["vs_hand_loop"] = round(results[loss][key] / results["hand_loop"][key], 3)
            print(f"{loss}: {results[loss]}", flush=True)
    if args.embed_texts:
        results["embed_minilm_cpu"] = {**embed_speed(args.embed_texts), "threads": args.threads}
        print(f"embed: {results['embed_minilm_cpu']}", flush=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
