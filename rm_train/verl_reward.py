"""verl custom reward function backed by a causalrm reward model.

verl loads ``custom_reward_function.path`` as a file and calls ``custom_reward_function.name``
with the keyword arguments its reward managers pass, merged with
``custom_reward_function.reward_kwargs`` (``verl/trainer/ppo/reward.py: get_custom_reward_fn``;
``NaiveRewardManager`` calls ``compute_score(data_source=, solution_str=, ground_truth=,
extra_info=)`` per sample, ``BatchRewardManager`` calls ``compute_score(data_sources=,
solution_strs=, ground_truths=, extra_infos=)`` once per batch; volcengine/verl at b178a3c, Jan 2026)::

    custom_reward_function.path=$(python -c "import rm_train.verl_reward as m; print(m.__file__)")
    custom_reward_function.name=compute_score                  # or compute_score_batch with
                                                               # reward_model.reward_manager=batch
    +custom_reward_function.reward_kwargs.model_path=/path/to/causalrm/model

(or set ``CAUSALRM_REWARD_MODEL=/path/to/model`` instead of ``model_path``).

verl hands the reward function the decoded response only; the prompt must travel in the
dataset's ``extra_info`` as ``prompt`` (text or chat messages) or ``question`` (verl's GSM8K
preprocessing keeps it there). The reward is ``RewardModel.score(prompt, response)``, the
number ``causalrm predict`` and the server give; ``ground_truth`` is not used.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Sequence

from rm_train.reward_model import RewardModel, ScoringInputError
from rm_train.rl import messages_to_text

ENV_MODEL = "CAUSALRM_REWARD_MODEL"
_PROMPT_KEYS = ("prompt", "question", "prompt_text")
_MODELS: dict[tuple[str, str, int | None], RewardModel] = {}
_LOCK = threading.Lock()


def _model(model_path: str | None, device: str, batch_size: int | None) -> RewardModel:
    path = model_path or os.environ.get(ENV_MODEL)
    if not path:
        raise ScoringInputError("no causalrm reward model given",
                                fix=f"set +custom_reward_function.reward_kwargs.model_path=DIR or {ENV_MODEL}=DIR")
    key = (str(path), device, batch_size)
    with _LOCK:  # verl may call from several threads; load each model once per process
        if key not in _MODELS:
            _MODELS[key] = RewardModel.load(path, device=device, batch_size=batch_size)
        return _MODELS[key]


def _prompt(extra_info: dict[str, Any] | None) -> str:
    info = extra_info or {}
    for key in _PROMPT_KEYS:
        value = info.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and all(isinstance(m, dict) for m in value):
            return messages_to_text(list(value))
    raise ScoringInputError(f"extra_info has no prompt (looked for {list(_PROMPT_KEYS)}; got keys {sorted(info)})",
                            fix="add the prompt text to each row's extra_info['prompt'] when preprocessing the dataset")


def compute_score(data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                  extra_info: dict[str, Any] | None = None, *, model_path: str | None = None, device: str = "auto",
                  batch_size: int | None = None, logit: bool = False, **kwargs: Any) -> float:
    """Reward of one response (verl's per-sample signature); other keyword arguments are ignored."""
    return _model(model_path, device, batch_size).score([_prompt(extra_info)], [solution_str or ""], logit=logit)[0]


def compute_score_batch(data_sources: Sequence[Any] = (), solution_strs: Sequence[str] = (),
                        ground_truths: Sequence[Any] = (), extra_infos: Sequence[dict[str, Any] | None] = (), *,
                        model_path: str | None = None, device: str = "auto", batch_size: int | None = None,
                        logit: bool = False, **kwargs: Any) -> list[float]:
    """Rewards of a batch of responses (verl's ``BatchRewardManager`` signature), one forward pass per batch."""
    if len(extra_infos) != len(solution_strs):
        raise ScoringInputError(f"{len(solution_strs)} responses but {len(extra_infos)} extra_infos")
    prompts = [_prompt(info) for info in extra_infos]
    return _model(model_path, device, batch_size).score(prompts, [s or "" for s in solution_strs], logit=logit)


__all__ = ["ENV_MODEL", "compute_score", "compute_score_batch"]
