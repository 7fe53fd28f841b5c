"""`causalrm ingest` on the command line: a summary line on success, one red line and exit 1 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_cli_ingest_imports_neither_polars_nor_pandera(tmp_path):
    """Issue 19: the ingest's start-up is most of a small run's cost, so the DuckDB engine checks,
    casts and writes without polars or pandera (both are imported only by custom features,
    privacy rewrites or the ratings source)."""
    logs = tmp_path / "events.jsonl"
    logs.write_text(
        '{"event_id": "e1", "event_time": "2026-01-01T00:00:00Z", "event_type": "impression", "exposure_id": "x1", '
        '"user_id": "u1", "session_id": "s1", "prompt_id": "p1", "response_id": "r1", "model_id": "m1"}\n'
        '{"event_id": "e2", "event_time": "2026-01-01T00:01:00Z", "event_type": "thumbs_up", "exposure_id": "x1"}\n'
        "not json\n",
        encoding="utf-8",
    )
    script = (
        "import sys, cli\n"
        f"sys.argv = ['causalrm', 'ingest', {str(logs)!r}, '--warehouse', {str(tmp_path / 'wh')!r}]\n"
        "try:\n    cli.main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('LOADED', sorted(m for m in ('polars', 'pandera', 'pandas') if m in sys.modules), file=sys.stderr)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
                            env={"PYTHONPATH": str(root), "COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert "LOADED []" in result.stderr, result.stderr
    assert "accepted 2, rejected 1" in result.stdout, result.stdout
