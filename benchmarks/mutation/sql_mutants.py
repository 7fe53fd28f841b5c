"""Hand-written mutants of the sql/ transforms (issue 22): comparison flips, join type changes,
tie-break directions. Each is applied in memory (``feedback_etl.sqlfiles.load_sql`` returns the
mutated text; no file changes) and ``tests/feedback_etl/test_sql.py`` or ``test_sql_rules.py`` must
fail on it.

Run by ``benchmarks/mutation/run.py`` (``make mutation``), or alone::

    python benchmarks/mutation/sql_mutants.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ["tests/feedback_etl/test_sql.py", "tests/feedback_etl/test_sql_rules.py", "tests/feedback_etl/test_stg_resolution.py"]
ENV_VAR = "CAUSALRM_SQL_MUTANT"

# (file under sql/ without .sql, exact text, replacement, what the mutant means)
MUTANTS: list[tuple[str, str, str, str]] = [
    ("marts/feedback", '<= i."impression_time" + $window', '< i."impression_time" + $window',
     "window bound <= -> < (an event exactly at the window's end becomes late)"),
    # The final vote is one ARG_MAX per exposure over (event_time, event_id) since issue 19.
    ("marts/feedback", 'STRUCT_PACK("t" := "event_time", "id" := "event_id")', 'STRUCT_PACK("id" := "event_id", "t" := "event_time")',
     "vote order: the greater event_id wins over the later vote (tie-break key first)"),
    ("marts/feedback", 'ARG_MAX("event_type", STRUCT_PACK(', 'ARG_MIN("event_type", STRUCT_PACK(',
     "first vote wins instead of the last"),
    ("marts/feedback", "LEFT JOIN channels AS c", "JOIN channels AS c",
     "LEFT JOIN -> INNER JOIN channels (exposures without feedback disappear)"),
    ("marts/feedback", "WHEN 'thumbs_up' THEN 1 WHEN 'thumbs_down' THEN 0", "WHEN 'thumbs_up' THEN 0 WHEN 'thumbs_down' THEN 1",
     "label polarity swapped"),
    ("marts/feedback", 'SUM(1 - "in_window") AS "n_late_events"', 'SUM("in_window") AS "n_late_events"',
     "late-event count counts in-window events"),
    ("marts/user_splits", 'WHEN 10 * "point" < 8 *', 'WHEN 10 * "point" < 9 *', "split bound: the val users join train"),
    ("marts/user_splits", 'WHERE k."user_id" IS NULL', 'WHERE TRUE', "users of the committed table are split again (and twice)"),
    ("marts/feedback",
     'SUM("is_vote") OVER (\n            PARTITION BY "user_id" ORDER BY "point_time", "is_vote"',
     'SUM("is_vote") OVER (\n            PARTITION BY "user_id" ORDER BY "point_time", "is_vote" DESC',
     "history: a vote at the same instant counts before the impression (point-in-time leak)"),
    ("reference/stg_duplicates", 'ORDER BY c."batch_rank", c."file_index", c."row_number"',
     'ORDER BY c."batch_rank" DESC, c."file_index", c."row_number"', "duplicate winner: this run's copy beats the warehouse's"),
    ("reference/stg_duplicates", 'ORDER BY c."batch_rank", c."file_index", c."row_number"',
     'ORDER BY c."batch_rank", c."file_index", c."row_number" DESC', "duplicate winner: last in input order instead of first"),
    ("reference/stg_impression_losers", 'ORDER BY k."batch_rank", k."event_time", k."event_id"',
     'ORDER BY k."batch_rank", k."event_time" DESC, k."event_id"', "impression winner: the later impression wins"),
    ("reference/stg_impression_losers", 'AND l."response_text" IS NOT DISTINCT FROM w."response_text"\n', "",
     "conflict check ignores response_text (a changed answer counts as a repeat)"),
    ("reference/stg_orphans", "WHERE NOT EXISTS (\n    SELECT 1 FROM known_exposures", "WHERE EXISTS (\n    SELECT 1 FROM known_exposures",
     "orphan test inverted (NOT EXISTS -> EXISTS)"),
    ("staging/stg_late_events", 'f."event_time" > i."impression_time" + $window', 'f."event_time" >= i."impression_time" + $window',
     "late bound > -> >= (disagrees with the mart's <=)"),
    ("staging/stg_new_events", "  AND NOT EXISTS (\n      SELECT 1 FROM \"orphans\" AS o", "  AND EXISTS (\n      SELECT 1 FROM \"orphans\" AS o",
     "new events keep only the orphans"),
    # Both engines run rules 1, 5 and 6 as one query (issue 19); the three files above are its reference (sql/reference/).
    ("staging/stg_resolution", 'ORDER BY c."batch_rank", c."file_index", c."row_number"',
     'ORDER BY c."batch_rank" DESC, c."file_index", c."row_number"', "one-pass duplicate winner: this run's copy beats the warehouse's"),
    ("staging/stg_resolution", 'HAVING COUNT(*) > 1', 'HAVING COUNT(*) > 2', "one-pass: an id seen twice is not a duplicate"),
    ("staging/stg_resolution", 'ORDER BY "batch_rank", "event_time", "event_id"',
     'ORDER BY "batch_rank", "event_time" DESC, "event_id"', "one-pass impression winner: the later impression wins"),
    ("staging/stg_resolution", 'AND l."response_text" IS NOT DISTINCT FROM w."response_text"\n', "",
     "one-pass conflict check ignores response_text"),
    ("staging/stg_resolution", 'OR (NOT s."known" AND', 'OR (s."known" AND', "one-pass orphan test inverted"),
    ("adapters/oasst", 'WHEN r."n_up" > r."n_down" THEN', 'WHEN r."n_up" >= r."n_down" THEN',
     "OASST majority: a tie becomes an up-vote"),
]


def _apply(name: str, text: str) -> str:
    """The pytest side: patch load_sql when the environment names a mutant."""
    raw = os.environ.get(ENV_VAR)
    if not raw:
        return text
    target, old, new = json.loads(raw)
    return text.replace(old, new, 1) if name == target else text


def pytest_configure(config) -> None:  # a pytest plugin hook: `-p sql_mutants`
    import feedback_etl.sqlfiles as sqlfiles

    original = sqlfiles.load_sql

    def load_sql(name: str) -> str:
        return _apply(name, original(name))

    sqlfiles.load_sql = load_sql


def run_sql_mutants(python: str = sys.executable, only: list[int] | None = None) -> list[dict]:
    """Run the test file once per mutant; returns one dict per mutant (file, description, caught)."""
    results = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
               POLARS_MAX_THREADS="1", CI="true")
    for target, old, new, description in (MUTANTS if only is None else [MUTANTS[i] for i in only]):
        source = (ROOT / "sql" / f"{target}.sql").read_text(encoding="utf-8")
        count = source.count(old)
        if count != 1:
            results.append({"file": f"sql/{target}.sql", "description": description, "caught": False,
                            "error": f"stale mutant: the text occurs {count} times"})
            print(f"STALE  sql/{target}.sql: {description}", flush=True)
            continue
        done = subprocess.run(
            ["nice", "-n", "15", python, "-m", "pytest", *TESTS, "-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
             "-p", "sql_mutants"],
            cwd=ROOT, env={**env, ENV_VAR: json.dumps([target, old, new])}, capture_output=True, text=True,
        )
        failed = [line.split(" ")[1] for line in done.stdout.splitlines() if line.startswith("FAILED ")]
        caught = done.returncode == 1 and bool(failed)
        results.append({"file": f"sql/{target}.sql", "description": description, "caught": caught,
                        "killed_by": failed[:1], "returncode": done.returncode})
        print(f"{'caught' if caught else 'MISSED'} sql/{target}.sql: {description} {failed[:1]}", flush=True)
    return results


if __name__ == "__main__":
    outcome = run_sql_mutants(only=[int(a) for a in sys.argv[1:]] or None)
    print(f"{sum(m['caught'] for m in outcome)}/{len(outcome)} SQL mutants caught")
    raise SystemExit(0 if all(m["caught"] for m in outcome) else 1)
