"""`weights export --pairs --pairs-format trl` (issue 21): pairs_trl/{split} holds prompt / chosen /
rejected such that TRL's `prompt + chosen` is exactly the training text of the chosen response."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from test_export import prepare
from typer.testing import CliRunner

from feedback_etl.embed import TEXT_TEMPLATE
from propensity.weights.export import ExportConfig, export_weighted_dataset, read_pairs, trl_pairs
from schemas.errors import ConfigError


def _pairs(**overrides) -> pl.DataFrame:
    values = {"split": ["train", "train", "test"], "prompt_text": ["Hi?", None, "Q"],
              "chosen_text": ["good", "fine", "yes"], "rejected_text": ["bad", "meh", "no"]}
    return pl.DataFrame({**values, **overrides})


def test_trl_pairs_carry_the_template_separator() -> None:
    tables = trl_pairs(_pairs())
    assert sorted(tables) == ["test", "train"]  # no val pairs: no val file
    train = tables["train"]
    assert train.columns == ["prompt", "chosen", "rejected"]
    assert train["prompt"][0] + train["chosen"][0] == TEXT_TEMPLATE.format(prompt="Hi?", response="good")
    assert train["prompt"][1] + train["rejected"][1] == TEXT_TEMPLATE.format(prompt="", response="meh")


@pytest.mark.parametrize("chosen", [["good", None, "yes"], ["sha256:ab", "fine", "yes"], ["good", "hmac-sha256:cd", "yes"]])
def test_trl_pairs_refuse_pairs_without_text(chosen: list) -> None:
    with pytest.raises(ConfigError, match="1 of 3 pairs have no response text"):
        trl_pairs(_pairs(chosen_text=chosen))


def test_pairs_format_needs_pairs() -> None:
    with pytest.raises(ConfigError, match="needs --pairs"):
        ExportConfig(warehouse="wh", out="ds", pairs_format="trl")
    with pytest.raises(ConfigError, match="unknown pairs format"):
        ExportConfig(warehouse="wh", out="ds", pairs=True, pairs_format="dpo")


def test_export_writes_trl_pairs_beside_ours(warehouse: Path, tmp_path: Path) -> None:
    from datasets import load_dataset

    wh = prepare(warehouse, tmp_path / "wh")
    out = tmp_path / "ds"
    result = CliRunner().invoke(__import__("cli").app, ["weights", "export", str(wh), "--out", str(out), "--pairs",
                                                        "--pairs-format", "trl"])
    assert result.exit_code == 0, result.output
    assert "TRL pairs" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    ours = read_pairs(out)
    files = manifest["files"]["pairs_trl"]
    assert set(files) <= {"train", "val", "test"} and "train" in files
    loaded = load_dataset("parquet", data_dir=str(out / "pairs_trl"))
    # datasets maps our file names onto its split names (val -> validation), one split per file.
    assert len(loaded) == len(files) and set(loaded.keys()) <= {"train", "validation", "test"} and "train" in loaded
    assert loaded["train"].column_names == ["prompt", "chosen", "rejected"]
    total = sum(pl.read_parquet(out / path).height for path in files.values())
    assert total == ours.height  # every pair, none lost
    train = pl.read_parquet(out / files["train"])
    expected = ours.filter(pl.col("split") == "train")
    texts = {TEXT_TEMPLATE.format(prompt=p or "", response=c) for p, c in zip(expected["prompt_text"], expected["chosen_text"])}
    assert {p + c for p, c in zip(train["prompt"], train["chosen"])} == texts


def test_trl_reward_trainer_reads_the_pairs(tiny_backbone: Path, tmp_path: Path) -> None:
    """One step of TRL's RewardTrainer on pairs_trl-shaped rows (tiny random BERT, no download)."""
    pytest.importorskip("trl")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    table = trl_pairs(_pairs())["train"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=1)
    args = RewardConfig(output_dir=str(tmp_path / "rm"), per_device_train_batch_size=2, max_steps=1, report_to="none",
                        use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True, max_length=64,
                        eos_token="[SEP]")  # a BERT vocabulary has no EOS; TRL appends one
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_polars(table), processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1
    assert any("loss" in entry and entry["loss"] > 0 for entry in trainer.state.log_history)
