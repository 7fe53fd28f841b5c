"""Text pools for the simulator: real (prompt, response) texts with a true reward r* in [0, 1].

Each source reduces to a pool of responses with a human target in [0, 1] taken from the data's
own human labels. A fixed *teacher*, fitted once on that target (deterministic), turns it into a
smooth true reward r* = sigmoid(2.5 * z), z the standardised teacher score. The teacher is what
makes r* a function of the text (so a reward model can learn it), while staying anchored to real
human judgements. Two teachers:

``ngram`` (default)
    ridge regression on hashed word 1-2 grams of prompt and response. With 65k features and a few
    thousand texts it nearly memorises the human labels: r* is close to the label itself, which a
    reward model on sentence embeddings may be unable to predict (on HH-RLHF harmless pairs an
    oracle MLP on MiniLM vectors reaches R2 0.05).
``embedding``
    ridge regression on the MiniLM embedding of exactly the text ``causalrm embed`` encodes
    (``"{prompt}\n\n{response}"``, left-truncated to ``max_length`` tokens): r* is the direction of
    the embedding space that best predicts the human labels, so a reward model on those vectors
    can learn it, the semi-synthetic setting of the CausalRM paper (a learnable reward grounded in
    human preference data). Encoding goes through ``causalrm embed``'s text cache when a cache
    folder is given, so the benchmark encodes every text once.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.errors import ConfigError, InputFileError

log = logging.getLogger(__name__)

TEXT_SOURCES: tuple[str, ...] = ("synthetic", "hh_rlhf", "oasst", "finegrained")
TEACHERS: tuple[str, ...] = ("ngram", "embedding")


@dataclass(frozen=True)
class TextPool:
    """Responses the simulator can show. Arrays of shape (n_responses,)."""

    source: str
    prompt_id: np.ndarray
    prompt_text: np.ndarray
    response_id: np.ndarray
    response_text: np.ndarray
    human_target: np.ndarray
    r_star: np.ndarray
    teacher: str = "ngram"
    teacher_auc: float | None = None

    def __len__(self) -> int:
        return len(self.response_id)


def find_shared_data(explicit: str | Path | None = None) -> Path:
    """Locate ``shared/data`` (``$CAUSALRM_SHARED_DATA``, else ``../shared/data`` upwards from cwd)."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    if os.environ.get("CAUSALRM_SHARED_DATA"):
        candidates.append(Path(os.environ["CAUSALRM_SHARED_DATA"]))
    here = Path.cwd().resolve()
    for parent in [here, *here.parents]:
        candidates.append(parent / "shared" / "data")
        candidates.append(parent.parent / "shared" / "data")
    repo = Path(__file__).resolve().parent.parent
    candidates.append(repo.parent / "shared" / "data")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise InputFileError(
        "shared data folder not found",
        where=str(Path.cwd()),
        fix="pass --data-dir or set CAUSALRM_SHARED_DATA to the folder holding coat/, oasst/, hh_rlhf/",
    )


def _teacher_reward(prompts: list[str], responses: list[str], target: np.ndarray) -> np.ndarray:
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import Ridge

    vectorizer = HashingVectorizer(n_features=2**16, ngram_range=(1, 2), alternate_sign=False, norm="l2")
    features = vectorizer.transform([f"{p} || {r}" for p, r in zip(prompts, responses)])
    teacher = Ridge(alpha=1.0).fit(features, target)
    return _squash(teacher.predict(features))


def _squash(score: np.ndarray) -> np.ndarray:
    z = (score - score.mean()) / (score.std() + 1e-12)
    return 1.0 / (1.0 + np.exp(-2.5 * z))


def _embedding_teacher(
    prompts: list[str], responses: list[str], target: np.ndarray, *, cache: str | None, max_length: int
) -> tuple[np.ndarray, float | None]:
    """r* from a ridge teacher on MiniLM vectors, and the teacher's 5-fold cross-validated AUC
    against the binarised human target (how much of the human judgement r* keeps)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    from feedback_etl.embed import TEXT_TEMPLATE, EmbedConfig, encode_texts

    texts = [TEXT_TEMPLATE.format(prompt=p, response=r) for p, r in zip(prompts, responses)]
    log.info("embedding teacher: encoding %d texts (cache: %s)", len(texts), cache or "none")
    vectors = encode_texts(texts, EmbedConfig(max_length=max_length, cache=cache, device="cpu"))
    # Regularisation chosen by leave-one-out: r* is the direction that *generalises* from the
    # human labels, not one that memorises their noise (384 dimensions, a few thousand texts).
    teacher = RidgeCV(alphas=np.logspace(-2, 4, 13))
    labels = target > np.median(target)
    auc = None
    if 0 < labels.sum() < len(labels):
        held_out = cross_val_predict(teacher, vectors, target, cv=5)
        auc = float(roc_auc_score(labels, held_out))
    return _squash(teacher.fit(vectors, target).predict(vectors)), auc


def _split_dialogue(text: str) -> tuple[str, str]:
    marker = "\n\nAssistant:"
    cut = text.rfind(marker)
    if cut < 0:
        return "", text.strip()
    return text[:cut].strip(), text[cut + len(marker) :].strip()


def _load_hh_rlhf(root: Path) -> tuple[list, list, list]:
    path = root / "hh_rlhf" / "harmless-base-test.jsonl.gz"
    prompts, responses, target = [], [], []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            pair = json.loads(line)
            for key, value in (("chosen", 1.0), ("rejected", 0.0)):
                prompt, response = _split_dialogue(pair[key])
                prompts.append(prompt)
                responses.append(response)
                target.append(value)
    return prompts, responses, target


def _load_oasst(root: Path) -> tuple[list, list, list]:
    path = root / "oasst" / "en_100_tree.jsonl"
    prompts, responses, target = [], [], []

    def walk(message: dict, context: str) -> None:
        replies = message.get("replies") or []
        assistant = [r for r in replies if r.get("role") == "assistant"]
        n = len(assistant)
        for reply in replies:
            if reply.get("role") == "assistant":
                rank = reply.get("rank")
                emojis = reply.get("emojis") or {}
                votes = emojis.get("+1", 0) - emojis.get("-1", 0)
                rank_score = 0.5 if rank is None or n < 2 else 1.0 - rank / (n - 1)
                prompts.append(context[-2000:])
                responses.append(reply["text"])
                target.append(0.7 * rank_score + 0.3 * (1.0 / (1.0 + np.exp(-votes))))
            walk(reply, context + "\n" + reply["text"])

    with open(path, encoding="utf-8") as handle:
        for line in handle:
            tree = json.loads(line)
            walk(tree["prompt"], tree["prompt"]["text"])
    return prompts, responses, target


def _load_finegrained(root: Path) -> tuple[list, list, list]:
    path = root / "finegrained_rlhf" / "dev_feedback.json"
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    prompts, responses, target = [], [], []
    for item in json.loads(path.read_text(encoding="utf-8")):
        wins = np.zeros(4)
        for (a, b), pref in zip(pairs, item["preference"]):
            if pref == 1:
                wins[a] += 1
            elif pref == 2:
                wins[b] += 1
            else:
                wins[a] += 0.5
                wins[b] += 0.5
        for k in range(4):
            prompts.append(item["question"])
            responses.append(item[f"prediction {k + 1}"])
            target.append(wins[k] / 3.0)
    return prompts, responses, target


_TOPICS = ["cooking", "taxes", "python code", "travel", "fitness", "gardening", "history", "music"]
_GOOD = ["clear", "accurate", "step-by-step", "friendly", "well sourced", "concise", "helpful"]
_BAD = ["vague", "wrong", "rude", "off-topic", "rambling", "unsafe", "evasive"]


def _synthetic(n_responses: int = 4000, seed: int = 12345) -> tuple[list, list, list]:
    rng = np.random.default_rng(seed)
    prompts, responses, target = [], [], []
    for _ in range(n_responses):
        topic = _TOPICS[rng.integers(len(_TOPICS))]
        n_good, n_bad = rng.integers(0, 4), rng.integers(0, 4)
        words = list(rng.choice(_GOOD, n_good, replace=False)) + list(rng.choice(_BAD, n_bad, replace=False))
        rng.shuffle(words)
        length = int(rng.integers(1, 6))
        body = " ".join(["This answer about", topic, "is", ", ".join(words) or "plain", "."] * length)
        prompts.append(f"Question about {topic} #{rng.integers(200)}")
        responses.append(body)
        target.append(float(1.0 / (1.0 + np.exp(-(n_good - n_bad) + 0.1 * (length - 3)))))
    return prompts, responses, target


def load_text_pool(
    source: str,
    data_dir: str | Path | None = None,
    *,
    teacher: str = "ngram",
    teacher_cache: str | None = None,
    teacher_max_length: int = 128,
) -> TextPool:
    """Load a text source and attach the teacher's true reward r*.

    Parameters
    ----------
    source : one of ``synthetic``, ``hh_rlhf``, ``oasst``, ``finegrained``.
    data_dir : folder holding the shared datasets; found automatically when None.
    teacher : ``ngram`` or ``embedding`` (module docstring).
    teacher_cache : embedding teacher: the ``causalrm embed --cache`` folder to share.
    teacher_max_length : embedding teacher: token limit, as ``causalrm embed --max-length``.
    """
    if source not in TEXT_SOURCES:
        raise ConfigError(f"unknown text source {source!r}", fix=f"use one of {', '.join(TEXT_SOURCES)}")
    if teacher not in TEACHERS:
        raise ConfigError(f"unknown teacher {teacher!r}", where="--teacher", fix=f"use one of {', '.join(TEACHERS)}")
    if source == "synthetic":
        prompts, responses, target = _synthetic()
    else:
        root = find_shared_data(data_dir)
        loader = {"hh_rlhf": _load_hh_rlhf, "oasst": _load_oasst, "finegrained": _load_finegrained}[source]
        try:
            prompts, responses, target = loader(root)
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise InputFileError(f"cannot read {source} data: {exc}", where=str(root), fix="check the shared data folder") from exc
    target_arr = np.asarray(target, dtype=np.float64)
    teacher_auc = None
    if teacher == "embedding":
        r_star, teacher_auc = _embedding_teacher(prompts, responses, target_arr, cache=teacher_cache, max_length=teacher_max_length)
    else:
        r_star = _teacher_reward(prompts, responses, target_arr)
    prompt_index: dict[str, int] = {}
    prompt_ids = [f"{source[:2]}-p{prompt_index.setdefault(p, len(prompt_index)):06d}" for p in prompts]
    return TextPool(
        source=source,
        prompt_id=np.asarray(prompt_ids, dtype=object),
        prompt_text=np.asarray(prompts, dtype=object),
        response_id=np.asarray([f"{source[:2]}-r{i:06d}" for i in range(len(responses))], dtype=object),
        response_text=np.asarray(responses, dtype=object),
        human_target=target_arr,
        r_star=r_star,
        teacher=teacher,
        teacher_auc=teacher_auc,
    )
