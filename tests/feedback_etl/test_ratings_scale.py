"""The Yahoo-R3-shaped ratings generator of benchmarks/propensity/ratings_scale.py (issues 19 and 23),
at a small size: its counts and its missing-not-at-random selection, and the same ratings ingested
as a matrix and as triples give the same feedback rows."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl

from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_feedback

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.propensity.ratings_scale import MAR_MARGINAL, simulate  # noqa: E402

USERS, ITEMS, RATINGS, TEST_USERS = 300, 60, 4_000, 100


def test_generator_counts_and_selection() -> None:
    observed, test = simulate(seed=1, users=USERS, items=ITEMS, ratings=RATINGS, test_users=TEST_USERS)
    per_user = (observed > 0).sum(axis=1)
    assert observed.shape == (USERS, ITEMS) and per_user.sum() == RATINGS
    assert per_user.min() >= 10 and per_user.max() <= ITEMS // 2
    assert len(test) == TEST_USERS * 10 and (observed[test[:, 0], test[:, 1]] == 0).all()  # test songs were not rated
    # The random test's share of 1s is the MAR target within 4 standard errors (n = 1,000 cells).
    ones, n = (test[:, 2] == 1).mean(), len(test)
    assert abs(ones - MAR_MARGINAL[0]) < 4 * np.sqrt(MAR_MARGINAL[0] * (1 - MAR_MARGINAL[0]) / n)
    # Selection on the rating: the observed ratings are higher than the random ones by far more
    # than sampling noise (the tilt e^{0.6 (r - 1)} moves the mean by about one point).
    rated = observed[observed > 0]
    assert rated.mean() - test[:, 2].mean() > 0.5


def test_matrix_and_triples_give_the_same_feedback(tmp_path: Path) -> None:
    observed, _ = simulate(seed=2, users=40, items=30, ratings=500, test_users=5)
    np.savetxt(tmp_path / "train.txt", observed, fmt="%d")
    user, item = np.nonzero(observed)
    pl.DataFrame({"user_id": user + 1, "item_id": item + 1, "rating": observed[user, item]}).write_csv(tmp_path / "train.csv")
    ingest(IngestConfig(inputs=(str(tmp_path / "train.txt"),), warehouse=str(tmp_path / "m"), source="ratings"))
    ingest(IngestConfig(inputs=(str(tmp_path / "train.csv"),), warehouse=str(tmp_path / "t"), source="ratings"))
    cell = pl.col("exposure_id").str.extract_groups(r"^train:u?(\d+):i?(\d+)$")
    matrix = read_feedback(tmp_path / "m").select(
        user=cell.struct.field("1").cast(pl.Int64) + 1, item=cell.struct.field("2").cast(pl.Int64) + 1, observed="observed", label="label")
    triples = read_feedback(tmp_path / "t").select(
        user=cell.struct.field("1").cast(pl.Int64), item=cell.struct.field("2").cast(pl.Int64), observed="observed", label="label")
    # Every user rated something; the triples' universe is the items rated by someone.
    rated_items = len(np.unique(item))
    assert matrix.height == 40 * 30 and triples.height == 40 * rated_items
    joined = triples.join(matrix, on=["user", "item"], how="left", suffix="_m")
    assert joined["observed_m"].null_count() == 0
    assert (joined["observed"] == joined["observed_m"]).all() and (joined["label"] == joined["label_m"]).all()
    assert int(joined["observed"].sum()) == 500 == int(matrix["observed"].sum())
