"""`causalrm ingest` on the command line: a summary line on success, one red line and exit 1 on bad input."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli import app
from feedback_etl.io import read_feedback

runner = CliRunner()


def test_cli_ingest_messy_logs(messy_logs, tmp_path):
    wh = tmp_path / "wh"
    result = runner.invoke(app, ["ingest", str(messy_logs / "events"), "--warehouse", str(wh), "--window", "24h"])
    assert result.exit_code == 0, result.output
    counts = json.loads((messy_logs / "simulation.json").read_text())["counts"]
    assert f"read {counts['rows_written']:,} rows from 1 file(s)" in result.output
    assert f"duplicates {counts['duplicates']:,}" in result.output and "feedback table: 5,000 exposures" in result.output
    assert read_feedback(wh).height == 5_000
    again = runner.invoke(app, ["ingest", str(messy_logs / "events"), "--warehouse", str(wh)])
    assert again.exit_code == 0 and "1 already ingested, skipped" in again.output


def test_cli_ingest_bad_input_exits_1_without_traceback(tmp_path):
    bad = tmp_path / "events.parquet"
    bad.write_bytes(b"not parquet at all")
    result = runner.invoke(app, ["ingest", str(bad), "--warehouse", str(tmp_path / "wh")])
    assert result.exit_code == 1
    assert "error:" in result.output and "cannot read file as Parquet" in result.output and "events.parquet" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "wh").exists()


def test_cli_ingest_bad_option_is_a_usage_error(tmp_path):
    """The parser refuses it (exit 2, the choices listed) before anything is read or imported."""
    result = runner.invoke(app, ["ingest", str(tmp_path), "--warehouse", str(tmp_path / "wh"), "--source", "kafka"],
                           env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "'kafka' is not one of 'canonical'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "wh").exists()
