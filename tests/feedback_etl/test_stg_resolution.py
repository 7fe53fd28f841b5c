"""sql/staging/stg_resolution.sql (rules 1, 5, 6 in one pass, run by both engines) gives exactly the
rows of the three files it replaces: stg_duplicates, stg_impression_losers, stg_orphans."""

from __future__ import annotations

import random

import pytest
from etl_factory import STAGED_TYPES, TYPED_TYPES, feedback, impression, make_table, staged, typed

from feedback_etl.ingest import _resolve
from feedback_etl.sqlfiles import run_sql

FEEDBACK_TYPES = ("thumbs_up", "thumbs_down", "vote_cleared", "copy", "regenerate", "share")


def _separate(duck) -> dict[str, set]:
    run_sql(duck, "reference/stg_duplicates", into="duplicates")
    out = {
        "duplicates": set(duck.execute('SELECT * FROM "duplicates"').fetchall()),
        "impression_losers": set(run_sql(duck, "reference/stg_impression_losers").fetchall()),
        "orphans": set(run_sql(duck, "reference/stg_orphans").fetchall()),
    }
    duck.execute('DROP TABLE "duplicates"')
    return out


def _one_pass(duck) -> dict[str, set]:
    _resolve(duck)
    return {name: set(duck.execute(f'SELECT * FROM "{name}"').fetchall()) for name in ("duplicates", "impression_losers", "orphans")}


def _messy(seed: int) -> tuple[list[dict], list[dict]]:
    """A run (two files) and a warehouse with repeated ids, repeated and conflicting impressions,
    orphans, impressions that only exist as a duplicate copy and rejected rows."""
    rng = random.Random(seed)
    warehouse = [impression(f"x{k}", minutes=k, user=f"u{k % 3}") for k in range(0, 12, 2)]
    rows: list[dict] = []
    for k in range(14):
        x = f"x{rng.randrange(16)}"
        kind = rng.random()
        if kind < 0.35:
            rows.append(impression(x, minutes=rng.choice([0, 1, 2]), user=rng.choice(["u1", "u2"]),
                                   event_id=f"i{rng.randrange(8)}"))
        elif kind < 0.45 and rows and rows[-1]["event_type"] == "impression":
            rows.append({**rows[-1], "event_id": f"i{rng.randrange(8)}"})  # a resend under a new id
        elif kind < 0.55:
            rows.append(dict(rng.choice(warehouse)))  # a resend of a warehouse event
        else:
            rows.append(feedback(x, rng.choice(FEEDBACK_TYPES), minutes=rng.randrange(5), event_id=f"f{rng.randrange(12)}"))
    run = typed(rows[:7], file_index=0) + typed(rows[7:], file_index=1)
    run.append({**run[0], "row_number": 99, "reject_reason": "bad_timestamp"})  # a rejected copy never counts
    return run, warehouse


@pytest.mark.parametrize("seed", range(25))
def test_one_pass_equals_the_three_separate_rules(duck, seed):
    run, warehouse = _messy(seed)
    make_table(duck, "typed_events", TYPED_TYPES, run)
    make_table(duck, "warehouse_events", STAGED_TYPES, staged(warehouse))
    separate = _separate(duck)
    assert _one_pass(duck) == separate


def test_one_pass_on_the_hand_built_cases(duck):
    rows = typed([
        impression("x1", minutes=5, event_id="i1-late"),     # conflict: later than the winner
        impression("x1", minutes=0, event_id="i1"),          # winner
        impression("x2", minutes=0, event_id="i2-resend"),   # repeats the warehouse's: same content
        impression("x3", minutes=0, event_id="i3-other", user_id="u9"),  # conflicts with the warehouse's
        feedback("x9", "copy", minutes=1),                   # orphan
        feedback("x2", "copy", minutes=1, event_id="c2"),
        feedback("x2", "copy", minutes=1, event_id="c2"),    # duplicate
    ])
    make_table(duck, "typed_events", TYPED_TYPES, rows)
    make_table(duck, "warehouse_events", STAGED_TYPES, staged([impression("x2", event_id="i2"), impression("x3", event_id="i3")]))
    separate = _separate(duck)
    out = _one_pass(duck)
    assert {r[2]: r[4] for r in out["impression_losers"]} == {"i1-late": False, "i2-resend": True, "i3-other": False}
    assert {r[3] for r in out["orphans"]} == {"x9"}
    assert out["duplicates"] == {(0, 7, "c2")}
    assert out == separate


def test_warehouse_impressions_are_only_ranked_against_this_runs_impressions(duck):
    """Two warehouse impressions of one exposure (as a warehouse written before rule 6 could hold)
    are not contested by a run that brings only feedback for it."""
    old = [impression("x1", event_id="w1"), impression("x1", minutes=1, event_id="w2")]
    make_table(duck, "typed_events", TYPED_TYPES, typed([feedback("x1", "copy", minutes=2)]))
    make_table(duck, "warehouse_events", STAGED_TYPES, staged(old))
    separate = _separate(duck)
    assert _one_pass(duck) == separate and separate["impression_losers"] == set()
