"""SQL rules that the hand-written SQL mutation set (benchmarks/mutation/sql_mutants.py) found
unguarded (issue 22): every split bound holds and kept users stay, and an impression resent with a
different answer text is a conflict, not a repeat."""

from __future__ import annotations

from datetime import timedelta

from etl_factory import STAGED_TYPES, TYPED_TYPES, impression, make_table, staged, typed

from feedback_etl.ingest import build_user_splits
from feedback_etl.sqlfiles import run_sql


def test_user_splits_equal_users_split_exactly_80_10_10_and_kept_users_stay(duck):
    """Catches the SQL mutants of sql/marts/user_splits.sql that move a split bound (val users join
    train) or drop the rule that users of the committed feedback table keep their split: 100 users
    of one exposure each are 80 / 10 / 10 users exactly (evenly spaced points on the circle), and a
    user whose previous split was 'test' stays there."""
    events = [impression(f"x{k}", user=f"user{k}") for k in range(100)]
    make_table(duck, "all_events", STAGED_TYPES, staged(events))
    build_user_splits(duck)
    counts = dict(duck.execute('SELECT "split", COUNT(*) FROM "user_splits" GROUP BY 1').fetchall())
    assert counts == {"train": 80, "val": 10, "test": 10}
    new_rule = dict(duck.execute('SELECT "user_id", "split" FROM "user_splits"').fetchall())
    moved = next(u for u, s in new_rule.items() if s == "train")
    duck.execute('DROP VIEW "previous_splits"')
    make_table(duck, "previous_splits", {"user_id": "VARCHAR", "split": "VARCHAR"}, [{"user_id": moved, "split": "test"}])
    run_sql(duck, "marts/user_splits", into="user_splits")
    kept = dict(duck.execute('SELECT "user_id", "split" FROM "user_splits"').fetchall())
    assert duck.execute('SELECT COUNT(*) FROM "user_splits"').fetchall()[0][0] == 100 and kept[moved] == "test"
    out = {r["exposure_id"]: r["split"] for r in run_sql(duck, "marts/feedback", {"window": timedelta(days=1)}).pl().to_dicts()}
    assert len(out) == 100 and out[f"x{moved[4:]}"] == "test"


def _stage_resent_impressions(duck) -> None:
    """One impression sent four times under exposure x1: the original, then each content field
    changed alone (answer text, prompt text), then an identical repeat; an empty warehouse."""
    rows = typed([
        impression("x1", event_id="i1"),
        impression("x1", event_id="i1-text", response_text="a different answer"),
        impression("x1", event_id="i1-prompt", prompt_text="a different question"),
        impression("x1", event_id="i1-same"),
    ])
    make_table(duck, "typed_events", TYPED_TYPES, rows)
    make_table(duck, "warehouse_events", STAGED_TYPES, [])


def test_impression_resent_with_another_answer_text_is_a_conflict(duck):
    """Catches the SQL mutant that drops `response_text` from the content comparison of
    stg_impression_losers (a changed answer under the same exposure_id would be dropped as a
    harmless repeat instead of rejected as conflicting_impression). Each field differs alone."""
    _stage_resent_impressions(duck)
    run_sql(duck, "reference/stg_duplicates", into="duplicates")
    out = {r[2]: r[4] for r in run_sql(duck, "reference/stg_impression_losers").fetchall()}
    assert out == {"i1-text": False, "i1-prompt": False, "i1-same": True}


def test_the_later_vote_wins_even_with_the_smaller_event_id(duck):
    """Catches the SQL mutant of sql/marts/feedback.sql that orders the final-vote key by event_id
    before event_time: an up-vote with id "z" followed a minute later by a down-vote with id "a"
    ends down (event_id only breaks ties of the same instant)."""
    from etl_factory import feedback

    make_table(duck, "all_events", STAGED_TYPES, staged([
        impression("x"), feedback("x", "thumbs_up", minutes=1, event_id="z"), feedback("x", "thumbs_down", minutes=2, event_id="a"),
    ]))
    build_user_splits(duck)
    out = run_sql(duck, "marts/feedback", {"window": timedelta(days=1)}).pl().to_dicts()
    assert [(r["observed"], r["label"]) for r in out] == [(True, 0)]


def test_one_pass_resolution_compares_every_content_field(duck):
    """Catches the SQL mutant that drops `response_text` from the one-pass content comparison
    (sql/staging/stg_resolution.sql, the DuckDB engine's rules 1, 5, 6): the same rows as the
    three-file test above give the same repeat / conflict verdicts."""
    from feedback_etl.ingest import _resolve

    _stage_resent_impressions(duck)
    _resolve(duck)
    out = dict(duck.execute('SELECT "event_id", "same_content" FROM "impression_losers"').fetchall())
    assert out == {"i1-text": False, "i1-prompt": False, "i1-same": True}
