"""TRL reward function (issue 21): GRPO's calling convention, the training template, conversational
data, and a 2-step GRPOTrainer run on a tiny randomly initialised causal LM (no download)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rm_train.reward_model import RewardModel, ScoringInputError
from rm_train.rl import CausalRMReward, messages_to_text, trl_reward_function


@pytest.fixture(scope="module")
def reward(text_head_model: tuple[Path, Path]) -> CausalRMReward:
    return trl_reward_function(text_head_model[0], device="cpu")


def test_plain_text_rewards_equal_the_python_api(reward: CausalRMReward, text_head_model: tuple[Path, Path]) -> None:
    frame = pl.read_parquet(text_head_model[1] / "data.parquet").head(100)
    prompts, responses = frame["prompt_text"].fill_null("").to_list(), frame["response_text"].fill_null("").to_list()
    expected = np.array(RewardModel.load(text_head_model[0], device="cpu").score(prompts, responses))
    # GRPO passes dataset columns and trainer hooks as keyword arguments: they are ignored.
    got = np.array(reward(prompts=prompts, completions=responses, completion_ids=[[1]] * 100, trainer_state=None,
                          ground_truth=["x"] * 100))
    assert got.shape == (100,) and np.abs(got - expected).max() < 1e-5


def test_conversational_data_uses_the_message_text(reward: CausalRMReward) -> None:
    prompt = [{"role": "user", "content": "Say hello"}]
    completion = [{"role": "assistant", "content": "world"}]
    assert reward([prompt], [completion]) == reward(["Say hello"], ["world"])
    multi = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": [{"type": "text", "text": "Say hello"}]}]
    assert messages_to_text(multi) == "Human: Hi\n\nAssistant: Hello!\n\nHuman: Say hello"
    assert reward([multi], [completion]) == reward(["Human: Hi\n\nAssistant: Hello!\n\nHuman: Say hello"], ["world"])


def test_bad_inputs_and_pickling(reward: CausalRMReward) -> None:
    with pytest.raises(ScoringInputError, match="2 prompts but 1 completions"):
        reward(["a", "b"], ["x"])
    with pytest.raises(ScoringInputError, match="a completion is a int"):
        reward(["a"], [3])
    clone = pickle.loads(pickle.dumps(reward))
    assert clone._model is None and clone(["Say hello"], ["world"]) == reward(["Say hello"], ["world"])
    assert reward.__name__ == "causalrm_reward"


def test_grpo_two_steps_with_the_reward_function(reward: CausalRMReward, tmp_path: Path) -> None:
    """2 steps of trl's GRPOTrainer on a tiny random Llama with the MiniLM tokenizer (built offline)."""
    pytest.importorskip("trl")
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from feedback_etl.embed import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    tokenizer.eos_token = tokenizer.sep_token  # a BERT vocabulary has no EOS; [SEP] ends generations
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                         bos_token_id=tokenizer.cls_token_id)
    policy = LlamaForCausalLM(config)
    seen: list[list[float]] = []

    def recording_reward(prompts, completions, **kwargs):
        rewards = reward(prompts, completions, **kwargs)
        seen.append(rewards)
        return rewards

    recording_reward.__name__ = "causalrm_reward"
    data = Dataset.from_dict({"prompt": ["How do I boil an egg?", "Name a prime number.", "Is the sky blue?",
                                         "Say hello."]})
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=6, max_steps=2, learning_rate=1e-3, logging_steps=1, save_strategy="no",
                      report_to="none", use_cpu=True, bf16=False, seed=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=policy, reward_funcs=[recording_reward], args=args, train_dataset=data,
                          processing_class=tokenizer)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    assert len(seen) >= 2 and all(len(r) == 4 and all(0 < x < 1 for x in r) for r in seen)
    logged = [entry for entry in trainer.state.log_history if "rewards/causalrm_reward/mean" in entry]
    assert logged and all(np.isfinite(entry["rewards/causalrm_reward/mean"]) for entry in logged)
    assert any(not torch.equal(before[n], p) for n, p in policy.named_parameters())
