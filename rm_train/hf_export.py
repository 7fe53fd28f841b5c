"""``causalrm export MODEL --out DIR``: a reward model as a transformers folder RL frameworks load.

* An MLP-head model (``causalrm train``) becomes backbone + pooling + head in one
  ``AutoModelForSequenceClassification`` folder: ``config.json`` (the backbone's config plus
  ``auto_map`` and a ``causalrm`` entry with the template, pooling, normalisation, token limit and
  head shape), ``model.safetensors`` (``backbone.*`` and ``reward_head.*``), the tokenizer (left
  truncation, the training token limit) and ``modeling_causalrm.py``
  (:mod:`rm_train.hf_modeling_template`). It loads with ``trust_remote_code=True``: the code is
  in the folder, nothing is downloaded. Why not a standard class: see that module's docstring
  and docs/rl.md. Only text-only heads export (numeric / categorical / ID features have no text).
* A fine-tuned model (``causalrm train --finetune``) is already a standard transformers folder;
  the export copies it and adds the ``causalrm`` entry (template, token limit) to ``config.json``.

Either way ``logits[:, 0]`` is f(x) and sigmoid(f(x)) the reward of ``causalrm predict``; the
export scores probe texts through :class:`RewardModel` before and after and refuses to finish
when they differ by more than 1e-5.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rm_train.reward_model import EXPORT_KEY, RewardModel, embedding_model_path
from schemas.errors import ConfigError, EstimationError, InputFileError

log = logging.getLogger(__name__)

EXPORT_FORMAT = "causalrm-hf-export"
_MODELING_FILE = "modeling_causalrm.py"
_PROBES = (
    ("How do I boil an egg?", "Put it in boiling water for nine minutes, then cool it in cold water."),
    ("Summarise the plot of Hamlet.", "A prince avenges his father and almost everyone dies."),
    ("", "An answer without a prompt."),
    ("Translate 'cat' to French.", "chat"),
)


def _prepare_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty", fix="pass --overwrite or another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def _finish(staging: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    staging.replace(out)


def _export_head(model: RewardModel, staging: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from rm_train.hf_modeling_template import CausalRMForSequenceClassification

    hf_logging.disable_progress_bar()

    model.require_text_scoring()  # one clear error for heads that read other features
    meta = model.embedding
    architecture = model.head.architecture
    backbone_path = embedding_model_path(meta)
    backbone = AutoModel.from_pretrained(backbone_path)
    tokenizer = AutoTokenizer.from_pretrained(backbone_path)
    max_length = int(meta.get("max_length") or 512)
    settings = {
        "format": EXPORT_FORMAT, "template": model.template, "pooling": meta.get("pooling") or "mean",
        "normalize": bool(meta.get("normalize")), "max_length": max_length, "truncation_side": "left",
        "embedding_dim": architecture["embedding_dim"], "hidden": architecture["hidden"], "dropout": architecture["dropout"],
        "reward": "sigmoid(logits[:, 0]) = predicted P(r* = 1 | x)", "source_model": str(model.path),
        "embedding_model": meta.get("model"),
        "value_head": "reward_head (an MLP: not loadable as OpenRLHF's value head; serve with `causalrm serve`)",
    }
    config = backbone.config
    config.causalrm = settings
    config.num_labels = 1
    config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
    config.auto_map = {"AutoModelForSequenceClassification": f"{_MODELING_FILE[:-3]}.CausalRMForSequenceClassification"}
    exported = CausalRMForSequenceClassification(config)
    exported.backbone.load_state_dict(backbone.state_dict())
    head_state = {k[len("mlp."):]: v for k, v in model.head.state_dict().items() if k.startswith("mlp.")}
    exported.reward_head.load_state_dict(head_state)
    exported.eval()
    with torch.no_grad():
        exported.save_pretrained(str(staging))
    shutil.copy(Path(__file__).with_name("hf_modeling_template.py"), staging / _MODELING_FILE)
    # The tokenizer truncates as `causalrm embed` did: from the left, at the training token limit.
    tokenizer.truncation_side = "left"
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(str(staging))
    return settings


def _export_sequence_classifier(model: RewardModel, staging: Path) -> dict[str, Any]:
    shutil.copytree(model.path, staging, dirs_exist_ok=True)
    config_path = staging / "config.json"
    config = json.loads(config_path.read_text())
    settings = {"format": EXPORT_FORMAT, "template": model.template, "max_length": model.max_length,
                "truncation_side": "left", "reward": "sigmoid(logits[:, 0]) = predicted P(r* = 1 | x)",
                "source_model": str(model.path),
                "value_head": "classifier (OpenRLHF: --ds.value_head_prefix classifier; see docs/rl.md)"}
    config[EXPORT_KEY] = settings
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return settings


def export(model_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write ``out`` (see the module docstring); returns a summary with the verified max score difference."""
    source = RewardModel.load(model_dir, device="cpu")
    out = Path(out)
    if out.resolve() == Path(model_dir).resolve():
        raise ConfigError("--out is the model folder itself", fix="pass another --out folder")
    staging = _prepare_out(out, overwrite)
    try:
        if source.kind == "head":
            settings = _export_head(source, staging)
        else:
            settings = _export_sequence_classifier(source, staging)
        prompts, responses = [p for p, _ in _PROBES], [r for _, r in _PROBES]
        expected = np.array(source.score(prompts, responses))
        try:
            exported = RewardModel.load(staging, device="cpu")
        except InputFileError as exc:
            raise EstimationError(f"the exported folder does not load: {exc.what}", where=str(out)) from exc
        got = np.array(exported.score(prompts, responses))
        diff = float(np.abs(got - expected).max())
        if not diff < 1e-5:
            raise EstimationError(f"the export scores differ from the model by {diff:.2e} (> 1e-5)", where=str(out),
                                  fix="report this: the exported architecture does not reproduce the head")
        _finish(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s (%s) to %s; max score difference on probes %.1e", model_dir, source.kind, out, diff)
    return {"out": str(out), "kind": source.kind, "max_abs_diff": diff, "trust_remote_code": source.kind == "head",
            "template": settings["template"]}


__all__ = ["EXPORT_FORMAT", "export"]
