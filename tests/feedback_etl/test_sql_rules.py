"""SQL rules that the hand-written SQL mutation set (benchmarks/mutation/sql_mutants.py) found
unguarded (issue 22): every split bucket lands in its split, and an impression resent with a
different answer text is a conflict, not a repeat."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from etl_factory import STAGED_TYPES, TYPED_TYPES, impression, make_table, staged, typed

from feedback_etl.sqlfiles import run_sql


def _bucket(user: str) -> int:
    return int(hashlib.md5(user.encode()).hexdigest()[:8], 16) % 10


def test_mart_split_buckets_7_8_9_are_train_val_test(duck):
    """Catches the SQL mutant `"bucket" < 8` -> `<= 8` (the val users join train): one user per
    boundary bucket, found by hashing, must land in train (7), val (8) and test (9)."""
    users = {}
    for k in range(1000):
        users.setdefault(_bucket(f"user{k}"), f"user{k}")
        if {7, 8, 9} <= set(users):
            break
    events = [impression(f"x{b}", user=users[b]) for b in (7, 8, 9)]
    make_table(duck, "all_events", STAGED_TYPES, staged(events))
    out = {r["exposure_id"]: r["split"] for r in run_sql(duck, "marts/feedback", {"window": timedelta(days=1)}).pl().to_dicts()}
    assert out == {"x7": "train", "x8": "val", "x9": "test"}


def test_impression_resent_with_another_answer_text_is_a_conflict(duck):
    """Catches the SQL mutant that drops `response_text` from the content comparison of
    stg_impression_losers (a changed answer under the same exposure_id would be dropped as a
    harmless repeat instead of rejected as conflicting_impression). Each field differs alone."""
    rows = typed([
        impression("x1", event_id="i1"),
        impression("x1", event_id="i1-text", response_text="a different answer"),
        impression("x1", event_id="i1-prompt", prompt_text="a different question"),
        impression("x1", event_id="i1-same"),
    ])
    make_table(duck, "typed_events", TYPED_TYPES, rows)
    make_table(duck, "warehouse_events", STAGED_TYPES, [])
    run_sql(duck, "staging/stg_duplicates", into="duplicates")
    out = {r[2]: r[4] for r in run_sql(duck, "staging/stg_impression_losers").fetchall()}
    assert out == {"i1-text": False, "i1-prompt": False, "i1-same": True}
