"""Benchmark: the chain after ingest (issue 23): ``propensity fit``, ``propensity fit-label-aware``,
``noise estimate``, ``weights export`` and ``audit``, each in a fresh process under
``/usr/bin/time -v`` (wall time, CPU time and peak RSS of that process), on simulated warehouses.

Warehouses: ``make`` simulates N exposures with a 2% randomized slice (``causalrm simulate
--randomized-slice 0.02 --label-effect 2``, seed 3) and ingests them (``causalrm ingest``); a larger
warehouse is K copies of that table (``fit_scale.py replicate``: fresh ids, ``observed`` redrawn
from the true propensity; a copied solicited row is then answered with its true propensity, so the
slice's response rate is below 1 in the copies).

    .venv/bin/python benchmarks/propensity/chain_scale.py make --n 1000000 --out /tmp/h5bench/wh1m
    .venv/bin/python benchmarks/propensity/fit_scale.py replicate --base /tmp/h5bench/wh1m --copies 10 --out /tmp/h5bench/wh10m
    nice -n 10 .venv/bin/python benchmarks/propensity/chain_scale.py run /tmp/h5bench/wh1m --label 1M
    nice -n 10 .venv/bin/python benchmarks/propensity/chain_scale.py run /tmp/h5bench/wh1m --label 1M-streamed --step-args '--max-rows 100000'

``--step-args`` go to every step (``--max-rows`` / ``--memory-limit``);
``--steps`` picks steps. Appends to benchmarks/propensity/results_chain.json and prints one row per step.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fit_scale import CLI, _time_v  # noqa: E402

STEPS = ("fit", "fit-label-aware", "noise", "export", "audit")


def make(n: int, out: Path, seed: int = 3) -> None:
    logs = out.parent / f"{out.name}-logs"
    subprocess.run([*CLI, "simulate", "--out", str(logs), "--n-exposures", str(n), "--seed", str(seed),
                    "--randomized-slice", "0.02", "--label-effect", "2"], check=True)
    subprocess.run([*CLI, "ingest", str(logs / "events"), "--warehouse", str(out)], check=True)
    shutil.copy(logs / "truth.parquet", out.parent / f"{out.name}-truth.parquet")


def _commands(work: Path, threads: int, step_args: list[str]) -> dict[str, list[str]]:
    t = ["--threads", str(threads)]
    return {
        "fit": ["propensity", "fit", str(work), "--no-embeddings", *t, *step_args],
        "fit-label-aware": ["propensity", "fit-label-aware", str(work), "--bootstrap", "50", *t, *step_args],
        "noise": ["noise", "estimate", str(work), "--no-embeddings", "--bootstrap", "50", *step_args],
        "export": ["weights", "export", str(work), "--out", str(work.parent / f"{work.name}-dataset"), *step_args],
        "audit": ["audit", str(work), "--out", str(work.parent / f"{work.name}-audit" / "report.html"), *step_args],
    }


def run(warehouse: Path, label: str, steps: list[str], threads: int, step_args: list[str], keep: bool,
        step_extra: dict[str, list[str]] | None = None) -> list[dict]:
    """Each step on a working copy of ``warehouse`` under ``/usr/bin/time -v``; ``step_extra`` adds
    options to one step (e.g. ``--slice`` for fit-label-aware)."""
    work = warehouse.parent / f"{warehouse.name}-chain"
    if "fit" in steps or not work.exists():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(warehouse, work, ignore=shutil.ignore_patterns("propensity", "noise", "noise.json"))
    rows = []
    for step in steps:
        commands = _commands(work, threads, step_args)
        commands[step] += (step_extra or {}).get(step, [])
        if step == "export" and not (work / "noise.json").is_file():
            commands[step].append("--no-noise")  # noise estimate not run (e.g. measured separately)
        cmd = ["/usr/bin/time", "-v", *CLI, *commands[step]]
        started = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        wall_s, peak_mb, cpu_s = _time_v(done.stderr)
        row = {"label": label, "step": step, "args": commands[step][2:], "returncode": done.returncode,
               "wall_s": round(wall_s, 1), "cpu_s": round(cpu_s, 1), "peak_rss_mb": round(peak_mb),
               "started": time.strftime("%H:%M:%S", time.gmtime(started))}
        if done.returncode:
            row["error"] = (done.stdout + done.stderr).strip().splitlines()[-25:]
        rows.append(row)
        print(json.dumps(row), flush=True)
        if done.returncode:
            break
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("--n", type=int, required=True)
    m.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("run")
    b.add_argument("warehouse", type=Path)
    b.add_argument("--label", required=True)
    b.add_argument("--steps", default=",".join(STEPS))
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--step-args", default="", help="options for every step, e.g. '--max-rows 100000' or '--memory-limit 3GB'")
    b.add_argument("--keep", action="store_true", help="keep the working copy (to rerun later steps with --steps)")
    b.add_argument("--results", type=Path, default=HERE / "results_chain.json")
    args = parser.parse_args()
    if args.command == "make":
        make(args.n, args.out)
        return
    steps = [s for s in args.steps.split(",") if s]
    rows = run(args.warehouse, args.label, steps, args.threads, args.step_args.split(), args.keep)
    results = json.loads(args.results.read_text()) if args.results.is_file() else {"meta": {}, "results": []}
    results["meta"] = {"python": platform.python_version(), "machine": platform.machine(),
                       "cpus": len(os.sched_getaffinity(0)), "date": time.strftime("%Y-%m-%d")}
    done = {(r["label"], r["step"]) for r in rows}
    results["results"] = [x for x in results["results"] if (x["label"], x["step"]) not in done] + rows
    args.results.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
