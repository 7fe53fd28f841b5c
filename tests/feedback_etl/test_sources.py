"""Readers, source adapters on the shared real data, mapping files, and bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_feedback, read_rejects
from schemas.errors import ConfigError, InputFileError

IMPRESSION = {"event_id": "i1", "event_time": "2026-01-05T10:00:00Z", "event_type": "impression", "exposure_id": "x1",
              "user_id": "u1", "session_id": "s1", "prompt_id": "p1", "response_id": "r1", "model_id": "m1"}
VOTE = {"event_id": "v1", "event_time": "2026-01-05T10:01:00Z", "event_type": "thumbs_up", "exposure_id": "x1"}


def _snapshot(wh: Path) -> dict[str, str]:
    return {str(p.relative_to(wh)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(wh.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- real data through the adapters


def test_oasst_adapter_on_shared_data(shared_dataset, tmp_path):
    oasst = shared_dataset("oasst")
    run = ingest(IngestConfig(inputs=(str(oasst / "en_100_tree.jsonl"),), warehouse=str(tmp_path / "wh"), source="oasst"))
    feedback = read_feedback(tmp_path / "wh")
    assert feedback.height == 687  # assistant replies
    assert run["accepted_by_type"] == {"impression": 687, "thumbs_up": 854, "thumbs_down": 372}  # emoji totals
    assert run["files"][0]["source_records"] == 100 and run["rejected_total"] == 0
    # observed = any emoji vote; label = 1 exactly when +1 outnumber -1
    counts = _oasst_emoji_counts(oasst / "en_100_tree.jsonl")
    merged = feedback.join(counts, left_on="exposure_id", right_on="message_id")
    assert merged.height == 687
    assert (merged["observed"] == ((merged["up"] + merged["down"]) > 0)).all()
    observed = merged.filter(pl.col("observed"))
    assert (observed["label"] == (observed["up"] > observed["down"]).cast(pl.Int8)).all()


def _oasst_emoji_counts(path: Path) -> pl.DataFrame:
    rows = []

    def walk(message: dict) -> None:
        if message.get("role") == "assistant":
            emojis = message.get("emojis") or {}
            rows.append((message["message_id"], emojis.get("+1", 0), emojis.get("-1", 0)))
        for reply in message.get("replies", []):
            walk(reply)

    for line in path.read_text().splitlines():
        walk(json.loads(line)["prompt"])
    return pl.DataFrame(rows, schema=["message_id", "up", "down"], orient="row")


def test_ratings_adapter_on_coat(shared_dataset, tmp_path):
    path = shared_dataset("coat") / "train.ascii"
    run = ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh"), source="ratings"))
    feedback = read_feedback(tmp_path / "wh")
    matrix = np.loadtxt(path)
    assert matrix.shape == (290, 300) and feedback.height == 290 * 300
    assert feedback["observed"].sum() == (matrix > 0).sum() == 6_960
    assert feedback["label"].sum() == (matrix >= 4).sum()
    assert run["files"][0]["source_records"] == 290
    # spot-check one cell both ways
    u, i = np.argwhere(matrix == 5)[0]
    row = feedback.filter(pl.col("exposure_id") == f"train:u{u}:i{i}").to_dicts()[0]
    assert (row["observed"], row["label"], row["user_id"], row["response_id"]) == (True, 1, f"u{u}", f"i{i}")


def test_ratings_triples_and_threshold(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("user_id,item_id,rating\na,i1,5\na,i2,3\nb,i1,4\nb,i3,oops\n")
    run = ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh"), source="ratings", rating_threshold=3.5))
    feedback = read_feedback(tmp_path / "wh")
    assert feedback.height == 4  # users {a, b} x items {i1, i2}; the bad triple is rejected
    assert dict(feedback.filter(pl.col("observed")).select("exposure_id", "label").iter_rows()) == {
        "ratings:a:i1": 1, "ratings:a:i2": 0, "ratings:b:i1": 1}
    assert run["rejected"]["unparseable_row"] == 1


def test_ratings_short_triple_and_matrix_with_triples(tmp_path):
    # A line with a missing field is rejected with its raw text (it once crashed the ingest: the raw
    # text was cast to JSON), and a matrix and triples ingest together.
    triples = tmp_path / "ratings.csv"
    triples.write_text("user_id,item_id,rating\na,i1,5\nb,i2\nb,i1,2\n")
    matrix = tmp_path / "train.txt"
    matrix.write_text("0 5\n3 0\n")
    run = ingest(IngestConfig(inputs=(str(triples), str(matrix)), warehouse=str(tmp_path / "wh"), source="ratings"))
    assert run["rejected"]["unparseable_row"] == 1
    assert read_rejects(tmp_path / "wh")["payload"].to_list() == ["b,i2"]
    feedback = read_feedback(tmp_path / "wh")
    assert feedback.height == 2 + 4  # {a, b} x {i1}; 2 x 2 cells
    assert dict(feedback.filter(pl.col("observed")).select("exposure_id", "label").iter_rows()) == {
        "ratings:a:i1": 1, "ratings:b:i1": 0, "train:u0:i1": 1, "train:u1:i0": 0}


LANGFUSE_TRACES = [
    {"id": "t1", "timestamp": "2026-02-01T09:00:00.000Z", "userId": "alice", "sessionId": "sA", "name": "chat",
     "input": [{"role": "user", "content": "hi"}], "output": {"role": "assistant", "content": "hello"}, "release": "v1",
     "scores": [{"id": "s1", "traceId": "t1", "name": "user-feedback", "value": 1, "dataType": "NUMERIC", "timestamp": "2026-02-01T09:00:30.000Z"},
                {"id": "s2", "traceId": "t1", "name": "thumbs-copy", "value": 1, "dataType": "BOOLEAN", "timestamp": "2026-02-01T09:00:40.000Z"},
                {"id": "s3", "traceId": "t1", "name": "hallucination", "value": 0.1, "dataType": "NUMERIC"}]},
    {"id": "t2", "timestamp": "2026-02-01T09:05:00.000Z", "userId": "bob", "input": "2+2?", "output": "4",
     "scores": [{"id": "s4", "traceId": "t2", "name": "user-feedback", "value": -1, "timestamp": "2026-02-01T09:06:00.000Z"}]},
    {"id": "t3", "timestamp": "2026-02-01T09:07:00.000Z", "userId": "bob", "input": "x", "output": "y", "scores": []},
    {"id": "t4", "timestamp": "2026-02-01T09:08:00.000Z", "input": "no user", "output": "z", "scores": []},
]


@pytest.mark.parametrize("shape", ["data", "array", "jsonl"])
def test_langfuse_adapter(tmp_path, shape):
    mapping = tmp_path / "map.toml"
    mapping.write_text('[langfuse.scores]\n"user-feedback" = "vote"\n"thumbs-copy" = "copy"\n')
    if shape == "jsonl":
        path = tmp_path / "traces.jsonl"
        path.write_text("".join(json.dumps(t) + "\n" for t in LANGFUSE_TRACES) + "not json\n")
    else:
        path = tmp_path / "traces.json"
        path.write_text(json.dumps({"data": LANGFUSE_TRACES, "meta": {"page": 1}} if shape == "data" else LANGFUSE_TRACES))
    run = ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh"), source="langfuse", mapping=str(mapping)))
    feedback = read_feedback(tmp_path / "wh").sort("exposure_id")
    assert feedback["exposure_id"].to_list() == ["t1", "t2", "t3"]
    assert feedback.select("observed", "label", "copied").rows() == [(True, 1, True), (True, 0, False), (False, None, False)]
    assert feedback["session_id"].to_list() == ["sA", "t2", "t3"] and feedback["model_id"].to_list()[0] == "v1"
    assert run["rejected"]["missing_field"] == 1  # t4 has no user
    assert run["rejected"]["unparseable_row"] == (1 if shape == "jsonl" else 0)


def test_langfuse_export_of_20k_traces_as_one_json_array_ingests_within_256mb(tmp_path):
    """A JSON-array export is unnested in the select list: the lateral UNNEST ... WITH ORDINALITY it
    replaced ran out of DuckDB's memory on this 7 MB file at 256MB ("cannot read input: Out of Memory")."""
    n = 20_000
    traces = [{"id": f"t{i}", "timestamp": "2026-02-01T09:05:00.000Z", "userId": f"u{i % 97}", "input": "question " * 10,
               "output": "answer " * 40,
               "scores": [{"id": f"s{i}", "traceId": f"t{i}", "name": "user-feedback", "value": i % 2,
                           "timestamp": "2026-02-01T09:06:00.000Z"}] if i % 5 == 0 else []} for i in range(n)]
    del traces[12_346]["userId"]  # one rejected trace, to check that rows keep their place in the array
    path = tmp_path / "traces.json"
    path.write_text(json.dumps(traces))
    mapping = tmp_path / "map.toml"
    mapping.write_text('[langfuse.scores]\n"user-feedback" = "vote"\n')
    run = ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh"), source="langfuse", mapping=str(mapping),
                              memory_limit="256MB"))
    assert run["reconciliation"] == {"rows_read": n + n // 5, "accepted": n + n // 5 - 1, "rejected": 1, "duplicates": 0,
                                     "balanced": True}
    feedback = read_feedback(tmp_path / "wh")
    assert feedback.height == n - 1 and int(feedback["observed"].sum()) == n // 5
    assert feedback.filter(pl.col("exposure_id") == "t12340").select("observed", "label").rows() == [(True, 0)]
    rejects = read_rejects(tmp_path / "wh")
    # the adapter numbers its rows trace by trace, each trace's score after it: 12,346 traces and 2,470 scores come first
    assert rejects.select("reason", "exposure_id", "row_number").rows() == [("missing_field", "t12346", 12_346 + 2_470 + 1)]


def test_a_truncated_json_array_export_fails_naming_the_users_file_and_writes_nothing(tmp_path):
    path = tmp_path / "traces.json"
    path.write_text(json.dumps(LANGFUSE_TRACES)[:-40])  # cut inside the last trace
    mapping = tmp_path / "map.toml"
    mapping.write_text('[langfuse.scores]\n"user-feedback" = "vote"\n')
    with pytest.raises(InputFileError, match=r"Malformed JSON in file \"[^\"]*traces\.json\"") as err:
        ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh"), source="langfuse", mapping=str(mapping)))
    assert str(path) in str(err.value) and "causalrm-links" not in str(err.value)
    assert not (tmp_path / "wh").exists()


# ---------------------------------------------------------------- canonical readers and mapping


def test_csv_and_gzip_jsonl_inputs(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text(
        "event_id,event_time,event_type,exposure_id,user_id,session_id,prompt_id,response_id,model_id,position\n"
        "i1,2026-01-05T10:00:00Z,impression,x1,u1,s1,p1,r1,m1,2\n"
        'broken,"unterminated\n'
    )
    gz = tmp_path / "b.jsonl.gz"
    with gzip.open(gz, "wt") as handle:
        handle.write(json.dumps(VOTE) + "\n\n" + "[1, 2]\n")
    run = ingest(IngestConfig(inputs=(str(csv), str(gz)), warehouse=str(tmp_path / "wh")))
    assert run["reconciliation"] == {"rows_read": 4, "accepted": 2, "rejected": 2, "duplicates": 0, "balanced": True}
    assert read_feedback(tmp_path / "wh").select("observed", "label", "position").rows() == [(True, 1, 2)]
    rejects = read_rejects(tmp_path / "wh")
    assert rejects["reason"].to_list() == ["unparseable_row", "unparseable_row"]
    assert rejects.filter(pl.col("source_file").str.ends_with(".gz"))["row_number"].to_list() == [3]  # line 3 (blank line 2 skipped)


def test_mapping_renames_fields_and_event_types(tmp_path):
    mapping = tmp_path / "map.toml"
    mapping.write_text('[fields]\nevent_id = "id"\nevent_time = "ts"\nevent_type = "action"\nexposure_id = "impression-id"\n'
                       '[event_types]\nshown = "impression"\nlike = "thumbs_up"\n')
    rename = {"event_id": "id", "event_time": "ts", "event_type": "action", "exposure_id": "impression-id"}
    rows = [{rename.get(k, k): v for k, v in r.items()} for r in (IMPRESSION, VOTE)]
    rows[0]["action"], rows[1]["action"] = "shown", "like"
    rows.append({**rows[1], "id": "v2", "action": "thumbs_sideways", "extra_field": 1})
    path = tmp_path / "inhouse.parquet"
    pl.DataFrame(rows).write_parquet(path)
    run = ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh"), mapping=str(mapping)))
    assert read_feedback(tmp_path / "wh").select("exposure_id", "label").rows() == [("x1", 1)]
    assert run["rejected"]["unknown_event_type"] == 1
    assert run["files"][0]["unknown_columns"] == ["extra_field"] and run["mapping"]["fields"]["event_id"] == "id"
    payload = json.loads(read_rejects(tmp_path / "wh")["payload"][0])
    assert payload["action"] == "thumbs_sideways" and payload["extra_field"] == 1  # the raw row, extra columns included


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[fields]\nevent_id = \'x"; DROP TABLE events; --\'\n', "source column name"),
        ('[fields]\nevent_id = "../../etc/passwd"\n', "source column name"),
        ('[fields]\nnot_a_column = "a"\n', "not a canonical column"),
        ('[event_types]\nlike = "thumbs_sideways"\n', "not a canonical event type"),
        ('[langfuse.scores]\nfeedback = "vibes"\n', "not a channel"),
        ('[sql]\nquery = "DROP"\n', "unknown mapping section"),
    ],
)
def test_bad_mapping_files_fail_cleanly(tmp_path, toml, message):
    mapping = tmp_path / "map.toml"
    mapping.write_text(toml)
    (tmp_path / "a.jsonl").write_text(json.dumps(IMPRESSION) + "\n")
    with pytest.raises(ConfigError, match=message):
        ingest(IngestConfig(inputs=(str(tmp_path / "a.jsonl"),), warehouse=str(tmp_path / "wh"), mapping=str(mapping)))
    assert not (tmp_path / "wh").exists()


# ---------------------------------------------------------------- bad input: one clear error, warehouse untouched


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (path, --source, message)."""
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet")
    no_column = tmp_path / "no_time.parquet"
    pl.DataFrame([{k: v for k, v in IMPRESSION.items() if k != "event_time"}]).write_parquet(no_column)
    csv_no_column = tmp_path / "no_type.csv"
    csv_no_column.write_text("event_id,event_time,exposure_id\na,2026-01-01,x\n")
    not_jsonl = tmp_path / "notes.jsonl"
    not_jsonl.write_text("hello\nworld\n")
    jsonl_no_key = tmp_path / "nokey.jsonl"
    jsonl_no_key.write_text(json.dumps({k: v for k, v in IMPRESSION.items() if k != "exposure_id"}) + "\n")
    bad_gzip = tmp_path / "fake.jsonl.gz"
    bad_gzip.write_text("not gzip")
    unknown_suffix = tmp_path / "events.xlsx"
    unknown_suffix.write_text("x")
    oasst_wrong = tmp_path / "events.jsonl"
    oasst_wrong.write_text(json.dumps(IMPRESSION) + "\n")
    return {
        "garbage parquet": (garbage, "canonical", "cannot read file as Parquet"),
        "missing column": (no_column, "canonical", "lacks required column 'event_time'"),
        "csv missing column": (csv_no_column, "canonical", "lacks required column 'event_type'"),
        "not json lines": (not_jsonl, "canonical", "not JSON Lines"),
        "jsonl missing key": (jsonl_no_key, "canonical", "lacks required column 'exposure_id'"),
        "bad gzip": (bad_gzip, "canonical", "cannot read file as UTF-8 JSON Lines"),
        "unknown suffix": (unknown_suffix, "canonical", "cannot read .xlsx files"),
        "missing file": (tmp_path / "nope.parquet", "canonical", "does not exist"),
        "wrong source": (oasst_wrong, "oasst", "lacks required column 'message_tree_id'"),
        "empty folder": (tmp_path / "empty", "canonical", "folder holds no canonical input file"),
    }


BAD_CASES = ["garbage parquet", "missing column", "csv missing column", "not json lines", "jsonl missing key",
             "bad gzip", "unknown suffix", "missing file", "wrong source", "empty folder"]


@pytest.fixture(scope="module")
def good_warehouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("good")
    good = root / "good.jsonl"
    good.write_text(json.dumps(IMPRESSION) + "\n")
    ingest(IngestConfig(inputs=(str(good),), warehouse=str(root / "wh")))
    return good, root / "wh"


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_clear_error_and_the_warehouse_is_untouched(tmp_path, good_warehouse, case):
    (tmp_path / "empty").mkdir()
    good, wh = good_warehouse
    before = _snapshot(wh)
    path, source, message = _bad_inputs(tmp_path)[case]
    inputs = (str(good), str(path)) if source == "canonical" else (str(path),)  # a good file before it changes nothing
    with pytest.raises(InputFileError, match=message) as info:
        ingest(IngestConfig(inputs=inputs, warehouse=str(wh), source=source, force=True))
    assert str(path.name) in info.value.one_line()
    assert _snapshot(wh) == before
    with pytest.raises(InputFileError):
        ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh2"), source=source))
    assert not (tmp_path / "wh2").exists()  # a failed first run leaves no folder behind
