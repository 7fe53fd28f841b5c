"""Benchmark: a 15M-exposure ratings warehouse (issues 19 and 23): ``causalrm ingest --source
ratings`` and the chain after it, on a **synthetic** input with the shape of Yahoo! R3.

Yahoo! R3 (Marlin & Zemel 2009) is licence-gated and not on this machine, so nothing here reads it.
``make`` writes a seeded stand-in of the same shape instead:

- 15,400 users x 1,000 songs, 311,704 self-selected ratings 1-5 (every user at least 10), as a
  whitespace matrix ``train.txt`` (one line per user, 0 = unrated, Coat's format) and as triples
  ``train.csv`` (``user_id,item_id,rating``, 1-based ids as in Yahoo's files);
- a randomized test set: the first 5,400 users x 10 songs each drawn at random among the songs they
  did not rate (54,000 ratings), as ``slice.csv`` (``exposure_id`` of the train universe, ``label`` =
  rating >= 4, ``rating``: the ``--slice`` file of ``propensity fit-label-aware``, see docs/slice.md).

True ratings: r_ui from a latent-factor score (user and song offsets plus a rank-8 product) cut into
1-5 at quantiles chosen so that the missing-at-random marginal is (0.52, 0.19, 0.14, 0.08, 0.07) for
ratings 1..5 -- our recollection of the shape of Yahoo's random-test histogram (mostly 1s), not a
figure checked against the data. Selection (MNAR): each user rates n_u songs (n_u = 10 + a
log-normal share of the rest, summing to 311,704), drawn without replacement with weight
popularity_i * exp(0.6 (r_ui - 1)), so that higher ratings are more likely observed; the observed
marginal comes out (0.274, 0.149, 0.183, 0.170, 0.224) with seed 17 (``summary.json``). The test
ratings are the true r_ui.

    .venv/bin/python benchmarks/propensity/ratings_scale.py make --out /tmp/h17/yahoo_shaped
    flock /tmp/causalrm-heavy.lock .venv/bin/python benchmarks/propensity/ratings_scale.py ingest \\
        /tmp/h17/yahoo_shaped/train.csv --warehouse /tmp/h17/wh_triples --label ingest-triples
    flock /tmp/causalrm-heavy.lock .venv/bin/python benchmarks/propensity/ratings_scale.py chain \\
        /tmp/h17/wh_triples --slice /tmp/h17/yahoo_shaped/slice_triples.csv --label 15M-ratings

``ingest`` and ``chain`` time each command in a fresh process under ``/usr/bin/time -v`` (wall,
CPU, peak RSS) and append to benchmarks/propensity/results_ratings15m.json. The chain runs the steps
exactly as ``chain_scale.py`` does (same options, default ``--memory-limit``), plus ``--slice`` for
``fit-label-aware``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from chain_scale import STEPS, run  # noqa: E402
from fit_scale import CLI, _time_v  # noqa: E402

USERS, ITEMS, RATINGS = 15_400, 1_000, 311_704
TEST_USERS, TEST_PER_USER = 5_400, 10
MAR_MARGINAL = (0.52, 0.19, 0.14, 0.08, 0.07)
TILT = 0.6
RESULTS = HERE / "results_ratings15m.json"


def simulate(seed: int = 17, users: int = USERS, items: int = ITEMS, ratings: int = RATINGS,
             test_users: int = TEST_USERS) -> tuple[np.ndarray, np.ndarray]:
    """The observed matrix (users x items, int8, 0 = unrated) and the test cells (user, item,
    rating) rows, both seeded."""
    rng = np.random.default_rng(seed)
    u_bias, i_bias = rng.normal(0, 0.5, users), rng.normal(0, 0.8, items)
    score = (rng.normal(0, 0.35, (users, 8)) @ rng.normal(0, 0.35, (8, items))).astype(np.float32)
    score += u_bias[:, None].astype(np.float32) + i_bias[None, :].astype(np.float32)
    cuts = np.quantile(score, np.cumsum(MAR_MARGINAL)[:-1])
    true = (np.searchsorted(cuts, score.ravel()).reshape(users, items) + 1).astype(np.int8)
    del score
    # Ratings per user: 10 each plus a heavy-tailed share of the rest, capped at half the songs.
    extra = rng.lognormal(0, 1.0, users)
    counts = 10 + np.floor(extra / extra.sum() * (ratings - 10 * users)).astype(np.int64)
    counts = np.minimum(counts, items // 2)
    short = ratings - counts.sum()
    while short > 0:  # hand out the rounding remainder one rating at a time, never over the cap
        room = np.flatnonzero(counts < items // 2)
        take = rng.choice(room, min(short, len(room)), replace=False)
        counts[take] += 1
        short = ratings - counts.sum()
    popularity = rng.lognormal(0, 1.0, items)
    # Weighted sampling without replacement per user: the n_u largest log-weight + Gumbel keys.
    observed = np.zeros((users, items), np.int8)
    for start in range(0, users, 1000):
        rows = slice(start, min(start + 1000, users))
        keys = np.log(popularity)[None, :] + TILT * (true[rows] - 1) + rng.gumbel(size=(rows.stop - start, items))
        order = np.argsort(-keys, axis=1)
        for k, u in enumerate(range(start, rows.stop)):
            chosen = order[k, : counts[u]]
            observed[u, chosen] = true[u, chosen]
    # Random test: each test user, 10 songs among those they did not rate.
    test = []
    for u in range(test_users):
        free = np.flatnonzero(observed[u] == 0)
        for i in np.sort(rng.choice(free, TEST_PER_USER, replace=False)):
            test.append((u, i, true[u, i]))
    return observed, np.array(test, np.int64)


def write_inputs(out: Path, seed: int = 17) -> dict:
    """Write train.txt (matrix), train.csv (triples), slice_matrix.csv and slice_triples.csv; return
    a summary (counts and marginals)."""
    out.mkdir(parents=True, exist_ok=True)
    observed, test = simulate(seed)
    with open(out / "train.txt", "w") as handle:
        handle.writelines(" ".join(map(str, row.tolist())) + "\n" for row in observed)
    user, item = np.nonzero(observed)
    with open(out / "train.csv", "w") as handle:
        handle.write("user_id,item_id,rating\n")
        handle.writelines(f"{u + 1},{i + 1},{r}\n" for u, i, r in zip(user, item, observed[user, item]))
    u, i, r = test[:, 0], test[:, 1], test[:, 2]
    label = (r >= 4).astype(int)
    # exposure ids of the train universe: matrix '<tag>:u<row>:i<col>' (0-based), triples '<tag>:<user>:<item>'
    for name, ids in (("slice_matrix.csv", [f"train:u{a}:i{b}" for a, b in zip(u, i)]),
                      ("slice_triples.csv", [f"train:{a + 1}:{b + 1}" for a, b in zip(u, i)])):
        with open(out / name, "w") as handle:
            handle.write("exposure_id,label,rating\n")
            handle.writelines(f"{e},{lab},{float(x)}\n" for e, lab, x in zip(ids, label, r))
    rated = observed[observed > 0]
    summary = {
        "users": int(observed.shape[0]), "items": int(observed.shape[1]), "ratings": int(rated.size),
        "min_per_user": int((observed > 0).sum(axis=1).min()), "max_per_user": int((observed > 0).sum(axis=1).max()),
        "observed_marginal": [round(float((rated == k).mean()), 4) for k in range(1, 6)],
        "test_ratings": len(test), "test_marginal": [round(float((r == k).mean()), 4) for k in range(1, 6)],
        "seed": seed,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _timed(cmd: list[str]) -> tuple[dict, subprocess.CompletedProcess]:
    started = time.time()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    wall_s, peak_mb, cpu_s = _time_v(done.stderr)
    row = {"returncode": done.returncode, "wall_s": round(wall_s, 1), "cpu_s": round(cpu_s, 1),
           "peak_rss_mb": round(peak_mb), "started": time.strftime("%H:%M:%S", time.gmtime(started))}
    if done.returncode:
        row["error"] = (done.stdout + done.stderr).strip().splitlines()[-25:]
    return row, done


def ingest(inputs: list[Path], warehouse: Path, label: str, extra: list[str], per_step: bool = False) -> list[dict]:
    """``causalrm ingest --source ratings`` under ``/usr/bin/time -v``; with ``per_step``, the same
    ingest in-process (:func:`_profiled_ingest`: the default options plus ``--memory-limit``) adds
    each step's peak RSS, sampled every 20 ms."""
    shutil.rmtree(warehouse, ignore_errors=True)
    cmd = [*CLI, "ingest", *map(str, inputs), "--warehouse", str(warehouse), "--source", "ratings", *extra]
    if per_step:
        cmd = [sys.executable, __file__, "_profiled", *map(str, inputs), "--warehouse", str(warehouse), "--args", " ".join(extra)]
    row, done = _timed(cmd)
    row = {"label": label, "step": "ingest", "args": cmd[2:], **row}
    manifest = warehouse / "manifest.json"
    if not done.returncode and manifest.is_file():
        run = json.loads(manifest.read_text())["runs"][-1]
        row["rows_read"] = run.get("reconciliation", {}).get("rows_read")
        row["feedback"] = {k: run.get("feedback", {}).get(k) for k in ("exposures", "observed")}
        row["step_seconds"] = run.get("timings_s")
    if per_step and not done.returncode:
        row["step_peak_rss_mb"] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return [row]


def _profiled_ingest(inputs: list[str], warehouse: str, extra: list[str]) -> None:
    """Run the ingest in this process, printing each step's peak RSS (MB) as one JSON line."""
    import threading

    from feedback_etl import ingest as ingest_module
    from feedback_etl.ingest import IngestConfig

    state, peaks = {"step": "start"}, {}

    def sample() -> None:
        while True:
            with open("/proc/self/status") as status:
                rss = next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))
            peaks[state["step"]] = max(peaks.get(state["step"], 0), rss)
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    original = ingest_module._Steps.run

    def run(self, name, action):
        state["step"] = name
        try:
            return original(self, name, action)
        finally:
            state["step"] = f"after {name}"

    ingest_module._Steps.run = run
    memory = extra[extra.index("--memory-limit") + 1] if "--memory-limit" in extra else IngestConfig.memory_limit
    ingest_module.ingest(IngestConfig(inputs=tuple(inputs), warehouse=warehouse, source="ratings", memory_limit=memory))
    print(json.dumps(peaks))


def chain(warehouse: Path, label: str, steps: list[str], slice_file: Path | None, threads: int, step_args: list[str]) -> list[dict]:
    """The chain as chain_scale.run runs it, on a kept working copy of ``warehouse``, plus ``--slice``
    for fit-label-aware."""
    extra = {"fit-label-aware": ["--slice", str(slice_file)]} if slice_file is not None else None
    return run(warehouse, label, steps, threads, step_args, keep=True, step_extra=extra)


def _save(rows: list[dict], meta: dict | None = None) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"meta": {}, "results": []}
    results["meta"] = {**results.get("meta", {}), "python": platform.python_version(), "machine": platform.machine(),
                       "cpus": len(os.sched_getaffinity(0)), "date": time.strftime("%Y-%m-%d"),
                       "input": "synthetic, Yahoo-R3-shaped (benchmarks/propensity/ratings_scale.py make); not Yahoo! R3",
                       **(meta or {})}
    done = {(r["label"], r["step"]) for r in rows}
    results["results"] = [x for x in results["results"] if (x["label"], x["step"]) not in done] + rows
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", type=Path, default=Path("/tmp/h17/yahoo_shaped"))
    m.add_argument("--seed", type=int, default=17)
    i = sub.add_parser("ingest")
    i.add_argument("inputs", type=Path, nargs="+")
    i.add_argument("--warehouse", type=Path, required=True)
    i.add_argument("--label", required=True)
    i.add_argument("--args", default="", help="extra ingest options, e.g. '--memory-limit 1GB'")
    i.add_argument("--per-step", action="store_true", help="run in-process and record each step's peak RSS")
    c = sub.add_parser("chain")
    c.add_argument("warehouse", type=Path)
    c.add_argument("--label", required=True)
    c.add_argument("--slice", type=Path, default=None)
    c.add_argument("--steps", default=",".join(STEPS))
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--step-args", default="")
    if sys.argv[1:2] == ["_profiled"]:  # the child of ``ingest --per-step``
        rest = sys.argv[2:]
        warehouse = rest[rest.index("--warehouse") + 1]
        extra = rest[rest.index("--args") + 1].split()
        _profiled_ingest([a for a in rest[: rest.index("--warehouse")]], warehouse, extra)
        return
    args = parser.parse_args()
    if args.command == "make":
        print(json.dumps(write_inputs(args.out, args.seed)))
        return
    if args.command == "ingest":
        rows = ingest(args.inputs, args.warehouse, args.label, args.args.split(), args.per_step)
        summary = args.inputs[0].parent / "summary.json"
        _save(rows, {"input_summary": json.loads(summary.read_text())} if summary.is_file() else None)
        return
    steps = [s for s in args.steps.split(",") if s]
    _save(chain(args.warehouse, args.label, steps, args.slice, args.threads, args.step_args.split()))


if __name__ == "__main__":
    main()
