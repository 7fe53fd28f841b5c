"""Reward-model training with the CausalRM losses (arXiv 2603.18736).

Public surface: :class:`TrainConfig` / :func:`train` (MLP head over embeddings, numeric, categorical
and ID features), :class:`RewardModel` / :func:`predict`, :func:`evaluate`, the loss functions in
:mod:`rm_train.losses`, and full fine-tuning in :mod:`rm_train.hf_trainer` (imported on demand: it
pulls in transformers).
"""

from rm_train.config import FinetuneConfig, TrainConfig
from rm_train.evaluate import evaluate
from rm_train.predict import RewardModel, predict
from rm_train.train import train

__all__ = ["FinetuneConfig", "RewardModel", "TrainConfig", "evaluate", "predict", "train"]
