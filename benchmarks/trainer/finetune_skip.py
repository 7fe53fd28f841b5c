"""Fine-tuning with IPS losses: skipping weight-0 rows (issue 19) against the full forward, same run.

Both arms fine-tune the same randomly initialised BERT (built from a config, dropout 0 so the two
trajectories are comparable step for step) with ``causalrm-ips`` on the same weighted dataset of
simulated logs, for one epoch, with the same batches. The baseline sets
``rm_train.hf_trainer.ZERO_WEIGHT_SKIPPABLE`` to empty (every row goes through the model, as before);
the new path sends only rows with w = o / p > 0. Reported: epoch time, rows/s and tokens/s over all
rows of the split, the final training loss of each arm and the max abs difference of their scores.

    .venv/bin/python benchmarks/trainer/finetune_skip.py --n-exposures 4000 --repeats 3

Writes benchmarks/trainer/finetune_skip.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "rm_train"))

from feedback_etl.ingest import IngestConfig, ingest  # noqa: E402
from feedback_etl.simulator import SimulationConfig, simulate  # noqa: E402
from rm_train import hf_trainer  # noqa: E402
from rm_train.config import FinetuneConfig  # noqa: E402


def build(root: Path, n_exposures: int, seed: int) -> tuple[Path, Path]:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from feedback_etl.embed import default_model_path
    from rm_factory import make_weighted_dataset

    simulate(SimulationConfig(out=str(root / "logs"), n_exposures=n_exposures, seed=seed))
    wh = root / "warehouse"
    ingest(IngestConfig(inputs=(str(root / "logs" / "events"),), warehouse=str(wh)))
    (root / "truth.parquet").write_bytes((root / "logs" / "truth.parquet").read_bytes())
    dataset = make_weighted_dataset(wh, root / "dataset", embedding_dim=None)
    backbone = root / "backbone"
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=256, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    return dataset, backbone


def run_arm(dataset: Path, backbone: Path, out: Path, *, skip: bool) -> dict:
    saved = hf_trainer.ZERO_WEIGHT_SKIPPABLE
    hf_trainer.ZERO_WEIGHT_SKIPPABLE = saved if skip else frozenset()
    try:
        cfg = FinetuneConfig(model=str(backbone), loss="causalrm-ips", epochs=1, batch_size=32, lr=5e-4,
                             device="cpu", max_length=128, seed=0)
        started = time.perf_counter()
        metrics = hf_trainer.finetune(dataset, cfg, out)
        metrics["wall_s"] = time.perf_counter() - started
    finally:
        hf_trainer.ZERO_WEIGHT_SKIPPABLE = saved
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-exposures", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import polars as pl

    from rm_train.hf_trainer import score_texts

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset, backbone = build(root, args.n_exposures, args.seed)
        frame = pl.read_parquet(dataset / "data.parquet")
        train = frame.filter(pl.col("split") == "train")
        arms: dict[str, list[dict]] = {"full_forward": [], "skip_zero_weight": []}
        for repeat in range(args.repeats):  # interleaved, so drift on a shared machine hits both arms alike
            for name, skip in (("full_forward", False), ("skip_zero_weight", True)):
                arms[name].append(run_arm(dataset, backbone, root / f"{name}-{repeat}", skip=skip))
        test = frame.filter(pl.col("split") == "test").head(500)
        scores = {name: score_texts(root / f"{name}-0", test) for name in arms}
    summary = {
        "n_train_rows": train.height, "observed_share": round(float(train["observed"].mean()), 4),
        "repeats": args.repeats, "threads": args.threads,
        "max_abs_score_diff": float(np.max(np.abs(scores["full_forward"] - scores["skip_zero_weight"]))),
    }
    for name, runs in arms.items():
        summary[name] = {
            "epoch_s_median": round(statistics.median(r["train_runtime_s"] for r in runs), 2),
            "rows_per_s_median": round(statistics.median(r["train_samples_per_s"] for r in runs), 1),
            "tokens_per_s_median": round(statistics.median(r["train_tokens_per_s"] for r in runs), 1),
            "train_loss": runs[0]["train_loss"],
        }
    summary["speedup_epoch_time"] = round(summary["full_forward"]["epoch_s_median"] / summary["skip_zero_weight"]["epoch_s_median"], 2)
    (Path(__file__).parent / "finetune_skip.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
