"""Simulator throughput and memory: events/s and peak RSS at growing sizes.

    .venv/bin/python benchmarks/simulate/run.py --events 1000000 3000000 10000000

Each size runs in a fresh subprocess so peak RSS (ru_maxrss) is that run's alone. About 1.55
events are written per exposure at messiness 0.3, so n_exposures = events / 1.55.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
from feedback_etl.simulator import SimulationConfig, simulate
n, out = int(sys.argv[1]), sys.argv[2]
t = time.perf_counter()
s = simulate(SimulationConfig(out=out, n_exposures=n, messiness=0.3, texts="hh_rlhf", seed=0))
dt = time.perf_counter() - t
print(json.dumps({"exposures": n, "events": s["counts"]["rows_written"], "seconds": dt,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000])
    args = parser.parse_args()
    rows = []
    for events in args.events:
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(int(events / 1.55)), tmp], capture_output=True, text=True, check=True,
                cwd=Path(__file__).resolve().parents[2],
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
        row["disk_mb"] = size / 2**20
        row["events_per_s"] = row["events"] / row["seconds"]
        row["s_per_million_events"] = row["seconds"] / (row["events"] / 1e6)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| events | exposures | seconds | s / 1M events | events/s | peak RSS (MB) | disk (MB) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['events']:,} | {r['exposures']:,} | {r['seconds']:.1f} | {r['s_per_million_events']:.1f} | "
              f"{r['events_per_s']:,.0f} | {r['peak_rss_mb']:.0f} | {r['disk_mb']:.0f} |")


if __name__ == "__main__":
    main()
