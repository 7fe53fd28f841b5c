"""transformers model class of a ``causalrm export`` of an MLP-head reward model.

``causalrm export`` copies this file into the exported folder as ``modeling_causalrm.py`` and
names it in ``config.json["auto_map"]``, so that

    AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)

loads backbone + head and returns ``logits`` of shape (batch, 1): the head's f(x); sigmoid(f(x))
is the reward ``causalrm predict`` writes. It imports only torch and transformers (the folder
must load where causalrm is not installed).

Why custom code: the head reads the backbone's *pooled and normalised* embedding (mean pooling
over the attention mask and L2 normalisation for MiniLM) through a GELU MLP with biases. No
standard ``*ForSequenceClassification`` class computes that (BERT's classifier reads the tanh
pooler of [CLS], decoder classifiers a bias-free linear of the last token), so mapping the head
onto one would change the scores.
"""

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, seq, dim) -> (batch, dim), as ``causalrm embed`` pools."""
    mask_f = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask_f).sum(1) / mask_f.sum(1).clamp(min=1.0)
    if pooling == "cls":
        return hidden[:, 0]
    positions = mask * (mask.new_ones(mask.shape).cumsum(1) - 1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions.argmax(1)]


class CausalRMForSequenceClassification(PreTrainedModel):
    """Frozen-embedding backbone + pooling (+ L2 normalisation) + the causalrm MLP head."""

    config_class = PretrainedConfig
    base_model_prefix = "backbone"
    # Attention runs inside the backbone, which checks its own support for these.
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        settings = config.causalrm
        self.pooling = settings["pooling"]
        self.normalize = bool(settings["normalize"])
        self.backbone = AutoModel.from_config(config)
        layers: list[nn.Module] = []
        width = int(settings["embedding_dim"])
        for size in settings["hidden"]:
            layers += [nn.Linear(width, size), nn.GELU(), nn.Dropout(float(settings.get("dropout", 0.0)))]
            width = size
        # Not named `score` / `classifier`: OpenRLHF and TRL would load a bias-free linear under
        # those names and silently drop the MLP (see docs/rl.md).
        self.reward_head = nn.Sequential(*layers, nn.Linear(width, 1))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, return_dict=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**inputs).last_hidden_state
        vectors = _pool(hidden.float(), attention_mask, self.pooling)
        if self.normalize:
            vectors = nn.functional.normalize(vectors, dim=-1)
        logits = self.reward_head(vectors.to(self.reward_head[-1].weight.dtype))
        return SequenceClassifierOutput(logits=logits)
