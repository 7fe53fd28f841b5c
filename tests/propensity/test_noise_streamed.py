"""noise estimate above its memory budget (issue 23): the proxy trains on the observed rows, every
exposure is scored in batches into compact arrays, and the estimate equals the in-memory one.

Inputs: the session ``warehouse`` fixture (8,000 simulated exposures) with truth-based scores
(test_export.py's ``prepare``), estimated whole and with ``max_rows=1`` and batches of 997 rows.
The feature map is fitted on the whole table's statistics and the fold proxies on the same votes,
so the rates, intervals and segments agree to floating-point rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from feedback_etl.io import read_feedback
from propensity.io import read_scores, write_scores
from propensity.models.crossfit import group_folds
from propensity.noise._proxy import ProxyFeaturizer
from propensity.noise._streamed import _stack_rows
from propensity.noise.estimate import NoiseConfig, _side_bootstrap, estimate_noise
from tests.propensity.test_export import prepare
from tests.propensity.test_streamed_chain import _close

STREAMED = {"max_rows": 1, "batch_rows": 997}
VOLATILE = {"created_at", "config", "memory", "warehouse"}


@pytest.mark.parametrize("options", [
    {"segment_by": "platform"},
    # the logistic proxy with standardised features, no weights and user-grouped folds: 35 s on 2 busy cores
    pytest.param({"proxy": "logistic", "use_weights": False, "bootstrap": 20}, marks=pytest.mark.slow),
])
def test_streamed_noise_estimate_equals_the_in_memory_one(warehouse: Path, tmp_path: Path, options: dict) -> None:
    wh = prepare(warehouse, tmp_path, noise=None)
    # user-grouped folds, as a propensity fit writes them (prepare's scores all carry fold 0)
    users = read_feedback(wh).select("exposure_id", "user_id")
    scores = read_scores(wh).drop("fold").join(users, on="exposure_id")
    write_scores(wh, "vote", scores.with_columns(fold=pl.Series(group_folds(scores["user_id"].to_numpy(), 3, 0))).drop("user_id"))
    base = {"bootstrap": 40, "min_anchors": 100, **options}
    whole = estimate_noise(wh, NoiseConfig(**base))
    streamed = estimate_noise(wh, NoiseConfig(**base, **STREAMED))
    assert whole["memory"]["streamed"] is False and streamed["memory"]["streamed"] is True
    assert whole.keys() == streamed.keys()
    for key in whole.keys() - VOLATILE:
        assert _close(streamed[key], whole[key]), key
    assert streamed["rho01"] is not None and (streamed["segments"] or not options.get("segment_by"))


def test_streamed_noise_estimate_with_embeddings_equals_the_in_memory_one(warehouse: Path, tmp_path: Path) -> None:
    """The proxy's embedding features reach the streamed estimate through DuckDB's join: exposures
    without an embedding are zero-filled and an exposure written again in a later file takes its
    last vector, as in memory; the counts and folds are read without the embeddings."""
    wh = prepare(warehouse, tmp_path, noise=None)
    users = read_feedback(wh).select("exposure_id", "user_id")
    scores = read_scores(wh).drop("fold").join(users, on="exposure_id")
    write_scores(wh, "vote", scores.with_columns(fold=pl.Series(group_folds(scores["user_id"].to_numpy(), 3, 0))).drop("user_id"))
    ids = users["exposure_id"]
    vectors = np.random.default_rng(1).normal(size=(ids.len(), 3)).astype(np.float32)
    embeddings = pl.DataFrame({"exposure_id": ids, "embedding": vectors.tolist()})
    (wh / "embeddings").mkdir()
    embeddings[: ids.len() // 2].write_parquet(wh / "embeddings" / "part-0.parquet")
    # the second file leaves out 500 exposures and rewrites 200 of the first file's
    again = embeddings[:200].with_columns(pl.col("embedding").list.eval(pl.element() * -1))
    pl.concat([embeddings[ids.len() // 2 : -500], again]).write_parquet(wh / "embeddings" / "part-1.parquet")
    base = {"bootstrap": 20, "min_anchors": 100, "use_embeddings": True}
    whole = estimate_noise(wh, NoiseConfig(**base))
    streamed = estimate_noise(wh, NoiseConfig(**base, **STREAMED))
    assert streamed["memory"]["streamed"] is True
    for key in whole.keys() - VOLATILE:
        assert _close(streamed[key], whole[key]), key
    plain = estimate_noise(wh, NoiseConfig(**{**base, "use_embeddings": False}, **STREAMED))
    assert plain["proxy"]["n_features"] < streamed["proxy"]["n_features"]


def _side_bootstrap_whole(obs, wy, w, m, *, quantile: float, min_anchors: int, min_quantile: float) -> float:
    """The replicate's P(r=1 | anchors) with cumulative sums over every exposure (the computation
    before issue 23's prefix scan), the reference for ``_side_bootstrap``."""
    cm, co = np.cumsum(m), np.cumsum(m * obs)
    i_req = int(np.searchsorted(cm, (1 - quantile) * cm[-1], side="left"))
    i_need = int(np.searchsorted(co, min_anchors, side="left"))
    i_cap = int(np.searchsorted(cm, (1 - min_quantile) * cm[-1], side="left"))
    i = min(max(i_req, i_need), i_cap, m.size - 1)
    den = float(np.dot(m[: i + 1], w[: i + 1]))
    return float(np.dot(m[: i + 1], wy[: i + 1]) / den) if den > 0 else float("nan")


@pytest.mark.parametrize("min_anchors", [
    5,          # the anchor set ends in the first prefix
    6_000,      # min_anchors widens it past several prefixes
    10**9,      # never reached: the cap at min_quantile decides
])
def test_bootstrap_prefix_scan_equals_the_whole_array_computation(min_anchors: int) -> None:
    """A replicate scans the sorted exposures only until its anchor set's end is known (issue 23: a
    15M-exposure estimate spent most of its bootstrap on the 97% of rows past the anchors); the
    result is bit for bit the whole-array computation's, including the widened and capped sets."""
    rng = np.random.default_rng(7)
    n, n_users = 300_000, 20_000
    user = rng.integers(0, n_users, n).astype(np.int32)
    obs = (rng.random(n) < 0.05).astype(np.float64)
    w = obs / rng.uniform(0.05, 1, n)
    wy = w * (rng.random(n) < 0.7)
    sizes = np.bincount(user, minlength=n_users).astype(np.float64)
    params = {"quantile": 0.97, "min_anchors": min_anchors, "min_quantile": 0.75}
    for _ in range(5):
        counts = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users)).astype(np.float64)
        expected = _side_bootstrap_whole(obs, wy, w, counts[user], **params)
        assert _side_bootstrap(obs, wy, w, counts, user, float(counts @ sizes), **params) == expected


def test_stacked_feature_rows_equal_scipy_vstack() -> None:
    """The observed rows' feature blocks are stacked into one CSR matrix, freeing each block as it goes."""
    rng = np.random.default_rng(3)
    blocks = [sp.random(rows, 40, density=0.2, format="csr", random_state=rng) for rows in (7, 1, 0, 13)]
    expected = sp.vstack(blocks, format="csr")
    stacked = _stack_rows(list(blocks), 40)
    assert stacked.shape == expected.shape and (stacked != expected).nnz == 0
    assert np.array_equal(stacked.indptr, expected.indptr) and np.array_equal(stacked.indices, expected.indices)


def test_text_block_from_numbered_texts_equals_the_vectorised_texts() -> None:
    """A streamed estimate hands the featurizer each row's text number and the distinct texts'
    rows (vectorised once) instead of the texts: same feature matrix."""
    docs = ["good answer here", "bad answer", "", "good answer", "a very good answer here", "answer bad"]
    frame = pl.DataFrame({"response_text": [docs[i % len(docs)] if i % 4 else None for i in range(30)]})
    featurizer = ProxyFeaturizer.fit(frame)
    distinct = frame["response_text"].fill_null("").unique().to_list()
    numbered = frame.with_columns(
        _text_id=pl.col("response_text").fill_null("").replace_strict(distinct, list(range(len(distinct))), return_dtype=pl.Int32))
    expected = featurizer.transform(frame)
    got = featurizer.transform(numbered.drop("response_text"), text_rows=featurizer.text_rows(distinct))
    assert got.shape == expected.shape and (got != expected).nnz == 0
