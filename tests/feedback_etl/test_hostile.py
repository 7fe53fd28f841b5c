"""Hostile input (issue 9): each crafted file ends as rejects or as one clear error, the warehouse
stays where it is, and nothing is written outside it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_feedback
from schemas.errors import InputFileError

GOOD = {"event_id": "e1", "event_time": "2026-01-05T10:00:00Z", "event_type": "impression", "exposure_id": "x1",
        "user_id": "u", "session_id": "s", "prompt_id": "p", "response_id": "r", "model_id": "m"}


def _run(path: Path, wh: Path) -> dict:
    return ingest(IngestConfig(inputs=(str(path),), warehouse=str(wh)))


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_deeply_nested_json_is_a_reject_not_a_crash(tmp_path):
    path = tmp_path / "nested.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"event_id": "e2", "x": ' + "[" * 50_000 + "]" * 50_000 + "}\n")
    run = _run(path, tmp_path / "wh")
    assert run["rows_read"] == 2 and run["accepted"] == 1 and run["rejected_total"] == 1


def test_decompression_bomb_is_one_clear_error_and_leaves_no_warehouse(tmp_path):
    path = tmp_path / "bomb.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=9) as handle:
        handle.write((json.dumps(GOOD) + "\n").encode())
        for _ in range(70):  # 70 MiB of one line, ~70 KiB on disk
            handle.write(b"0" * 2**20)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(InputFileError, match="longer than"):
        _run(path, tmp_path / "wh")
    assert not (tmp_path / "wh" / "feedback").exists()


def test_invalid_utf8_is_a_reject_of_its_line(tmp_path):
    """Issue 16: one rule wherever the bad byte sits (tests/feedback_etl/test_strict_typing.py has lines 1, 6, 1,101)."""
    path = tmp_path / "bad.jsonl"
    path.write_bytes((json.dumps(GOOD) + "\n").encode() + b'{"event_id": "\xff\xfe"}\n')
    run = _run(path, tmp_path / "wh")
    assert run["accepted"] == 1 and run["rejected"]["unparseable_row"] == 1


def test_a_clean_file_then_one_with_a_nul_byte_ingest_together(tmp_path):
    """A clean JSON Lines file (DuckDB splits it) followed by one holding a NUL byte (the Python
    fallback): the first file's line count must not leave a result pending on the connection."""
    clean, nul = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    clean.write_text(json.dumps(GOOD) + "\n")
    nul.write_bytes((json.dumps({**GOOD, "event_id": "e2", "exposure_id": "x2"}) + "\n").encode() + b'{"event_id": "bad\x00"}\n')
    run = ingest(IngestConfig(inputs=(str(clean), str(nul)), warehouse=str(tmp_path / "wh")))
    assert run["rows_read"] == 3 and run["accepted"] == 2 and run["rejected"]["unparseable_row"] == 1


def test_path_like_values_cannot_escape_the_warehouse(tmp_path):
    path = tmp_path / "in" / "traversal.jsonl"
    path.parent.mkdir()
    rows = [
        {**GOOD, "event_id": "a", "event_time": "../../../../tmp/escape"},
        {**GOOD, "event_id": "b", "exposure_id": "../../../../escape", "user_id": "../../u", "model_id": "/etc/passwd"},
        {**GOOD, "event_id": "c", "exposure_id": "x3", "platform": "../../../p"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    before = _files(tmp_path)
    run = _run(path, tmp_path / "wh")
    assert run["rejected"]["bad_timestamp"] == 1 and run["accepted"] == 2
    created = _files(tmp_path) - before
    wh = tmp_path / "wh"
    assert created and all(p == wh or wh in p.parents for p in created)
    # Delta layout: the log and one folder named by the run id, never by a value (issue 16).
    entries = sorted(p.name for p in (tmp_path / "wh" / "feedback").iterdir())
    assert entries == sorted(["_delta_log", run["run_id"]])
    assert sorted(read_feedback(tmp_path / "wh")["exposure_id"].to_list()) == ["../../../../escape", "x3"]


def test_huge_text_field_is_accepted_in_bounded_time(tmp_path):
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps({**GOOD, "prompt_text": "a" * 5_000_000}) + "\n")
    run = _run(path, tmp_path / "wh")
    assert run["accepted"] == 1
    assert read_feedback(tmp_path / "wh")["prompt_text"].str.len_chars().item() == 5_000_000


@pytest.mark.parametrize("name", ['x"; DROP TABLE events; --', "a\nb", ""])
def test_hostile_mapping_identifiers_fail_cleanly(tmp_path, name):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    mapping = tmp_path / "m.toml"
    mapping.write_text(f'[fields]\nevent_id = {json.dumps(name)}\n')
    from schemas.errors import CausalRMError

    with pytest.raises(CausalRMError):
        ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh"), mapping=str(mapping)))
    assert not (tmp_path / "wh" / "feedback").exists()
