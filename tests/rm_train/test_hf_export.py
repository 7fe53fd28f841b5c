"""`causalrm export` (issue 21): a head model becomes a transformers folder whose scores equal RewardModel's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rm_train.hf_export import export
from rm_train.reward_model import RewardModel
from schemas.errors import ConfigError


@pytest.fixture(scope="module")
def exported(text_head_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "hf"
    summary = export(text_head_model[0], out)
    assert summary["kind"] == "head" and summary["max_abs_diff"] < 1e-5
    return out


def test_export_loads_in_transformers_and_scores_equal(exported: Path, text_head_model: tuple[Path, Path]) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    frame = pl.read_parquet(text_head_model[1] / "data.parquet").head(100)
    prompts, responses = frame["prompt_text"].fill_null("").to_list(), frame["response_text"].fill_null("").to_list()
    expected = np.array(RewardModel.load(text_head_model[0], device="cpu").score(prompts, responses))

    config = json.loads((exported / "config.json").read_text())
    settings = config["causalrm"]
    assert settings["template"] == "{prompt}\n\n{response}" and settings["pooling"] == "mean" and settings["normalize"]
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_causalrm.CausalRMForSequenceClassification"
    # Plain transformers, no causalrm code: tokenizer + model from the folder, template from config.json.
    tokenizer = AutoTokenizer.from_pretrained(exported)
    model = AutoModelForSequenceClassification.from_pretrained(exported, trust_remote_code=True).eval()
    assert tokenizer.truncation_side == "left" and tokenizer.model_max_length == settings["max_length"]
    texts = [settings["template"].format(prompt=p, response=r) for p, r in zip(prompts, responses)]
    with torch.no_grad():
        batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
        logits = model(**batch).logits
    assert logits.shape == (100, 1)
    assert np.abs(torch.sigmoid(logits[:, 0]).numpy() - expected).max() < 1e-5
    # And through RewardModel, the one scoring path.
    again = RewardModel.load(exported, device="cpu")
    assert again.kind == "sequence-classifier"
    assert np.abs(np.array(again.score(prompts, responses)) - expected).max() < 1e-5


def test_export_refuses_to_overwrite(exported: Path, text_head_model: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export(text_head_model[0], exported)
