"""One scoring path for every reward-model kind: ``RewardModel.load(path).score(prompts, responses)``.

``causalrm predict``, ``causalrm serve``, the TRL reward function (:mod:`rm_train.rl`), the verl
``compute_score`` file (:mod:`rm_train.verl_reward`) and ``causalrm export`` all go through this
class, so they give the same numbers for the same (prompt, response) (issue 21).

Two kinds of model folder, one interface (:class:`_Scorer`), picked from ``config.json``:

* ``format: causalrm-reward-head`` (``causalrm train``): an MLP head on frozen text embeddings
  (plus optional numeric / categorical / ID features). Scoring raw text re-runs the embedding
  model the training data was embedded with, with the settings recorded in the model's
  ``config.json["embedding"]`` (the ``meta.json`` of ``causalrm embed``: backbone, pooling,
  normalisation, token limit, left truncation, template).
* a transformers ``*ForSequenceClassification`` folder (``causalrm train --finetune``, or the
  output of ``causalrm export``): tokenizer + model, template and token limit from
  ``causalrm_train.json`` / ``config.json["causalrm"]``.

Text of a pair: the training template, ``"{prompt}\\n\\n{response}"`` by default
(``feedback_etl.embed.TEXT_TEMPLATE``). The reward is sigmoid(f(x)), the predicted P(r* = 1 | x)
that ``causalrm predict`` writes; ``logit=True`` gives f(x).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file

from feedback_etl.embed import TEXT_TEMPLATE
from rm_train.data import FeatureSpec, feature_tensors
from rm_train.heads import RewardHead
from rm_train.train import MODEL_FORMAT, resolve_device
from schemas.errors import CausalRMError, InputFileError

log = logging.getLogger(__name__)

#: ``config.json`` key under which an exported HF folder keeps causalrm's scoring settings.
EXPORT_KEY = "causalrm"
_DEFAULT_MAX_LENGTH = 256  # token limit of fine-tuned models that record none (the FinetuneConfig default)


class ScoringInputError(CausalRMError):
    """Pairs to score are malformed (lengths differ, a text is not a string, a feature is missing)."""


class _Scorer(Protocol):
    """What a model kind provides; :class:`RewardModel` adds validation, templating and batching."""

    template: str

    def logits_of_texts(self, texts: list[str]) -> np.ndarray: ...

    def logits_of_frame(self, frame: pl.DataFrame) -> np.ndarray: ...


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputFileError(f"not valid JSON: {exc}", where=str(path), fix="re-export the model") from exc


def is_sequence_classifier(model_dir: str | Path) -> bool:
    """True when ``model_dir/config.json`` is a transformers sequence-classification config (a
    fine-tuned backbone from ``causalrm train --finetune`` or a folder from ``causalrm export``)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return (any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])
            or "AutoModelForSequenceClassification" in (config.get("auto_map") or {}))


def pair_texts(prompts: Sequence[str | None], responses: Sequence[str | None], template: str = TEXT_TEMPLATE) -> list[str]:
    """``template`` filled with each (prompt, response); a null text counts as empty, as in training."""
    return [template.format(prompt=p or "", response=r or "") for p, r in zip(prompts, responses)]


def _frame_texts(frame: pl.DataFrame, template: str) -> list[str]:
    missing = [c for c in ("prompt_text", "response_text") if c not in frame.columns]
    if missing:
        raise ScoringInputError(f"rows to score have no {missing} column(s)",
                                fix="score a dataset or warehouse that keeps the texts (ingest with --text keep)")
    return pair_texts(frame["prompt_text"].to_list(), frame["response_text"].to_list(), template)


def embedding_model_path(meta: dict[str, Any]) -> str:
    """The recorded backbone folder; the packaged MiniLM is found again when the venv moved."""
    from feedback_etl.embed import default_model_path

    path = meta.get("model_path") or meta.get("model")
    if path and Path(path).exists():
        return str(path)
    if str(meta.get("model", "")).startswith("all-MiniLM-L6-v2"):
        return default_model_path()
    if path and not Path(path).is_absolute():
        return str(path)  # a hub id (`causalrm embed --model org/name`): transformers' cache may hold it
    raise InputFileError(f"the embedding model {path!r} the head was trained on is not on this machine",
                         where="config.json: embedding.model_path",
                         fix="install it at that path, or edit config.json's embedding.model_path to where it is")


class _HeadScorer:
    """MLP head over frozen-backbone embeddings (``format: causalrm-reward-head``)."""

    def __init__(self, root: Path, config: dict[str, Any], device: torch.device, batch_size: int | None) -> None:
        weights = root / "model.safetensors"
        if not weights.is_file():
            raise InputFileError("model.safetensors missing", where=str(root), fix="pass the --out folder of `causalrm train`")
        self.config = config
        self.head = RewardHead.from_architecture(config["architecture"])
        self.head.load_state_dict(load_file(str(weights)))
        self.head.eval().to(device)
        self.spec = FeatureSpec.from_dict(config["features"])
        self.embedding = config.get("embedding") or None
        self.template = (self.embedding or {}).get("template", TEXT_TEMPLATE)
        self.device = device
        self.batch_size = batch_size
        self._encoder = None
        self._lock = threading.Lock()

    def _text_only(self) -> None:
        extra = [*self.spec.numeric, *self.spec.categorical, *self.spec.ids]
        if extra:
            raise ScoringInputError(
                f"this head also reads the feature column(s) {extra}: (prompt, response) alone cannot score it",
                fix="score datasets with `causalrm predict`, or train a text-only head (no --numeric/--categorical/--id features)")
        if not self.spec.embedding_dim:
            raise ScoringInputError("this head reads no text embedding", fix="train on a dataset embedded with `causalrm embed`")
        if self.embedding is None:
            raise InputFileError(
                "the model does not record which embedding model its training data was embedded with",
                where="config.json: embedding",
                fix="embed the training dataset with `causalrm embed DATASET` (writes embeddings/meta.json) and retrain")

    def _encode(self, texts: list[str]) -> np.ndarray:
        from feedback_etl.embed import text_encoder

        with self._lock:  # built once, on first use: `causalrm predict` on embedded rows never loads it
            if self._encoder is None:
                meta = self.embedding
                device = self.device.type
                encoder = text_encoder(
                    embedding_model_path(meta), pooling=meta.get("pooling"), normalize=bool(meta.get("normalize")),
                    max_length=meta.get("max_length"), device=device,
                    batch_size=self.batch_size or (512 if device == "cuda" else 64))
                if encoder.dim != self.spec.embedding_dim:
                    raise InputFileError(
                        f"the embedding model gives {encoder.dim}-dim vectors, the head reads {self.spec.embedding_dim}",
                        where="config.json: embedding", fix="point embedding.model_path at the model the data was embedded with")
                self._encoder = encoder
        return self._encoder.encode(texts)

    @torch.no_grad()
    def _head_logits(self, features: dict[str, torch.Tensor]) -> np.ndarray:
        n = next(iter(features.values())).shape[0]
        result = np.empty(n, dtype=np.float64)
        step = 65_536
        for start in range(0, n, step):
            batch = {k: v[start:start + step].to(self.device) for k, v in features.items()}
            result[start:start + step] = self.head(batch).float().cpu().numpy()
        return result

    def logits_of_texts(self, texts: list[str]) -> np.ndarray:
        self._text_only()
        vectors = self._encode(texts)
        return self._head_logits({"embedding": torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))})

    def logits_of_frame(self, frame: pl.DataFrame) -> np.ndarray:
        if self.spec.embedding_dim and "embedding" not in frame.columns:
            if self.embedding is None:
                raise InputFileError("rows to score have no embeddings", fix="run `causalrm embed` on them first")
            # Not embedded yet: embed the texts exactly as `score` does (one scoring path).
            vectors = self._encode(_frame_texts(frame, self.template))
            frame = frame.with_columns(embedding=pl.Series("embedding", vectors).cast(pl.List(pl.Float32)))
        return self._head_logits(feature_tensors(frame, self.spec))


class _SequenceClassifierScorer:
    """A transformers ``*ForSequenceClassification`` with ``num_labels=1``."""

    def __init__(self, root: Path, config: dict[str, Any], device: torch.device, batch_size: int | None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        settings = dict(config.get(EXPORT_KEY) or {})
        trained = root / "causalrm_train.json"
        if trained.is_file():
            record = _read_json(trained)
            settings.setdefault("template", record.get("text_template", TEXT_TEMPLATE))
            settings.setdefault("max_length", (record.get("finetune") or {}).get("max_length"))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(root))
            # An export of a head model ships its own class (modeling_causalrm.py, see rm_train.hf_export).
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(root), trust_remote_code=bool(config.get("auto_map")))
        except (OSError, ValueError) as exc:
            raise InputFileError(f"cannot load the model: {str(exc).splitlines()[0]}", where=str(root),
                                 fix="pass a folder from `causalrm train --finetune` or `causalrm export`") from exc
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.truncation_side = settings.get("truncation_side", "left")
        self.template = settings.get("template") or TEXT_TEMPLATE
        limits = [settings.get("max_length") or _DEFAULT_MAX_LENGTH, getattr(self.model.config, "max_position_embeddings", None),
                  getattr(self.tokenizer, "model_max_length", None)]
        self.max_length = min(v for v in limits if isinstance(v, int) and v > 0)
        self.model.eval().to(device)
        self.device = device
        self.batch_size = batch_size or 64

    @torch.no_grad()
    def logits_of_texts(self, texts: list[str]) -> np.ndarray:
        result = np.empty(len(texts), dtype=np.float64)
        # Longest first, so each batch pads little (the order is restored by index).
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in rows], truncation=True, max_length=self.max_length, padding=True,
                                   return_tensors="pt").to(self.device)
            result[rows] = self.model(**batch).logits.squeeze(-1).float().cpu().numpy()
        return result

    def logits_of_frame(self, frame: pl.DataFrame) -> np.ndarray:
        return self.logits_of_texts(_frame_texts(frame, self.template))


class RewardModel:
    """A trained causalrm reward model of any kind; scores (prompt, response) pairs.

    Load with :meth:`load`; the model is in eval mode and never trained here. Thread-safe for
    scoring from one thread at a time (the server funnels its batches through one worker).

    Attributes
    ----------
    kind : ``"head"`` (MLP head on frozen embeddings) or ``"sequence-classifier"``.
    template : the training text template, e.g. ``"{prompt}\\n\\n{response}"``.
    config : the folder's ``config.json``.
    """

    def __init__(self, scorer: _Scorer, *, kind: str, config: dict[str, Any], path: Path) -> None:
        self._scorer = scorer
        self.kind = kind
        self.config = config
        self.path = path
        self.template: str = scorer.template

    # The head model's parts, for code that inspects them (tests, benchmarks).
    @property
    def head(self) -> RewardHead:
        return self._scorer.head  # type: ignore[attr-defined]

    @property
    def spec(self) -> FeatureSpec:
        return self._scorer.spec  # type: ignore[attr-defined]

    @property
    def embedding(self) -> dict[str, Any] | None:
        """A head's embedding settings (``causalrm embed``'s meta.json); None for sequence classifiers."""
        return getattr(self._scorer, "embedding", None)

    @property
    def max_length(self) -> int | None:
        """Token limit of the model input (left truncation beyond it)."""
        if self.kind == "head":
            return (self.embedding or {}).get("max_length")
        return self._scorer.max_length  # type: ignore[attr-defined]

    def require_text_scoring(self) -> None:
        """Raise the one-line error :meth:`score` would raise when text alone cannot score this model."""
        if self.kind == "head":
            self._scorer._text_only()  # type: ignore[attr-defined]

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str = "auto", batch_size: int | None = None) -> "RewardModel":
        """Load a model folder from ``causalrm train`` (head or ``--finetune``) or ``causalrm export``.

        Parameters
        ----------
        device : ``auto`` (CUDA when visible), ``cpu`` or ``cuda``.
        batch_size : texts per forward pass (default 64 on CPU; 512 on CUDA for heads).
        """
        root = Path(model_dir)
        config_path = root / "config.json"
        if not config_path.is_file():
            raise InputFileError("not a reward model folder (config.json missing)", where=str(root),
                                 fix="pass the --out folder of `causalrm train` or `causalrm export`")
        config = _read_json(config_path)
        torch_device = resolve_device(device)
        if config.get("format") == MODEL_FORMAT:
            return cls(_HeadScorer(root, config, torch_device, batch_size), kind="head", config=config, path=root)
        if is_sequence_classifier(root):
            return cls(_SequenceClassifierScorer(root, config, torch_device, batch_size), kind="sequence-classifier",
                       config=config, path=root)
        raise InputFileError(f"config.json is neither a {MODEL_FORMAT} config nor a transformers sequence classifier",
                             where=str(config_path), fix="pass the --out folder of `causalrm train` or `causalrm export`")

    @staticmethod
    def _check_texts(values: Any, name: str) -> list[str]:
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise ScoringInputError(f"{name} must be a list of strings, got {type(values).__name__}")
        bad = next((i for i, v in enumerate(values) if v is not None and not isinstance(v, str)), None)
        if bad is not None:
            raise ScoringInputError(f"{name}[{bad}] is a {type(values[bad]).__name__}, not a string")
        return ["" if v is None else v for v in values]

    def score(self, prompts: Sequence[str], responses: Sequence[str], *, logit: bool = False) -> list[float]:
        """Reward of each (prompt, response): sigmoid(f(x)) (``logit=True``: f(x)); list of len(prompts).

        The training template joins prompt and response; a ``None`` text counts as empty.
        """
        prompts, responses = self._check_texts(prompts, "prompts"), self._check_texts(responses, "responses")
        if len(prompts) != len(responses):
            raise ScoringInputError(f"{len(prompts)} prompts but {len(responses)} responses",
                                    fix="pass one prompt per response")
        return self.score_texts(pair_texts(prompts, responses, self.template), logit=logit)

    def score_texts(self, texts: Sequence[str], *, logit: bool = False) -> list[float]:
        """Reward of texts that are already whole model inputs (template applied); list of len(texts)."""
        texts = self._check_texts(texts, "texts")
        if not texts:
            return []
        values = self._scorer.logits_of_texts(texts)
        return (values if logit else _sigmoid(values)).tolist()

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        """sigmoid(f(x)) of every row of a dataset or warehouse frame, array of shape (frame.height,).

        A head reads the frame's ``embedding`` (and feature) columns; when the frame has no
        embeddings, or the model is a sequence classifier, the rows' texts are scored as by :meth:`score`.
        """
        if frame.height == 0:
            return np.empty(0, dtype=np.float64)
        return _sigmoid(self._scorer.logits_of_frame(frame))


def _sigmoid(values: np.ndarray) -> np.ndarray:
    # torch's sigmoid, in float32 as training computed it, widened after: the same numbers as before issue 21.
    return torch.sigmoid(torch.from_numpy(np.asarray(values, dtype=np.float32))).double().numpy()


__all__ = ["EXPORT_KEY", "RewardModel", "ScoringInputError", "embedding_model_path", "is_sequence_classifier", "pair_texts"]
