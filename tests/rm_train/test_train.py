"""Reward-head training: the loss goes down, checkpoints and metrics are written, early stopping,
oracle labels, ID-only matrix factorisation, pairwise training, prediction and evaluation."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from rm_train import train as train_module
from rm_train.config import TrainConfig
from rm_train.data import ShuffledBatches, load_weighted_dataset
from rm_train.evaluate import METRIC_NAMES, evaluate
from rm_train.heads import RewardHead
from rm_train.predict import RewardModel, predict
from rm_train.train import train
from schemas.errors import ConfigError, EstimationError, InputFileError, TableValidationError

from rm_factory import hashed_text_embedding, make_pairs


def _cfg(**overrides) -> TrainConfig:
    values = {"epochs": 3, "batch_size": 256, "device": "cpu", "hidden": (32,), "seed": 0, "lr": 3e-3}
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def dr_model(weighted_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dr") / "model"
    torch.set_num_threads(1)
    return out, train(weighted_dataset, _cfg(loss="causalrm-dr"), out)


def test_training_lowers_the_loss_and_updates_both_heads(dr_model: tuple[Path, dict], weighted_dataset: Path) -> None:
    out, metrics = dr_model
    epochs = metrics["epochs"]
    assert len(epochs) == 3 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["imputation_loss"] < epochs[0]["imputation_loss"]
    # Every trainable tensor moved away from its seeded initialisation; the imputation head too.
    torch.manual_seed(0)
    spec = RewardModel.load(out).spec
    initial = train_module._new_head(spec, _cfg(loss="causalrm-dr")).state_dict()
    for name, tensor in load_file(str(out / "model.safetensors")).items():
        assert not torch.equal(tensor, initial[name]), name
    imputer = load_file(str(out / "imputation.safetensors"))  # IMPUTATION_FOLDS heads, cross-fitted by user fold (issue 15)
    for k in range(train_module.IMPUTATION_FOLDS):
        assert any(not torch.equal(imputer[f"heads.{k}.{name}"], initial[name]) for name in initial)


def test_model_folder_contract(dr_model: tuple[Path, dict]) -> None:
    out, metrics = dr_model
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "causalrm-reward-head" and config["train"]["loss"] == "causalrm-dr"
    assert config["features"]["embedding_dim"] == 32
    assert config["dataset_manifest"]["schema_version"] == 1
    written = json.loads((out / "metrics.json").read_text())
    assert written["best_epoch"] == metrics["best_epoch"] and len(written["epochs"]) == 3
    assert {"train_loss", "val_loss", "seconds"} <= set(written["epochs"][0])
    assert written["n_train_rows"] == written["n_train_exposures"] > written["n_observed_train"]


def test_predict_and_evaluate(dr_model: tuple[Path, dict], weighted_dataset: Path, truth_path: Path, tmp_path: Path) -> None:
    out, _ = dr_model
    summary = predict(out, weighted_dataset, tmp_path / "preds.parquet", device="cpu")
    preds = pl.read_parquet(tmp_path / "preds.parquet")
    assert summary["rows"] == preds.height == 8_000
    assert preds.columns == ["exposure_id", "reward", "split"]
    assert preds["reward"].is_between(0, 1).all()
    metrics = evaluate(tmp_path / "preds.parquet", truth_path, split="test")
    assert set(METRIC_NAMES) <= set(metrics) and metrics["n"] == preds.filter(pl.col("split") == "test").height
    # Hand-computed R2 against r* on the same rows.
    joined = preds.filter(pl.col("split") == "test").join(pl.read_parquet(truth_path), on="exposure_id")
    q, r_star = joined["reward"].to_numpy(), joined["r_star"].to_numpy()
    assert metrics["r2_r_star"] == pytest.approx(1 - ((q - r_star) ** 2).sum() / ((r_star - r_star.mean()) ** 2).sum())
    assert metrics["auc_y_true"] > 0.6  # the hashed words carry r*: a trained head ranks far better than chance


def test_predict_on_a_warehouse_with_embeddings(dr_model: tuple[Path, dict], warehouse: Path, weighted_dataset: Path,
                                               tmp_path: Path) -> None:
    from feedback_etl.io import read_feedback

    wh = tmp_path / "wh"
    shutil.copytree(warehouse, wh)
    frame = read_feedback(wh)
    vectors = hashed_text_embedding(frame["prompt_text"].fill_null("").to_list(), frame["response_text"].fill_null("").to_list())
    (wh / "embeddings").mkdir()
    pl.DataFrame({"exposure_id": frame["exposure_id"], "embedding": pl.Series(vectors).cast(pl.List(pl.Float32))}).write_parquet(
        wh / "embeddings" / "part-00000.parquet")
    predict(dr_model[0], wh, tmp_path / "from_wh.parquet", device="cpu")
    predict(dr_model[0], weighted_dataset, tmp_path / "from_dataset.parquet", device="cpu")
    from_wh = pl.read_parquet(tmp_path / "from_wh.parquet")
    both = from_wh.join(pl.read_parquet(tmp_path / "from_dataset.parquet"), on="exposure_id", suffix="_ds")
    assert from_wh.height == both.height == 8_000
    np.testing.assert_allclose(both["reward"].to_numpy(), both["reward_ds"].to_numpy(), rtol=1e-6)


def test_same_seed_same_model(weighted_dataset: Path, tmp_path: Path) -> None:
    first = train(weighted_dataset, _cfg(loss="naive", epochs=2), tmp_path / "a")
    second = train(weighted_dataset, _cfg(loss="naive", epochs=2), tmp_path / "b")
    assert first["epochs"][-1]["val_loss"] == second["epochs"][-1]["val_loss"]
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # naive trains on observed rows only.
    assert first["n_train_rows"] == first["n_observed_train"]


def test_early_stopping_keeps_the_best_epoch(weighted_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.9])
    monkeypatch.setattr(train_module._Objective, "split_loss", lambda self, *args, **kwargs: next(scripted))
    metrics = train(weighted_dataset, _cfg(loss="ips", epochs=6, patience=2), tmp_path / "m")
    assert metrics["best_epoch"] == 1 and len(metrics["epochs"]) == 4 and metrics["stopped_early"]


def test_oracle_trains_on_clean_labels_of_all_exposures(weighted_dataset: Path, truth_path: Path, tmp_path: Path) -> None:
    cfg = _cfg(loss="naive", label_column="y_true", truth=str(truth_path), all_observed=True, epochs=1)
    metrics = train(weighted_dataset, cfg, tmp_path / "oracle")
    assert metrics["n_train_rows"] == metrics["n_train_exposures"] == metrics["n_observed_train"]
    frame = load_weighted_dataset(weighted_dataset, label_column="y_true", truth=str(truth_path), all_observed=True)
    truth = pl.read_parquet(truth_path).select("exposure_id", "y_true")
    check = frame.join(truth, on="exposure_id", suffix="_t")
    assert (check["label"] == check["y_true_t"]).all() and (check["weight"] == 1.0).all() and (check["rho01"] == 0).all()


def _ratings_dataset(root: Path, n_users: int = 150, n_items: int = 80, seed: int = 0) -> tuple[Path, np.ndarray]:
    """ID-only ratings: r* = sigmoid(<u, v>), MNAR observation favouring liked items (Coat-like)."""
    rng = np.random.default_rng(seed)
    users, items = rng.normal(0, 1, (n_users, 3)), rng.normal(0, 1, (n_items, 3))
    grid = np.array([(u, i) for u in range(n_users) for i in range(n_items)])
    r_star = 1 / (1 + np.exp(-(users[grid[:, 0]] * items[grid[:, 1]]).sum(1) * 1.5))
    propensity = np.clip(0.15 + 0.5 * r_star, 0.05, 1.0)
    observed = rng.random(len(grid)) < propensity
    label = (rng.random(len(grid)) < r_star).astype(np.int8)
    frame = pl.DataFrame({
        "exposure_id": [f"e{k}" for k in range(len(grid))], "user_id": [f"u{u}" for u in grid[:, 0]],
        "prompt_id": "p", "response_id": [f"i{i}" for i in grid[:, 1]], "prompt_text": None, "response_text": None,
        "channel": "rating", "observed": observed, "label": label,
        "propensity": propensity, "weight": np.where(observed, 1 / propensity, 0.0),
        "split": np.where(rng.random(len(grid)) < 0.85, "train", "val"), "rho01": 0.0, "rho10": 0.0,
    }).with_columns(label=pl.when(pl.col("observed")).then(pl.col("label")))
    root.mkdir(parents=True)
    frame.write_parquet(root / "data.parquet")
    (root / "manifest.json").write_text("{}")
    return root, r_star


def test_id_only_data_trains_as_matrix_factorisation(tmp_path: Path) -> None:
    dataset, r_star = _ratings_dataset(tmp_path / "ratings")
    cfg = TrainConfig(loss="ips", id_features=("user_id", "response_id"), hidden=(), id_dim=3, epochs=15, lr=0.02,
                      weight_decay=0.1, batch_size=256, device="cpu", patience=5)
    train(dataset, cfg, tmp_path / "mf")
    model = RewardModel.load(tmp_path / "mf")
    assert model.head.mlp is None and len(model.head.id_factors) == 2  # bias + <u, v> + user/item biases only
    frame = pl.read_parquet(dataset / "data.parquet")
    predicted = model.predict(frame)
    assert np.corrcoef(predicted, r_star)[0, 1] > 0.5


def test_pairwise_bradley_terry(weighted_dataset: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    shutil.copytree(weighted_dataset, dataset)
    make_pairs(dataset)
    # Few pairs in 8,000 exposures (~170 train): small batches, a few epochs.
    metrics = train(dataset, _cfg(loss="causalrm-ips", pairs=True, epochs=5, batch_size=32, lr=1e-2), tmp_path / "bt")
    assert metrics["pairs"] and metrics["n_train_rows"] == pl.read_parquet(dataset / "pairs.parquet").filter(pl.col("split") == "train").height
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]


def test_head_forward_shapes() -> None:
    head = RewardHead(embedding_dim=4, n_numeric=2, categorical_cardinalities=(3,), id_cardinalities=(5, 6), hidden=(8,))
    batch = {"embedding": torch.randn(7, 4), "numeric": torch.randn(7, 2), "categorical": torch.randint(0, 3, (7, 1)),
             "ids": torch.stack([torch.randint(0, 5, (7,)), torch.randint(0, 6, (7,))], 1)}
    assert head(batch).shape == (7,)
    rebuilt = RewardHead.from_architecture(head.architecture)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in head.parameters())


def test_numeric_and_categorical_features(weighted_dataset: Path, tmp_path: Path) -> None:
    cfg = _cfg(loss="causalrm-ips", embedding=False, numeric_features=("response_chars", "position"),
               categorical_features=("model_id", "platform"), epochs=1)
    train(weighted_dataset, cfg, tmp_path / "ctx")
    spec = RewardModel.load(tmp_path / "ctx").spec
    assert spec.embedding_dim == 0 and spec.numeric == ["response_chars", "position"] and "platform" in spec.vocab


def _broken_dataset(weighted_dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "broken"
    root.mkdir()
    frame = pl.read_parquet(weighted_dataset / "data.parquet")
    frame.with_columns(weight=pl.lit(1.0)).write_parquet(root / "data.parquet")  # unobserved rows with weight 1
    return root


@pytest.mark.parametrize(
    ("make_input", "cfg", "error", "message"),
    [
        (lambda ds, tmp: tmp / "missing", {}, InputFileError, "dataset folder not found"),
        (_broken_dataset, {}, TableValidationError, "weight_zero_iff_unobserved"),
        (lambda ds, tmp: ds, {"label_column": "y_true"}, ConfigError, "not in the dataset"),
        (lambda ds, tmp: ds, {"numeric_features": ("no_such_column",)}, ConfigError, "not in the dataset"),
        (lambda ds, tmp: ds, {"pairs": True, "loss": "ips"}, InputFileError, "pairs.parquet not found"),
        (lambda ds, tmp: ds, {"train_split": "test", "val_split": "val", "loss": "naive",
                              "label_column": "label"}, None, None),
    ],
)
def test_training_errors(weighted_dataset: Path, tmp_path: Path, make_input, cfg: dict, error, message) -> None:
    source = make_input(weighted_dataset, tmp_path)
    if error is None:  # a valid, unusual split choice trains fine
        train(source, _cfg(epochs=1, **cfg), tmp_path / "ok")
        return
    with pytest.raises(error, match=message):
        train(source, _cfg(**cfg), tmp_path / "m")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": "dr"}, "unknown loss"),
        ({"base_loss": "hinge"}, "unknown base loss"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"lr": 0}, "lr must be > 0"),
        ({"all_observed": True}, "--all-observed needs labels"),
        ({"pairs": True, "loss": "causalrm-dr"}, "no pairwise form"),
        ({"embedding": False}, "no features"),
        ({"device": "tpu"}, "unknown device"),
        ({"imputation_folds": 1}, "imputation_folds must be >= 2"),
    ],
)
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_no_observed_rows_is_an_estimation_error(weighted_dataset: Path, tmp_path: Path) -> None:
    frame = pl.read_parquet(weighted_dataset / "data.parquet").with_columns(observed=pl.lit(False))
    with pytest.raises(EstimationError, match="no observed rows"):
        train_module._prepare_rows(frame, _cfg(), dataset=weighted_dataset)


def test_sampler_shares_partition_the_single_process_batches() -> None:
    """Under DDP the ranks' step-t batches are the single process's step-t batch, interleaved."""
    single = ShuffledBatches(1_003, 100, seed=7)
    ranks = [ShuffledBatches(1_003, 100, seed=7, rank=r, world_size=4) for r in range(4)]
    for sampler in (single, *ranks):
        sampler.set_epoch(3)
    shares = [list(sampler) for sampler in ranks]
    assert all(len(share) == len(single) == 11 for share in shares)
    for step, batch in enumerate(single):  # the last global batch has 3 rows: rank 3 gets none
        assert ranks[0].global_rows(step) == len(batch)
        interleaved = torch.empty_like(batch)
        for rank, share in enumerate(shares):
            interleaved[rank::4] = share[step]
        assert torch.equal(interleaved, batch), step
    with pytest.raises(ConfigError, match="not divisible by the world size 4"):
        ShuffledBatches(1_003, 102, seed=7, rank=0, world_size=4)


@pytest.mark.parametrize("copies", [1, 2])
def test_global_batch_dropout_reproduces_the_single_process_mask(copies: int) -> None:
    """Each rank's dropout noise is its rows of nn.Dropout's noise on the global batch, and the
    generator ends where the single process's does (so later masks agree too)."""
    global_rows, width, world_size = 13, 5, 3  # an uneven last batch: ranks get 5, 4 and 4 rows
    x = torch.randn(global_rows * copies, width)
    torch.manual_seed(11)
    expected = torch.nn.Dropout(0.3).train()(x)
    after = torch.rand(1)
    for rank in range(world_size):
        shard = train_module._BatchShard(rank, world_size)
        shard.set_batch(global_rows, torch.device("cpu"), copies=copies)
        torch.manual_seed(11)
        got = train_module._GlobalBatchDropout(0.3, shard).train()(x[shard.positions])
        assert torch.equal(got, expected[shard.positions])
        assert torch.equal(torch.rand(1), after)


def test_batch_size_must_divide_over_ranks(weighted_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")  # refused before joining any process group
    with pytest.raises(ConfigError, match="--batch-size 255 is not divisible by the world size 2"):
        train(weighted_dataset, _cfg(batch_size=255), tmp_path / "m")


_DDP_LOSSES = ("causalrm-ips", "causalrm-dr")


def _ddp_rank(rank: int, ports: list[int], dataset: str, out: str, results) -> None:
    torch.set_num_threads(1)
    for loss, port in zip(_DDP_LOSSES, ports):
        # train() joins the group from these variables (as under torchrun) and leaves it at the end;
        # a fresh port per run avoids rebinding the previous run's store.
        os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        metrics = train(dataset, _cfg(loss=loss, epochs=2), Path(out) / loss)
        results.put((loss, rank, metrics))


def _free_ports(count: int) -> list[int]:
    import socket

    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


@pytest.mark.slow
def test_two_gloo_ranks_train_the_single_process_model(weighted_dataset: Path, tmp_path: Path) -> None:
    """Two gloo ranks (as under torchrun, global batch 256 = 2 x 128, dropout 0.1) reproduce one process:
    same per-epoch train / validation / imputation losses and the same saved weights, for causalrm-ips
    and causalrm-dr (imputation head included), up to floating-point summation order.
    Spawned, not forked: a forked child inherits the parent's OpenMP state and can deadlock."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ports = _free_ports(len(_DDP_LOSSES))
    ranks = [context.Process(target=_ddp_rank, args=(r, ports, str(weighted_dataset), str(tmp_path / "ddp"), results))
             for r in (0, 1)]
    for process in ranks:
        process.start()
    # The single-process references train meanwhile.
    single = {loss: train(weighted_dataset, _cfg(loss=loss, epochs=2), tmp_path / "single" / loss) for loss in _DDP_LOSSES}
    reports = {}
    for _ in range(len(ranks) * len(_DDP_LOSSES)):
        loss, rank, metrics = results.get(timeout=240)
        reports[loss, rank] = metrics
    for process in ranks:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    assert [p.exitcode for p in ranks] == [0, 0]

    for loss in _DDP_LOSSES:
        reference, rank0, rank1 = single[loss], reports[loss, 0], reports[loss, 1]
        assert rank0["world_size"] == rank1["world_size"] == 2 and reference["world_size"] == 1
        # All-reduced: bit-identical on the ranks, so early stopping cannot diverge between them.
        assert rank0["epochs"] == [{**e, "seconds": r["seconds"]} for e, r in zip(rank1["epochs"], rank0["epochs"])]
        for key in ("train_loss", "val_loss") + (("imputation_loss",) if loss == "causalrm-dr" else ()):
            np.testing.assert_allclose([e[key] for e in rank0["epochs"]], [e[key] for e in reference["epochs"]],
                                       rtol=1e-5, err_msg=f"{loss} {key}")
        assert rank0["best_epoch"] == reference["best_epoch"]
        files = ("model.safetensors", "imputation.safetensors") if loss == "causalrm-dr" else ("model.safetensors",)
        for name in files:
            expected = load_file(str(tmp_path / "single" / loss / name))
            got = load_file(str(tmp_path / "ddp" / loss / name))
            assert got.keys() == expected.keys()
            for key in expected:
                torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5, msg=f"{loss} {name} {key}")


def test_failed_training_keeps_the_previous_model(weighted_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: the model folder is built aside; a run that fails after checkpointing an epoch leaves
    the previous model byte-identical and no building folder behind."""
    out = tmp_path / "m"
    train(weighted_dataset, _cfg(loss="naive", epochs=1), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    scripted = iter([0.5, float("nan")])  # epoch 0 improves (checkpoint written), epoch 1 diverges
    monkeypatch.setattr(train_module._Objective, "split_loss", lambda self, *args, **kwargs: next(scripted))
    with pytest.raises(EstimationError, match="validation loss is nan"):
        train(weighted_dataset, _cfg(loss="ips", epochs=2), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
