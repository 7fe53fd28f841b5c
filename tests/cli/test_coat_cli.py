"""Coat through the CLI only (issue 17), on its first 40 users: ingest with the side-feature files,
propensity fit, fit-label-aware on the raw rating with a slice of MAR ratings, label-aware weights,
weighted MF with the --id-l2 grid, predict on the MAR test warehouse. The full-size run and its
figures are benchmarks/paper_repro/coat.py and benchmarks/slice/run.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.paper_repro.coat import inputs, write_slice  # noqa: E402

runner = CliRunner()
USERS = 40


def _ok(*argv: str) -> str:
    result = runner.invoke(app, list(argv))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_coat_through_the_cli(shared_data: Path, tmp_path: Path) -> None:
    coat = shared_data / "coat"
    if not (coat / "train.ascii").is_file():
        pytest.skip(f"Coat data not found: {coat} is missing")
    files = inputs(coat, tmp_path, USERS)
    wh, wh_test = tmp_path / "wh", tmp_path / "wh_test"
    _ok("ingest", str(files["train"]), "--source", "ratings", "--warehouse", str(wh),
        "--user-features", str(files["users"]), "--item-features", str(files["items"]))
    _ok("ingest", str(files["test"]), "--source", "ratings", "--warehouse", str(wh_test))
    _ok("propensity", "fit", str(wh), "--clip", "0.01", "--threads", "1")
    metrics = json.loads((wh / "propensity" / "metrics.json").read_text())["vote"]
    assert {"user_age_20_30", "item_color_black"} <= set(metrics["features"])  # the side features reached the fit
    assert "rating" not in metrics["features"]  # the outcome column did not
    test = np.loadtxt(files["test"])
    eval_rows = write_slice(test, 0.1, 0, tmp_path / "slice.csv")
    out = _ok("propensity", "fit-label-aware", str(wh), "--slice", str(tmp_path / "slice.csv"), "--label-column", "rating",
              "--clip", "0.01", "--min-slice", "10", "--bootstrap", "20", "--threads", "1")
    assert "relative to the lowest value" in out
    report = json.loads((wh / "propensity" / "label_aware.json").read_text())
    assert report["label_values"]["values"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    _ok("weights", "export", str(wh), "--out", str(tmp_path / "ds"), "--no-noise", "--propensity", "label-aware")
    out = _ok("train", str(tmp_path / "ds"), "--out", str(tmp_path / "mf"), "--loss", "ips", "--id-features", "user_id,response_id",
              "--hidden", "", "--no-embeddings", "--id-l2", "0.01,0.1", "--weight-decay", "0", "--val-fraction", "0.1",
              "--epochs", "2", "--device", "cpu")
    assert "--id-l2 search" in out
    _ok("predict", str(tmp_path / "mf"), str(wh_test), "--out", str(tmp_path / "preds.parquet"))
    preds = pl.read_parquet(tmp_path / "preds.parquet")
    user, item = np.divmod(eval_rows, test.shape[1])
    wanted = {f"test:u{u}:i{i}" for u, i in zip(user, item)}
    assert wanted <= set(preds["exposure_id"].to_list())
    assert preds["reward"].is_between(0, 1).all()
