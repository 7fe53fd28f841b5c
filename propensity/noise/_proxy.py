"""Proxy preference model for the anchor-point noise estimator (private to ``propensity.noise.estimate``).

The anchor method needs a ranking of *every* exposure by how likely its true preference r* is 1.
We fit P(r=1 | x) on the observed rows with inverse-propensity weights 1/p (so the fit targets the
whole exposure population, not the self-selected voters), cross-fitted by user groups so that each
exposure is scored by a model that never saw its label (or any label of its user): the labels of the
anchors are then honest held-out labels (issue 10, "winner's curse").

Features: the feedback table's context columns (``schemas.feedback.CONTEXT_*``), a binary bag of
word 1-2 grams of ``response_text`` (the reward is a property of the text; context alone barely
ranks it) and, when ``causalrm embed`` has run, the response embeddings.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import scipy.sparse as sp

from propensity.models.crossfit import group_folds
from schemas.errors import EstimationError
from schemas.feedback import CONTEXT_CATEGORICAL, CONTEXT_NUMERIC

log = logging.getLogger(__name__)

PROXY_MODELS: tuple[str, ...] = ("lightgbm", "logistic")


def build_proxy_features(
    frame: pl.DataFrame, embeddings: pl.DataFrame | None = None, *, text: bool = True, standardize: bool = False,
    custom: dict[str, str] | None = None,
) -> tuple[sp.csr_matrix, list[str]]:
    """Feature matrix for the proxy preference model.

    Parameters
    ----------
    frame : feedback rows (one per exposure). Context columns missing from it are skipped.
    embeddings : (exposure_id, embedding) frame or None; rows without an embedding get zeros.
    text : add a binary bag of word 1-2 grams of ``response_text`` when that column has text.
    standardize : z-score numeric columns and fill nulls with 0 (for the linear proxy); LightGBM
        keeps raw values and NaN for nulls.
    custom : custom context columns of ``frame`` (name -> categorical | numeric | boolean; issue 17),
        used beside the contract's.

    Returns
    -------
    (X, names): X a CSR matrix of shape (n_rows, n_features), names the feature names.
    """
    featurizer = ProxyFeaturizer.fit(frame, embeddings, text=text, standardize=standardize, custom=custom)
    return featurizer.transform(frame, embeddings), featurizer.names


class ProxyFeaturizer:
    """The proxy's feature map, fitted once and applied to any rows (a streamed noise estimate
    scores every exposure batch by batch with the map fitted on the whole table, issue 23).

    Attributes: ``numeric`` columns (with ``mean`` / ``std`` when standardised), ``levels`` per
    categorical column, the fitted ``vectorizer`` of response texts (or None), ``embedding_dim``
    (0: no embeddings) and ``names``, the feature names.
    """

    def __init__(self, *, numeric: list[str], mean: np.ndarray | None, std: np.ndarray | None, levels: dict[str, np.ndarray],
                 vectorizer, embedding_dim: int) -> None:
        self.numeric, self.mean, self.std, self.levels = numeric, mean, std, levels
        self.vectorizer, self.embedding_dim = vectorizer, embedding_dim
        self.names = list(numeric) + [f"{c}={level}" for c, values in levels.items() for level in values]
        if vectorizer is not None:
            self.names += [f"text:{t}" for t in vectorizer.get_feature_names_out()]
        self.names += [f"emb{j}" for j in range(embedding_dim)]
        if not self.names:
            raise EstimationError(
                "no features for the proxy preference model",
                where="feedback table",
                fix="the feedback table needs context columns, response_text or WH/embeddings",
            )

    @staticmethod
    def columns(frame_columns: list[str], custom: dict[str, str] | None) -> tuple[list[str], list[str]]:
        """(numeric, categorical) feature columns among ``frame_columns``."""
        custom = custom or {}
        numeric = [c for c in CONTEXT_NUMERIC if c in frame_columns] + [c for c, kind in custom.items() if kind != "categorical"]
        categorical = [c for c in CONTEXT_CATEGORICAL if c in frame_columns] + [c for c, kind in custom.items() if kind == "categorical"]
        return numeric, categorical

    @classmethod
    def fit(cls, frame: pl.DataFrame, embeddings: pl.DataFrame | None = None, *, text: bool = True, standardize: bool = False,
            custom: dict[str, str] | None = None) -> "ProxyFeaturizer":
        """Fit on ``frame`` (every row the features must describe)."""
        numeric, categorical = cls.columns(frame.columns, custom)
        mean = std = None
        if numeric and standardize:
            values = frame.select(pl.col(c).cast(pl.Float64) for c in numeric).to_numpy()
            mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        levels = {c: np.unique(frame[c].cast(pl.Utf8).fill_null("<null>").to_numpy()) for c in categorical}
        docs = None
        if text and "response_text" in frame.columns and frame["response_text"].drop_nulls().len() > 0:
            docs = frame["response_text"].fill_null("").unique(maintain_order=True).to_list()
        dim = len(embeddings["embedding"][0]) if embeddings is not None and embeddings.height else 0
        return cls.from_parts(numeric=numeric, mean=mean, std=std, levels=levels, docs=docs, embedding_dim=dim)

    @classmethod
    def from_parts(cls, *, numeric: list[str], mean: np.ndarray | None, std: np.ndarray | None, levels: dict[str, np.ndarray],
                   docs: list[str] | None, embedding_dim: int) -> "ProxyFeaturizer":
        """From the whole table's statistics (numeric means / stds, sorted levels, distinct texts)."""
        vectorizer = None
        if docs is not None:
            from sklearn.feature_extraction.text import CountVectorizer

            # min_df keeps n-grams that occur in several distinct responses: rarer ones cannot be learnt
            # from a few noisy votes and only slow the trees down.
            vectorizer = CountVectorizer(
                ngram_range=(1, 2), min_df=min(5, max(1, len(docs) // 200)), max_features=20_000, binary=True, dtype=np.float64
            )
            try:
                vectorizer.fit(docs)
            except ValueError:  # empty vocabulary (all texts blank or stop words)
                log.info("response_text gives no n-gram features; proxy uses context only")
                vectorizer = None
        return cls(numeric=numeric, mean=mean, std=std, levels=levels, vectorizer=vectorizer, embedding_dim=embedding_dim)

    def text_rows(self, docs: list[str]) -> sp.csr_matrix:
        """The text block of ``docs`` (response texts, nulls as ``""``), CSR of shape (len(docs),
        vocabulary size): row i is what :meth:`transform` gives a row whose response is ``docs[i]``."""
        return self.vectorizer.transform(docs).tocsr()

    def transform(self, frame: pl.DataFrame, embeddings: pl.DataFrame | None = None, *,
                  text_rows: sp.csr_matrix | None = None) -> sp.csr_matrix:
        """Features of ``frame``'s rows, CSR of shape (n_rows, len(names)); ``embeddings`` (exposure_id,
        embedding) or an ``embedding`` column of ``frame`` give the embedding block.

        ``text_rows``: the text block of every distinct response, vectorised once (:meth:`text_rows`);
        ``frame`` then carries ``_text_id``, the row of its response there, instead of ``response_text``
        (a streamed estimate never moves the texts of every exposure, issue 23). Same features.
        """
        blocks: list[sp.csr_matrix] = []
        n = frame.height
        if self.numeric:
            values = frame.select(pl.col(c).cast(pl.Float64) for c in self.numeric).to_numpy()
            if self.mean is not None:
                values = np.nan_to_num((values - self.mean) / np.where(self.std > 0, self.std, 1.0))
            blocks.append(sp.csr_matrix(values))
        for column, levels in self.levels.items():
            codes = frame[column].cast(pl.Utf8).fill_null("<null>")
            index = codes.replace_strict(list(levels), list(range(len(levels))), default=-1, return_dtype=pl.Int64).to_numpy()
            known = index >= 0
            blocks.append(sp.csr_matrix((np.ones(int(known.sum())), (np.flatnonzero(known), index[known])), shape=(n, len(levels))))
        if self.vectorizer is not None and text_rows is not None:
            blocks.append(text_rows[frame["_text_id"].to_numpy()])
        elif self.vectorizer is not None:
            # Vectorise each distinct text once: a response is typically shown many times.
            texts = frame["response_text"].fill_null("")
            distinct = texts.unique(maintain_order=True)
            position = texts.to_frame("t").join(
                distinct.to_frame("t").with_row_index("i"), on="t", how="left", maintain_order="left"
            )["i"].to_numpy()
            blocks.append(self.vectorizer.transform(distinct.to_list()).tocsr()[position])
        if self.embedding_dim:
            if embeddings is None and "embedding" in frame.columns:
                embeddings = frame.select("exposure_id", "embedding")
            dense = np.zeros((n, self.embedding_dim), dtype=np.float64)
            if embeddings is not None and embeddings.height:
                joined = frame.select("exposure_id").join(embeddings, on="exposure_id", how="left", maintain_order="left")
                present = joined["embedding"].is_not_null().to_numpy()
                if present.any():
                    dense[present] = np.asarray(joined["embedding"].filter(pl.Series(present)).to_list(), dtype=np.float64)
            blocks.append(sp.csr_matrix(dense))
        return sp.hstack(blocks, format="csr") if blocks else sp.csr_matrix((n, 0))


_LOGISTIC_C: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)


def _weighted_log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum())


def _lightgbm_classifier(seed: int):
    import lightgbm as lgb

    # Small trees, early-stopped on held-out users: the labels are noisy (flips on top of
    # y ~ Bernoulli(r*)), and an unregularised proxy ranks the tails badly, which is exactly where
    # the anchors come from (benchmarks/noise/README.md, "proxy model"). n_jobs=1: on small shared
    # machines LightGBM's threads fight each other, and one thread is reproducible.
    return lgb.LGBMClassifier(
        n_estimators=2000, learning_rate=0.05, num_leaves=4, min_child_samples=50,
        colsample_bytree=0.8, random_state=seed, n_jobs=1, verbose=-1,
    )


def _fit_lightgbm(X_fit, y_fit, w_fit, X_val, y_val, w_val, seed: int):
    """The fold's proxy through ``LGBMClassifier.fit`` on copies of its rows (the reference of
    :func:`_fit_lightgbm_rows`, which the fits use)."""
    import lightgbm as lgb

    model = _lightgbm_classifier(seed)
    model.fit(
        X_fit, y_fit, sample_weight=w_fit, eval_X=(X_val,), eval_y=(y_val,), eval_sample_weight=[w_val],
        callbacks=[lgb.early_stopping(50, verbose=False)],
    )
    return model


class _BoosterProxy:
    """A LightGBM booster fitted by :func:`_fit_lightgbm_rows`, predicting as ``LGBMClassifier`` does."""

    def __init__(self, booster) -> None:
        self.booster_, self.best_iteration_ = booster, booster.best_iteration

    def predict_proba(self, X) -> np.ndarray:
        p = self.booster_.predict(X)  # at the early-stopping round, as LGBMClassifier.predict_proba
        return np.vstack((1.0 - p, p)).transpose()


def _fit_lightgbm_rows(features, fit: np.ndarray, val: np.ndarray, label: np.ndarray, w: np.ndarray, seed: int) -> _BoosterProxy:
    """:func:`_fit_lightgbm` on ``features``' rows ``fit`` (validation rows ``val``), the same model
    bit for bit, without holding the fold's copy of its rows while the trees grow: each LightGBM
    Dataset is built from a copy only it holds, freed once binned (``LGBMClassifier.fit`` keeps its
    input for the whole fit: 0.8 times the training rows' sparse features, issue 23)."""
    import lightgbm as lgb

    spec = _lightgbm_classifier(seed)
    spec._n_classes = 2  # as LGBMClassifier.fit sets it for 0/1 labels; the parameters it then trains with:
    params = spec._process_params(stage="fit")
    params["metric"] = [m for m in ([params["metric"]] if isinstance(params["metric"], (str, type(None))) else params["metric"])
                        if m is not None]
    train_set = lgb.Dataset(features[fit], label=label[fit], weight=w[fit], params=params)
    valid_set = lgb.Dataset(features[val], label=label[val], weight=w[val], params=params)
    booster = lgb.train(params, train_set, num_boost_round=spec.n_estimators, valid_sets=[valid_set], feval=[],
                        callbacks=[lgb.early_stopping(50, verbose=False)])
    booster.free_dataset()
    return _BoosterProxy(booster)


def _fit_logistic(X_fit, y_fit, w_fit, X_val, y_val, w_val, X_all, y_all, w_all):
    from sklearn.linear_model import LogisticRegression

    # The L2 strength is picked on held-out users, then the model is refitted on all training rows.
    losses = []
    for c in _LOGISTIC_C:
        model = LogisticRegression(C=c, max_iter=2000).fit(X_fit, y_fit, sample_weight=w_fit)
        losses.append(_weighted_log_loss(y_val, model.predict_proba(X_val)[:, 1], w_val))
    best = _LOGISTIC_C[int(np.argmin(losses))]
    return LogisticRegression(C=best, max_iter=2000).fit(X_all, y_all, sample_weight=w_all)


def cross_fit_scores(
    features: sp.csr_matrix,
    observed: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray,
    fold: np.ndarray,
    user_id: np.ndarray,
    *,
    kind: str = "lightgbm",
    seed: int = 0,
) -> np.ndarray:
    """Out-of-fold P(r=1 | x) for every exposure.

    In each outer fold, the training users are split again (1 in 5 held out) to early-stop the
    LightGBM proxy or pick the logistic proxy's L2 strength.

    Parameters
    ----------
    features : matrix of shape (n_exposures, n_features).
    observed : bool array of shape (n_exposures,), o.
    label : int array of shape (n_exposures,), r on observed rows (ignored elsewhere).
    weight : float array of shape (n_exposures,), 1/p on observed rows.
    fold : int array of shape (n_exposures,); exposures of fold k are scored by a model fitted on
        the observed rows of the other folds.
    user_id : array of shape (n_exposures,), the grouping of the inner validation split.

    Returns
    -------
    array of shape (n_exposures,): the proxy's score for each exposure (used only to rank).
    """
    models = fit_proxy_models(features, observed, label, weight, fold, user_id, np.unique(fold), kind=kind, seed=seed)
    return predict_proxy(models, features, fold)


def fit_proxy_models(
    features: sp.csr_matrix, observed: np.ndarray, label: np.ndarray, weight: np.ndarray, fold: np.ndarray, user_id: np.ndarray,
    fold_values: np.ndarray, *, kind: str = "lightgbm", seed: int = 0,
) -> dict[int, object]:
    """The proxy model of each fold in ``fold_values``, fitted on the observed rows of the other
    folds (:func:`cross_fit_scores`). The arrays need cover only the observed rows' (a streamed
    estimate passes those alone, issue 23); unobserved rows never train a proxy."""
    if kind not in PROXY_MODELS:
        raise EstimationError(f"unknown proxy model {kind!r}", where="noise proxy model", fix=f"use one of {', '.join(PROXY_MODELS)}")
    user_id = np.asarray(user_id)
    models: dict[int, object] = {}
    for k in fold_values:
        train = observed & (fold != k)
        # Inner split drawn among this fold's training users (a global one would line up with the
        # outer folds: group_folds places the largest users the same way for every seed).
        inner = np.zeros_like(train)
        inner[train] = group_folds(user_id[train], 5, seed + int(k)) == 0
        fit, val = train & ~inner, train & inner
        for name, rows in (("training", fit), ("validation", val)):
            if np.unique(label[rows]).size < 2:
                raise EstimationError(
                    f"fold {int(k)}: the {name} rows ({int(rows.sum())} observed) hold fewer than two label values",
                    where="noise proxy model",
                    fix="use fewer folds or a larger warehouse",
                )
        w = weight / weight[train].mean()  # mean-1 weights keep LightGBM's min_child_weight meaningful
        if kind == "lightgbm":
            models[int(k)] = _fit_lightgbm_rows(features, fit, val, label, w, seed + int(k))
        else:
            models[int(k)] = _fit_logistic(
                features[fit], label[fit], w[fit], features[val], label[val], w[val], features[train], label[train], w[train]
            )
    return models


def predict_proxy(models: dict[int, object], features: sp.csr_matrix, fold: np.ndarray) -> np.ndarray:
    """Scores of ``features``' rows, each by the proxy of its fold; array (n_rows,)."""
    scores = np.full(features.shape[0], np.nan)
    for k, model in models.items():
        test = fold == k
        if test.any():
            scores[test] = model.predict_proba(features[test])[:, 1]
    return scores


def proxy_sample(n_observed: int, cap: int | None, seed: int) -> np.ndarray | None:
    """The observed rows that train the fold proxies when there are more than ``cap`` (issue 23: a
    streamed estimate holds its training rows' features, and at 30M exposures those of every vote
    are twice its memory budget): sorted positions, among the observed rows in row order, of a
    seeded uniform sample of exactly ``cap`` of them; None when all ``n_observed`` train.

    Fold k's proxy then trains on the sampled rows outside fold k, a uniform sample of that fold's
    training rows; every exposure is still scored. The sample depends on ``seed`` and the counts
    alone (not on batch sizes), so a streamed and an in-memory estimate draw the same rows.
    """
    if cap is None or n_observed <= cap:
        return None
    return np.sort(np.random.default_rng([seed, 23]).choice(n_observed, cap, replace=False))


def training_rows(n_observed: int, sample: np.ndarray | None, seed: int) -> dict:
    """What trained the proxies, as recorded in noise.json (``proxy.training_rows``)."""
    used = n_observed if sample is None else int(sample.size)
    return {"observed": int(n_observed), "used": used, "rate": used / n_observed if n_observed else 1.0,
            "sampled": sample is not None, "seed": int(seed)}
