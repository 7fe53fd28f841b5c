"""Reward function for TRL's GRPO trainer, scoring through :class:`rm_train.reward_model.RewardModel`.

TRL: ``GRPOTrainer(reward_funcs=[trl_reward_function("MODEL_DIR")], ...)``. TRL calls a reward
function as ``f(prompts=..., completions=..., completion_ids=..., **dataset_columns,
trainer_state=..., log_extra=..., log_metric=...)`` and expects one float per completion
(``GRPOTrainer._calculate_rewards``, trl 1.16). Passing the model folder itself as a reward model
would score ``prompt + completion`` concatenated, with ``add_special_tokens=False``: not the text
the reward model was trained on, hence this function, which applies the training template.

Conversational data (lists of ``{"role", "content"}`` messages) becomes text the way the
training prompts were written (:func:`messages_to_text`): a lone user message is its content;
longer histories are ``"Human: ...\\n\\nAssistant: ..."`` turns (the Anthropic HH layout that
``feedback_etl.texts`` keeps as ``prompt_text``); a completion is its assistant content.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from rm_train.reward_model import RewardModel, ScoringInputError

_ROLE_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System", "tool": "Tool"}


def _content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a multimodal content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type", "text") == "text")
    raise ScoringInputError(f"message content is a {type(content).__name__}, not a string or a list of parts")


def messages_to_text(messages: Sequence[dict[str, Any]], *, completion: bool = False) -> str:
    """Text of a conversational prompt or completion (a list of ``{"role", "content"}`` dicts).

    A completion joins its messages' contents; a prompt of one user message is that message's
    content; a longer prompt is ``"Human: ...\\n\\nAssistant: ...\\n\\nHuman: ..."``.
    """
    if completion or (len(messages) == 1 and messages[0].get("role") == "user"):
        return "".join(_content_text(m.get("content")) for m in messages)
    return "\n\n".join(f"{_ROLE_NAMES.get(m.get('role'), str(m.get('role')).title())}: {_content_text(m.get('content'))}"
                       for m in messages)


def _as_text(value: Any, *, completion: bool, render: Callable[..., str]) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return render(value, completion=completion)
    raise ScoringInputError(f"a {'completion' if completion else 'prompt'} is a {type(value).__name__}: "
                            "expected a string or a list of chat messages")


class CausalRMReward:
    """A GRPO reward function backed by a causalrm reward model (loaded on first call).

    Parameters
    ----------
    model : a model folder (``causalrm train`` / ``--finetune`` / ``export``) or a loaded :class:`RewardModel`.
    device : where to score (``auto``: CUDA when visible).
    batch_size : texts per forward pass.
    logit : return f(x) instead of sigmoid(f(x)).
    render : turns a message list into text; default :func:`messages_to_text`.
    """

    __name__ = "causalrm_reward"  # TRL names the reward's logged metrics after it

    def __init__(self, model: str | Path | RewardModel, *, device: str = "auto", batch_size: int | None = None,
                 logit: bool = False, render: Callable[..., str] = messages_to_text) -> None:
        self._model = model if isinstance(model, RewardModel) else None
        self.path = str(model.path if isinstance(model, RewardModel) else model)
        self.device, self.batch_size, self.logit, self.render = device, batch_size, logit, render

    @property
    def model(self) -> RewardModel:
        if self._model is None:
            self._model = RewardModel.load(self.path, device=self.device, batch_size=self.batch_size)
        return self._model

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for multi-process trainers: the model is reloaded from its folder on the other side.
        return {**self.__dict__, "_model": None}

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        """One reward per completion; ``kwargs`` (dataset columns, trainer_state, ...) are ignored."""
        if len(prompts) != len(completions):
            raise ScoringInputError(f"{len(prompts)} prompts but {len(completions)} completions")
        prompt_texts = [_as_text(p, completion=False, render=self.render) for p in prompts]
        completion_texts = [_as_text(c, completion=True, render=self.render) for c in completions]
        return self.model.score(prompt_texts, completion_texts, logit=self.logit)


def trl_reward_function(model: str | Path | RewardModel, **options: Any) -> CausalRMReward:
    """A callable for ``GRPOTrainer(reward_funcs=...)``: ``(prompts, completions, **kwargs) -> list[float]``.

    Takes the options of :class:`CausalRMReward`. The rewards equal
    ``RewardModel.load(model).score(prompts, completions)`` for plain-text data.
    """
    return CausalRMReward(model, **options)


__all__ = ["CausalRMReward", "messages_to_text", "trl_reward_function"]
