"""The ratings source keeps the raw rating (outcome column ``rating``) and the users' and items'
side features (``ingest --user-features / --item-features``) in the feedback table (issue 17)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feedback_etl.features import read_feature_frame, read_outcome_column
from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_feedback
from schemas.errors import ConfigError, InputFileError


def _triples(tmp_path: Path) -> Path:
    path = tmp_path / "ratings.csv"
    # b,i1 is rated twice: the first triple wins (the second is a duplicate vote event).
    path.write_text("user_id,item_id,rating\na,i1,5\na,i2,2.5\nb,i1,4\nb,i1,1\nc,i3,3\n")
    return path


def test_raw_rating_round_trips_from_triples(tmp_path: Path) -> None:
    ingest(IngestConfig(inputs=(str(_triples(tmp_path)),), warehouse=str(tmp_path / "wh"), source="ratings", rating_threshold=4))
    frame = read_feedback(tmp_path / "wh").join(read_outcome_column(tmp_path / "wh", "rating"), on="exposure_id")
    assert frame.height == 9  # users {a, b, c} x items {i1, i2, i3}
    rated = dict(frame.filter(pl.col("observed")).select("exposure_id", "rating").iter_rows())
    assert rated == {"ratings:a:i1": 5.0, "ratings:a:i2": 2.5, "ratings:b:i1": 4.0, "ratings:c:i3": 3.0}
    assert frame.filter(~pl.col("observed"))["rating"].null_count() == 5  # no rating where nothing was rated
    labels = frame.filter(pl.col("observed")).select("rating", "label")
    assert (labels["label"] == (labels["rating"] >= 4).cast(pl.Int8)).all()  # the binary label beside it
    # An outcome column, never a model feature: a propensity model would read o off it.
    assert read_feature_frame(tmp_path / "wh") is None


def _matrix_with_side_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    ratings = np.array([[0, 5, 3], [4, 0, 0]])
    np.savetxt(tmp_path / "train.ascii", ratings, fmt="%d")
    users = tmp_path / "user_features.ascii"
    np.savetxt(users, np.array([[1, 0], [0, 1]]), fmt="%d")
    (tmp_path / "user_features_map.txt").write_text("gender:men\ngender:women\n")
    items = tmp_path / "items.csv"
    items.write_text("item_id,colour,price\ni0,red,10.5\ni1,blue,20\ni2,red,\ni9,green,1\n")
    return tmp_path / "train.ascii", users, items


def test_matrix_side_features_become_feature_columns(tmp_path: Path) -> None:
    matrix, users, items = _matrix_with_side_files(tmp_path)
    run = ingest(IngestConfig(inputs=(str(matrix),), warehouse=str(tmp_path / "wh"), source="ratings",
                              user_features=str(users), item_features=str(items)))
    assert {"rating", "user_gender_men", "user_gender_women", "colour", "price"} <= set(run["features"])
    frame = (read_feedback(tmp_path / "wh").select("exposure_id", "user_id", "response_id", "observed")
             .join(read_feature_frame(tmp_path / "wh"), on="exposure_id")
             .join(read_outcome_column(tmp_path / "wh", "rating"), on="exposure_id").sort("exposure_id"))
    row = frame.filter(pl.col("exposure_id") == "train:u1:i0").to_dicts()[0]
    assert (row["user_gender_men"], row["user_gender_women"], row["colour"], row["price"], row["rating"]) == (0.0, 1.0, "red", 10.5, 4.0)
    assert frame.filter(pl.col("exposure_id") == "train:u0:i2")["price"].to_list() == [None]  # blank cell: null
    assert frame.filter(pl.col("response_id") == "i1")["colour"].to_list() == ["blue", "blue"]
    assert frame["observed"].sum() == 3 and "rating" not in read_feature_frame(tmp_path / "wh").columns


@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda d: {"source": "canonical", "user_features": str(d / "user_features.ascii")}, ConfigError, "read side files of a ratings log"),
    (lambda d: (d / "user_features_map.txt").write_text("one\n") and {"user_features": str(d / "user_features.ascii")},
     InputFileError, "names 1 columns but the matrix has 2"),
    (lambda d: (d / "dup.csv").write_text("user_id,x\nu0,1\nu0,2\n") and {"user_features": str(d / "dup.csv")},
     InputFileError, "appear more than once"),
    (lambda d: (d / "nokey.csv").write_text("who,x\nu0,1\n") and {"user_features": str(d / "nokey.csv")},
     InputFileError, "no key column"),
    (lambda d: (d / "f.json").write_text("{}") and {"item_features": str(d / "f.json")}, InputFileError, "must be .ascii"),
])
def test_side_feature_errors_are_one_line(tmp_path: Path, make, error, message: str) -> None:
    matrix, _, _ = _matrix_with_side_files(tmp_path)
    options = {"source": "ratings", **make(tmp_path)}
    with pytest.raises(error, match=message):
        ingest(IngestConfig(inputs=(str(matrix),), warehouse=str(tmp_path / "wh"), **options))
    assert not (tmp_path / "wh" / "feedback").exists()


def test_outcome_column_missing_is_one_line(tmp_path: Path, warehouse: Path) -> None:
    with pytest.raises(ConfigError, match="has no 'rating' column"):
        read_outcome_column(warehouse, "rating")
    with pytest.raises(ConfigError, match="not an outcome column"):
        read_outcome_column(warehouse, "label")


def test_ratings_sql_puts_the_raw_rating_on_the_vote(duck) -> None:
    from etl_factory import T0, make_table

    from feedback_etl.sqlfiles import run_sql

    make_table(duck, "source_records", {"file_index": "INTEGER", "source_file": "VARCHAR", "file_tag": "VARCHAR",
                                        "row_number": "BIGINT", "parse_ok": "BOOLEAN", "record": "VARCHAR"}, [
        {"file_index": 0, "source_file": "m", "file_tag": "train", "row_number": 1, "parse_ok": True, "record": "0 5 3.5 x"},
    ])
    out = run_sql(duck, "adapters/ratings_matrix", {"base_time": T0, "threshold": 4.0}).pl()
    votes = dict(out.filter(out["event_type"].is_in(["thumbs_up", "thumbs_down"])).select("exposure_id", "rating_value").iter_rows())
    assert votes == {"train:u0:i1": 5.0, "train:u0:i2": 3.5}
    assert out.filter(out["event_type"] == "impression")["rating_value"].null_count() == 3  # impressions carry none
    assert out.filter(~out["parse_ok"])["rating_value"].to_list() == [None]
