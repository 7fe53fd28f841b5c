"""CLI: embed -> train (naive, causalrm-dr) -> predict -> evaluate through typer's CliRunner, and
bad inputs end in one red line and exit code 1 (no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from rm_factory import make_weighted_dataset
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def dataset(warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 exposures, no embedding column: `causalrm embed DATASET` supplies DATASET/embeddings/."""
    return make_weighted_dataset(warehouse, tmp_path_factory.mktemp("cli") / "dataset", embedding_dim=None, head=600)


def test_embed_train_predict_evaluate(dataset: Path, tiny_backbone: Path, truth_path: Path, tmp_path: Path) -> None:
    result = _run("embed", dataset, "--model", tiny_backbone, "--device", "cpu", "--shard-size", "200")
    assert result.exit_code == 0, result.output
    assert "embedded 600 exposures" in result.output and (dataset / "embeddings" / "meta.json").is_file()
    for loss in ("naive", "causalrm-dr"):
        model = tmp_path / loss
        result = _run("train", dataset, "--out", model, "--loss", loss, "--epochs", "2", "--hidden", "16", "--device", "cpu")
        assert result.exit_code == 0, result.output
        assert f"trained {loss} (mse)" in result.output and (model / "model.safetensors").is_file()
        result = _run("predict", model, dataset, "--out", tmp_path / f"{loss}.parquet", "--device", "cpu")
        assert result.exit_code == 0 and "scored 600 exposures" in result.output
        result = _run("evaluate", tmp_path / f"{loss}.parquet", "--truth", truth_path, "--split", "test")
        assert result.exit_code == 0 and "vs y_true R2" in result.output
        metrics = json.loads((tmp_path / f"{loss}.metrics.json").read_text())
        assert metrics["split"] == "test" and metrics["n"] == pl.read_parquet(dataset / "data.parquet").filter(pl.col("split") == "test").height
    # Oracle: clean labels of every exposure.
    result = _run("train", dataset, "--out", tmp_path / "oracle", "--loss", "naive", "--label-column", "y_true",
                  "--truth", truth_path, "--all-observed", "--epochs", "1", "--hidden", "16", "--device", "cpu")
    assert result.exit_code == 0, result.output
    oracle = json.loads((tmp_path / "oracle" / "metrics.json").read_text())
    assert oracle["n_train_rows"] == oracle["n_observed_train"] == oracle["n_train_exposures"]


def test_finetune_from_the_cli(dataset: Path, tiny_backbone: Path, tmp_path: Path) -> None:
    result = _run("train", dataset, "--out", tmp_path / "ft", "--loss", "causalrm-ips", "--finetune", tiny_backbone,
                  "--batch-size", "32", "--max-length", "32", "--device", "cpu", "--freeze-backbone")
    assert result.exit_code == 0, result.output
    assert "AutoModelForSequenceClassification" in result.output and (tmp_path / "ft" / "config.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{dataset}", "--out", "{tmp}/m", "--hidden", "a,b"], "--hidden must be comma-separated integers"),
        (["train", "{dataset}", "--out", "{tmp}/m", "--loss", "causalrm-dr", "--finetune", "{tmp}"], "needs imputed labels"),
        (["embed", "{tmp}", "--device", "cpu"], "neither a warehouse"),
        (["predict", "{tmp}", "{dataset}", "--out", "{tmp}/p.parquet"], "not a reward model folder"),
    ],
)
def test_bad_inputs_fail_with_one_line(args: list[str], message: str, dataset: Path, tmp_path: Path) -> None:
    filled = [a.format(tmp=tmp_path, dataset=dataset) for a in args]
    result = runner.invoke(app, filled)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (TypeError, KeyError, AttributeError))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{tmp}/missing", "--out", "{tmp}/m"], "'{tmp}/missing' does not exist"),
        (["train", "{dataset}", "--out", "{tmp}/m", "--loss", "dr"], "'dr' is not one of"),
        (["embed", "{dataset}", "--pooling", "max"], "'max' is not one of"),
        (["evaluate", "{tmp}/p.parquet", "--truth", "{tmp}/t.parquet"], "'{tmp}/p.parquet' does not exist"),
        (["predict", "{tmp}", "{dataset}", "--out", "{tmp}/p.parquet", "--device", "tpu"], "'tpu' is not one of"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str, dataset: Path, tmp_path: Path) -> None:
    """Caught by the parser (exit 2) before the command imports torch or reads data."""
    result = runner.invoke(app, [a.format(tmp=tmp_path, dataset=dataset) for a in args], env={"COLUMNS": "400"})
    assert result.exit_code == 2
    assert message.format(tmp=tmp_path) in " ".join(result.output.replace("│", " ").split())
