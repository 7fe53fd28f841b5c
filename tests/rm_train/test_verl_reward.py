"""verl custom reward file (issue 21): loaded by path as verl's loader does, it gives RewardModel's numbers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import rm_train.verl_reward
from rm_train.reward_model import RewardModel, ScoringInputError


def _load_like_verl():
    """verl.utils.import_utils.load_extern_object: spec_from_file_location + exec_module on the path."""
    spec = importlib.util.spec_from_file_location("custom_module", rm_train.verl_reward.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compute_score_equals_the_python_api(text_head_model: tuple[Path, Path]) -> None:
    module = _load_like_verl()
    model_dir = str(text_head_model[0])
    expected = RewardModel.load(model_dir, device="cpu").score(["Say hello", "Hi"], ["world", "there"])
    one = module.compute_score(data_source="chat", solution_str="world", ground_truth=None,
                               extra_info={"prompt": "Say hello", "index": 0}, model_path=model_dir, device="cpu")
    assert one == pytest.approx(expected[0], abs=1e-6)
    chat = module.compute_score(data_source="chat", solution_str="world", ground_truth=None, model_path=model_dir,
                                device="cpu", extra_info={"prompt": [{"role": "user", "content": "Say hello"}]})
    assert chat == pytest.approx(expected[0], abs=1e-6)
    batch = module.compute_score_batch(data_sources=["a", "b"], solution_strs=["world", "there"], ground_truths=[None, None],
                                       extra_infos=[{"question": "Say hello"}, {"prompt": "Hi"}], model_path=model_dir,
                                       device="cpu")
    assert batch == pytest.approx(expected, abs=1e-6)


def test_missing_prompt_or_model(text_head_model: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load_like_verl()
    with pytest.raises(ScoringInputError, match="extra_info has no prompt"):
        module.compute_score("d", "x", None, {"index": 3}, model_path=str(text_head_model[0]), device="cpu")
    monkeypatch.delenv(module.ENV_MODEL, raising=False)
    with pytest.raises(ScoringInputError, match="no causalrm reward model given"):
        module.compute_score("d", "x", None, {"prompt": "p"})
    monkeypatch.setenv(module.ENV_MODEL, str(text_head_model[0]))
    assert 0 < module.compute_score("d", "x", None, {"prompt": "p"}, device="cpu") < 1
