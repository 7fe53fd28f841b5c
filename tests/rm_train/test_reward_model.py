"""RewardModel: one scoring path for every model kind (issue 21).

The head model here is trained on real embeddings of a tiny randomly initialised BERT, so scoring
raw text re-runs that backbone: `causalrm predict` (which reads the stored `causalrm embed` vectors)
and `RewardModel.score` (which re-embeds the text) must agree to float32 precision.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rm_train.predict import predict
from rm_train.reward_model import RewardModel, ScoringInputError, pair_texts
from schemas.errors import InputFileError


def _pairs(dataset: Path, n: int = 100) -> pl.DataFrame:
    return pl.read_parquet(dataset / "data.parquet").head(n)


def test_predict_and_score_agree_on_100_pairs(text_head_model: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, dataset = text_head_model
    predict(model_dir, dataset, tmp_path / "preds.parquet", device="cpu")
    frame = _pairs(dataset).join(pl.read_parquet(tmp_path / "preds.parquet"), on="exposure_id", how="left")
    model = RewardModel.load(model_dir, device="cpu")
    assert model.kind == "head" and model.template == "{prompt}\n\n{response}"
    scores = np.array(model.score(frame["prompt_text"].to_list(), frame["response_text"].to_list()))
    assert np.abs(scores - frame["reward"].to_numpy()).max() < 1e-5
    assert scores.std() > 1e-4  # the head is not constant: agreement is not trivial
    # The same pairs scored in another order and batch size give the same numbers.
    small = RewardModel.load(model_dir, device="cpu", batch_size=7)
    reversed_scores = small.score(frame["prompt_text"].to_list()[::-1], frame["response_text"].to_list()[::-1])
    assert np.abs(np.array(reversed_scores[::-1]) - scores).max() < 1e-5
    # Logits are the pre-sigmoid values.
    logits = np.array(model.score(frame["prompt_text"].to_list()[:5], frame["response_text"].to_list()[:5], logit=True))
    assert np.allclose(1 / (1 + np.exp(-logits)), scores[:5], atol=1e-6)


def test_predict_without_stored_embeddings_embeds_the_text(text_head_model: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, dataset = text_head_model
    bare = tmp_path / "bare"
    bare.mkdir()
    _pairs(dataset, 40).write_parquet(bare / "data.parquet")  # no embeddings/ folder
    predict(model_dir, bare, tmp_path / "bare.parquet", device="cpu")
    predict(model_dir, dataset, tmp_path / "full.parquet", device="cpu")
    joined = pl.read_parquet(tmp_path / "bare.parquet").join(pl.read_parquet(tmp_path / "full.parquet"), on="exposure_id")
    assert joined.height == 40
    assert (joined["reward"] - joined["reward_right"]).abs().max() < 1e-5


def test_template_is_applied(text_head_model: tuple[Path, Path]) -> None:
    model = RewardModel.load(text_head_model[0], device="cpu")
    joined = model.score_texts(pair_texts(["Say hello"], ["world"]))
    assert model.score(["Say hello"], ["world"]) == joined
    assert model.score_texts(["Say helloworld"]) != joined  # TRL's plain concatenation is another input


@pytest.mark.parametrize(("prompts", "responses", "message"), [
    (["a", "b"], ["x"], "2 prompts but 1 responses"),
    ("a", ["x"], "prompts must be a list of strings"),
    (["a"], [3], r"responses\[0\] is a int"),
])
def test_malformed_pairs(text_head_model: tuple[Path, Path], prompts, responses, message: str) -> None:
    model = RewardModel.load(text_head_model[0], device="cpu")
    with pytest.raises(ScoringInputError, match=message):
        model.score(prompts, responses)


def test_empty_input_and_none_texts(text_head_model: tuple[Path, Path]) -> None:
    model = RewardModel.load(text_head_model[0], device="cpu")
    assert model.score([], []) == []
    assert model.score([None], ["hi"]) == model.score([""], ["hi"])


def test_head_with_extra_features_refuses_text_only_scoring(text_head_model: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    model_dir = tmp_path / "ctx"
    shutil.copytree(text_head_model[0], model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["features"]["numeric"] = ["position"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ScoringInputError, match=r"also reads the feature column\(s\) \['position'\]"):
        RewardModel.load(model_dir, device="cpu").score(["p"], ["r"])
    config["features"]["numeric"] = []
    config["embedding"] = None
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputFileError, match="does not record which embedding model"):
        RewardModel.load(model_dir, device="cpu").score(["p"], ["r"])


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="config.json missing"):
        RewardModel.load(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputFileError, match="neither a causalrm-reward-head config"):
        RewardModel.load(tmp_path)


@pytest.fixture(scope="module")
def sequence_classifier(tiny_backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `train --finetune`-shaped folder: tiny BERT with a fresh num_labels=1 head, tokenizer, causalrm_train.json."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("seqcls") / "rm"
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_backbone).save_pretrained(out)
    (out / "causalrm_train.json").write_text(json.dumps({"finetune": {"max_length": 48}, "text_template": "{prompt}\n\n{response}"}))
    return out


def test_sequence_classifier_scores_the_template_and_exports(sequence_classifier: Path, text_head_model: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rm_train.hf_export import export

    frame = _pairs(text_head_model[1], 20)
    prompts, responses = frame["prompt_text"].fill_null("").to_list(), frame["response_text"].fill_null("").to_list()
    model = RewardModel.load(sequence_classifier, device="cpu", batch_size=6)
    assert model.kind == "sequence-classifier"
    scores = np.array(model.score(prompts, responses))
    tokenizer = AutoTokenizer.from_pretrained(sequence_classifier)
    tokenizer.truncation_side = "left"
    reference = AutoModelForSequenceClassification.from_pretrained(sequence_classifier).eval()
    with torch.no_grad():
        batch = tokenizer(pair_texts(prompts, responses), truncation=True, max_length=48, padding=True, return_tensors="pt")
        expected = torch.sigmoid(reference(**batch).logits[:, 0]).numpy()
    assert np.abs(scores - expected).max() < 1e-5
    predict(sequence_classifier, text_head_model[1], tmp_path / "preds.parquet", device="cpu")
    preds = frame.join(pl.read_parquet(tmp_path / "preds.parquet"), on="exposure_id")
    assert np.abs(preds["reward"].to_numpy() - scores).max() < 1e-5
    summary = export(sequence_classifier, tmp_path / "hf")
    assert summary["kind"] == "sequence-classifier" and not summary["trust_remote_code"]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["causalrm"]["template"] == "{prompt}\n\n{response}" and config["causalrm"]["max_length"] == 48


def test_model_config_finds_the_warehouse_embedding_settings(tmp_path: Path) -> None:
    """`weights export` joins WH/embeddings into data.parquet: the head records WH's meta.json."""
    from rm_train.data import FeatureSpec
    from rm_train.train import _embedding_meta

    wh, dataset = tmp_path / "wh", tmp_path / "dataset"
    (wh / "embeddings").mkdir(parents=True)
    dataset.mkdir()
    (wh / "embeddings" / "meta.json").write_text(json.dumps({"model": "m", "pooling": "mean", "dim": 32}))
    manifest = {"input": {"warehouse": str(wh)}}
    assert _embedding_meta(dataset, manifest, FeatureSpec(embedding_dim=32))["model"] == "m"
    assert _embedding_meta(dataset, manifest, FeatureSpec(embedding_dim=16)) is None  # other vectors: not these
    assert _embedding_meta(dataset, manifest, FeatureSpec(numeric=["x"])) is None  # no text embedding at all
