"""Reward-model training with the CausalRM losses (arXiv 2603.18736).

Public surface: :class:`TrainConfig` with ``rm_train.train.train`` (MLP head over embeddings,
numeric, categorical and ID features), :class:`RewardModel` (the one scoring path:
``RewardModel.load(path).score(prompts, responses)``) with ``rm_train.predict.predict``,
``rm_train.evaluate.evaluate``, the loss functions in :mod:`rm_train.losses`, and full fine-tuning in
:mod:`rm_train.hf_trainer` (imported on demand: it pulls in transformers). The functions are not
re-exported here because their names equal their modules' and would shadow them.
"""

from rm_train.config import FinetuneConfig, TrainConfig
from rm_train.reward_model import RewardModel

__all__ = ["FinetuneConfig", "RewardModel", "TrainConfig"]
