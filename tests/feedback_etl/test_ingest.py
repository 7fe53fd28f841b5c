"""End to end: simulated messy logs -> `causalrm ingest` -> tables that match the simulator's truth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_events, read_feedback, read_rejects
from feedback_etl.simulator import SimulationConfig, simulate
from schemas.errors import ConfigError


@pytest.fixture(scope="module")
def messy_warehouse(messy_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    wh = tmp_path_factory.mktemp("messy_wh") / "wh"
    run = ingest(IngestConfig(inputs=(str(messy_logs / "events"),), warehouse=str(wh)))
    return wh, run


@pytest.fixture(scope="module")
def messy_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small messy logs in JSON Lines: the simulator adds unparseable lines there."""
    out = tmp_path_factory.mktemp("messy_jsonl")
    simulate(SimulationConfig(out=str(out), n_exposures=2_000, messiness=1.0, seed=4, format="jsonl"))
    return out


def _assert_matches_truth(wh: Path, logs: Path) -> None:
    feedback = read_feedback(wh)
    truth = pl.read_parquet(logs / "truth.parquet")
    assert feedback.height == truth.height
    joined = feedback.join(truth, on="exposure_id", how="full", suffix="_truth", coalesce=True)
    for column in ("observed", "label", "copied", "regenerated", "shared", "solicited", "n_late_events", "user_id", "prompt_id", "response_id"):
        mismatched = joined.filter(pl.col(column).ne_missing(pl.col(f"{column}_truth")))
        assert mismatched.height == 0, f"{column}: {mismatched.head(3).to_dicts()}"


def _assert_counts_match_simulation(run: dict, logs: Path) -> None:
    counts = json.loads((logs / "simulation.json").read_text())["counts"]
    assert run["rows_read"] == counts["rows_written"]
    assert run["duplicates"] == counts["duplicates"]
    assert run["late_events"] == counts["late_events"]
    assert run["rejected"]["orphan_feedback"] == counts["orphan_feedback"]
    for reason, n in counts["malformed"].items():
        assert run["rejected"][reason] == n, reason
    assert run["rejected"]["conflicting_impression"] == 0
    assert run["accepted_by_type"]["impression"] == counts["impressions"]
    assert run["reconciliation"]["balanced"]


def test_messy_parquet_logs_match_truth_and_simulation_counts(messy_warehouse, messy_logs):
    wh, run = messy_warehouse
    _assert_matches_truth(wh, messy_logs)
    _assert_counts_match_simulation(run, messy_logs)
    truth = pl.read_parquet(messy_logs / "truth.parquet")
    assert run["late_events"] == truth["n_late_events"].sum() > 0
    assert run["duplicates"] == truth["n_duplicate_events"].sum() > 0
    manifest = json.loads((wh / "manifest.json").read_text())
    assert manifest["runs"][-1]["run_id"] == run["run_id"]
    assert manifest["runs"][-1]["files"][0]["sha256"] and manifest["tables"]["feedback"] == truth.height


def test_messy_jsonl_logs_with_unparseable_lines(messy_jsonl, tmp_path):
    run = ingest(IngestConfig(inputs=(str(messy_jsonl / "events"),), warehouse=str(tmp_path / "wh")))
    _assert_matches_truth(tmp_path / "wh", messy_jsonl)
    _assert_counts_match_simulation(run, messy_jsonl)
    assert run["rejected"]["unparseable_row"] > 0
    rejects = read_rejects(tmp_path / "wh")
    bad = rejects.filter(pl.col("reason") == "unparseable_row")
    lines = (next((messy_jsonl / "events").glob("*.jsonl"))).read_text().splitlines()
    for row in bad.iter_rows(named=True):
        assert lines[row["row_number"] - 1] == row["payload"]  # raw line, by its line number


def test_warehouse_tables_and_rejects(messy_warehouse):
    wh, run = messy_warehouse
    events = read_events(wh)
    assert events.height == run["accepted"] and events["event_id"].n_unique() == events.height
    assert set(events["run_id"]) == {run["run_id"]}
    rejects = read_rejects(wh)
    assert rejects.height == run["rejected_total"]
    assert rejects.group_by("reason").len().sort("reason").rows() == sorted((k, v) for k, v in run["rejected"].items() if v)
    assert rejects["payload"].null_count() == 0 and rejects["row_number"].min() >= 1
    assert not any(p.name.startswith(".ingest-staging") for p in wh.iterdir())


def test_feedback_features(messy_warehouse):
    wh, _ = messy_warehouse
    feedback = read_feedback(wh)
    # point in time: the first exposure of each user has no history
    first = feedback.sort("impression_time").group_by("user_id").first()
    assert (first["user_prior_exposures"] == 0).all() and first["user_prior_feedback_rate"].null_count() == first.height
    assert (feedback["user_prior_votes"] <= feedback["user_prior_exposures"]).all()
    # a user never straddles splits, and the split is roughly 80 / 10 / 10 over users
    assert feedback.group_by("user_id").agg(pl.col("split").n_unique())["split"].max() == 1
    observed = feedback.filter(pl.col("observed"))
    assert observed["feedback_delay_s"].null_count() == 0 and (observed["feedback_delay_s"] >= 0).all()
    assert feedback.filter(~pl.col("observed"))["feedback_delay_s"].null_count() == feedback.height - observed.height
    assert (feedback["n_events"] >= 1 + feedback["observed"].cast(pl.Int32)).all()


def test_window_option_changes_lateness(messy_logs, tmp_path):
    run = ingest(IngestConfig(inputs=(str(messy_logs / "events"),), warehouse=str(tmp_path / "wh"), window="200d"))
    assert run["late_events"] == 0 and run["window_seconds"] == 200 * 86400


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": "24x"}, "attribution window"),
        ({"window": "0h"}, "attribution window"),
        ({"source": "kafka"}, "source must be one of"),
        ({"memory_limit": "lots"}, "memory_limit"),
        ({"inputs": ()}, "at least one input"),
        ({"threads": 0}, "threads"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        IngestConfig(**{"inputs": ("x",), "warehouse": "wh", **kwargs})


def test_fixture_warehouse_is_built_by_ingest(warehouse):
    feedback = read_feedback(warehouse)
    truth = pl.read_parquet(warehouse.parent / "truth.parquet")
    assert feedback.height == truth.height == 8_000
    joined = feedback.join(truth, on="exposure_id")
    assert (joined["observed"] == joined["observed_right"]).all()
    assert (warehouse / "manifest.json").exists() and any((warehouse / "events").rglob("*.parquet"))


def test_second_source_reusing_exposure_ids_conflicts(warehouse, messy_logs, tmp_path):
    """Simulations number exposures from 0, so messy_logs reuses the fixture warehouse's ids with
    other content: every impression is a conflicting_impression (rule 6) and the table keeps its rows."""
    wh = tmp_path / "wh"
    shutil.copytree(warehouse, wh)
    run = ingest(IngestConfig(inputs=(str(messy_logs / "events"),), warehouse=str(wh)))
    assert run["rejected"]["conflicting_impression"] == 5_000
    assert read_feedback(wh).height == 8_000


def test_read_feedback_names_a_missing_contract_column(warehouse, tmp_path):
    from schemas.errors import WarehouseError

    from feedback_etl.io import write_feedback

    wh = tmp_path / "wh"
    # A feedback table committed by another version or by hand, without one contract column.
    write_feedback(read_feedback(warehouse).drop("split"), wh / "feedback")
    with pytest.raises(WarehouseError, match="lacks contract column"):
        read_feedback(wh)


def test_rejects_are_written_in_parts_of_batch_rows_in_file_order(tmp_path: Path) -> None:
    """DuckDB writes the rejects itself (issue 19): still parts of at most batch_rows rows, every
    row once, in file and line order across the parts."""
    import pyarrow.parquet as pq

    from feedback_etl.warehouse import snapshot

    logs = tmp_path / "events.jsonl"
    impression = {"event_id": "e1", "event_time": "2026-01-01T00:00:00Z", "event_type": "impression", "exposure_id": "x1",
                  "user_id": "u1", "session_id": "s1", "prompt_id": "p1", "response_id": "r1", "model_id": "m1"}
    logs.write_text("\n".join([json.dumps(impression), *(f"bad line {k}" for k in range(2_500))]) + "\n", encoding="utf-8")
    wh = tmp_path / "wh"
    run = ingest(IngestConfig(inputs=(str(logs),), warehouse=str(wh), batch_rows=1_000))
    assert run["rejected"]["unparseable_row"] == run["rejected_total"] == 2_500
    files = snapshot(wh, "rejects").files
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [1_000, 1_000, 500]
    lines = [n for f in files for n in pq.read_table(f, columns=["row_number"]).column("row_number").to_pylist()]
    assert lines == list(range(2, 2_502))
    assert read_rejects(wh).height == 2_500


@pytest.mark.parametrize("source", ["ratings", "canonical"])
def test_a_day_larger_than_batch_rows_is_written_in_parts_of_batch_rows(tmp_path: Path, source: str) -> None:
    """A ratings log puts every cell on one day (15.4M rows held as one frame took 7 GB, issue 23):
    a day larger than batch_rows is written by one sorted COPY as files of at most batch_rows rows
    (whole 2,048-row groups), in exposure_id order across files, with the same rows as one part
    (the ratings source has a feature column; canonical Parquet has its content joined back)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from feedback_etl.warehouse import snapshot

    if source == "ratings":
        logs = tmp_path / "ratings.csv"
        logs.write_text("user_id,item_id,rating\n" + "".join(f"u{u},i{i},{1 + (u * i) % 5}\n" for u in range(100) for i in range(100) if (u + i) % 7 == 0))
    else:
        logs = tmp_path / "events.parquet"
        n = 10_000
        pq.write_table(pa.table({
            "event_id": [f"e{k}" for k in range(n)], "event_time": ["2026-01-01T10:00:00Z"] * n,
            "event_type": ["impression"] * n, "exposure_id": [f"x{k:05d}" for k in range(n)],
            "user_id": [f"u{k % 40}" for k in range(n)], "session_id": ["s"] * n, "prompt_id": ["p"] * n,
            "response_id": [f"r{k}" for k in range(n)], "model_id": ["m"] * n,
            "prompt_text": ["a prompt"] * n, "response_text": [f"answer {k}" for k in range(n)],
        }), logs)
    tables = {}
    for batch_rows in (4_096, 1_000_000):
        wh = tmp_path / f"wh{batch_rows}"
        ingest(IngestConfig(inputs=(str(logs),), warehouse=str(wh), source=source, batch_rows=batch_rows))
        files = snapshot(wh, "feedback").files
        sizes = [pq.ParquetFile(f).metadata.num_rows for f in files]
        tables[batch_rows] = pl.concat([pl.read_parquet(f) for f in files])
        assert read_feedback(wh).select(pl.col("impression_date").n_unique()).item() == 1
        assert sizes == ([4_096, 4_096, 1_808] if batch_rows == 4_096 else [10_000])
    small, whole = tables[4_096], tables[1_000_000]
    assert small["exposure_id"].to_list() == sorted(small["exposure_id"].to_list())  # parts in exposure_id order
    assert small.sort("exposure_id").equals(whole.sort("exposure_id"))


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_wide_rows_are_written_in_parts_a_third_of_the_memory_limit_holds(tmp_path: Path, fmt: str) -> None:
    """Chat-length texts: 1M rows of them (1.5 KB each) held in one part failed DuckDB's 2GB limit.
    A part holds at most a third of --memory-limit at the bytes a row measures: days are grouped
    into such parts, and a day larger than one is cut into exposure_id ranges. The rows are the same
    as one part's, in exposure_id order within each part and across a day's ranges (Parquet input:
    content joined back from the events files; JSON Lines: the mart holds the texts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from feedback_etl.warehouse import snapshot

    rows = []
    for k in range(14_000):  # day 1 holds 10,000 impressions, day 2 holds 4,000
        day = "2026-01-01" if k < 10_000 else "2026-01-02"
        rows.append({
            "event_id": f"e{k}", "event_time": f"{day}T10:00:00Z", "event_type": "impression",
            "exposure_id": f"x{(k * 7919) % 14_000:05d}", "user_id": f"u{k % 40}", "session_id": "s",
            "prompt_id": "p", "response_id": f"r{k}", "model_id": "m", "prompt_text": "a prompt",
            "response_text": f"answer {k} " + "text " * 1_600,  # 8 KB
        })
    if fmt == "parquet":
        logs = tmp_path / "events.parquet"
        pq.write_table(pa.Table.from_pylist(rows), logs)
    else:
        logs = tmp_path / "events.jsonl"
        logs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tables = {}
    for limit in ("192MB", "2GB"):  # a third of 192 MB holds about 7,800 of these rows
        wh = tmp_path / f"wh{limit}"
        ingest(IngestConfig(inputs=(str(logs),), warehouse=str(wh), memory_limit=limit))
        parts = [pl.read_parquet(f) for f in snapshot(wh, "feedback").files]
        tables[limit] = parts
    small, whole = tables["192MB"], tables["2GB"]
    assert [p.height for p in whole] == [14_000]
    # day 1 cut into two exposure_id ranges, then day 2 whole; each part's texts within a third of 192 MB
    assert len(small) == 3 and small[2].height == 4_000 and small[0].height + small[1].height == 10_000
    assert all(p["response_text"].str.len_bytes().sum() < 192 * 2**20 // 3 for p in small)
    assert [p["impression_date"].n_unique() for p in small] == [1, 1, 1]
    day_one = pl.concat(small[:2])["exposure_id"].to_list()
    assert day_one == sorted(day_one)  # ranges in exposure_id order across files
    assert all(p["exposure_id"].to_list() == sorted(p["exposure_id"].to_list()) for p in small)
    assert pl.concat(small).sort("exposure_id").equals(whole[0].sort("exposure_id"))


def test_running_out_of_memory_is_one_line_naming_the_step_and_commits_nothing(tmp_path: Path) -> None:
    """DuckDB's out-of-memory error (here a 16MB limit for 80 MB of texts) becomes a ResourceError
    naming the limit, the step and the fix; a first run leaves no warehouse folder behind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.errors import ResourceError

    n = 20_000
    logs = tmp_path / "events.parquet"
    pq.write_table(pa.table({
        "event_id": [f"e{k}" for k in range(n)], "event_time": ["2026-01-01T10:00:00Z"] * n,
        "event_type": ["impression"] * n, "exposure_id": [f"x{k}" for k in range(n)], "user_id": ["u"] * n,
        "session_id": ["s"] * n, "prompt_id": ["p"] * n, "response_id": ["r"] * n, "model_id": ["m"] * n,
        "prompt_text": ["p"] * n, "response_text": [f"{k} " + "t" * 4_000 for k in range(n)],
    }), logs)
    wh = tmp_path / "wh"
    with pytest.raises(ResourceError) as caught:
        ingest(IngestConfig(inputs=(str(logs),), warehouse=str(wh), memory_limit="16MB"))
    assert "--memory-limit 16MB" in caught.value.what and caught.value.where.startswith("ingest step ")
    assert "raise --memory-limit" in caught.value.fix and "\n" not in str(caught.value)
    assert not wh.exists()
