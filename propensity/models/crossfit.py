"""Cross-fitting: K folds grouped by user, every exposure scored by a model that never saw it.

A propensity scored in-sample is overfitted toward its own label (observed rows get too-high
scores, weights 1/p too small); cross-fitting (Chernozhukov et al., double ML) removes that. Folds
are grouped by ``user_id`` because one user's exposures share habits: a model that saw a user's
other exposures would still partly "see" the row it scores.

An estimator may offer a ``_cross_fit_shared_bins(X, y, folds, on_fold_done)`` fast path
(LightGBM does: it bins the features once for all folds); :func:`cross_fit` uses it when no
``augment`` hook is given. It must keep the same contract: fold k's model never sees fold k.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from schemas.errors import ConfigError, EstimationError

log = logging.getLogger(__name__)

# Users above this count are placed greedily (largest first into the lightest fold); the long
# tail of small users is placed at random, which balances fold sizes by the law of large numbers
# and keeps the assignment O(n) for millions of users.
_GREEDY_USERS = 20_000


def group_folds(user_id: np.ndarray | list | Any, n_folds: int, seed: int = 0) -> np.ndarray:
    """Assign every exposure to one of ``n_folds`` folds, all exposures of a user in the same fold.

    Parameters
    ----------
    user_id : array-like of shape (n_exposures,), any hashable values (str ids, ints).
    n_folds : number of folds K >= 2.
    seed : the assignment is deterministic for (user_id multiset, K, seed), independent of row order.

    Returns
    -------
    ndarray of shape (n_exposures,), int32 fold index in [0, K).

    Raises
    ------
    ConfigError : K < 2.
    EstimationError : fewer distinct users than folds.
    """
    if n_folds < 2:
        raise ConfigError(f"folds must be >= 2, got {n_folds}", where="--folds", fix="use --folds 5")
    users = np.asarray(user_id)
    if users.ndim != 1:
        users = users.reshape(-1)
    _, inverse, counts = np.unique(users, return_inverse=True, return_counts=True)
    return assign_user_folds(counts, n_folds, seed)[inverse]


def assign_user_folds(counts: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """The fold of each user, given the users' exposure counts in sorted user order.

    :func:`group_folds` is ``assign_user_folds(counts)[inverse]`` over ``np.unique(user_id)``; a
    streamed fit (``propensity.models.casecontrol``) counts users batch by batch, sorts them the
    same way and gets the same folds without holding every row's user id.

    Parameters
    ----------
    counts : int array of shape (n_users,), exposures per user, users sorted by id.

    Returns
    -------
    int32 array of shape (n_users,), the fold of each user.
    """
    if n_folds < 2:
        raise ConfigError(f"folds must be >= 2, got {n_folds}", where="--folds", fix="use --folds 5")
    counts = np.asarray(counts)
    n_users = len(counts)
    if n_users < n_folds:
        raise EstimationError(
            f"{n_users} distinct user(s) cannot fill {n_folds} user-grouped folds",
            where="user_id",
            fix="use fewer --folds or log more users",
        )
    rng = np.random.default_rng(seed)
    # Random order first, then a stable sort by size: ties among equal-sized users are random.
    order = rng.permutation(n_users)
    order = order[np.argsort(-counts[order], kind="stable")]
    user_fold = np.empty(n_users, dtype=np.int32)
    load = np.zeros(n_folds, dtype=np.int64)
    head = order[:_GREEDY_USERS]
    for u in head:
        k = int(np.argmin(load))
        user_fold[u] = k
        load[k] += counts[u]
    tail = order[_GREEDY_USERS:]
    if len(tail):
        user_fold[tail] = rng.integers(0, n_folds, len(tail))
    # Every fold needs at least one user; with >= K users the greedy head guarantees it.
    return user_fold


def _take(X: Any, rows: np.ndarray) -> Any:
    return X.iloc[rows] if isinstance(X, pd.DataFrame) else X[rows]


def _append(X: Any, extra: np.ndarray | pd.DataFrame | None) -> Any:
    if extra is None:
        return X
    if isinstance(X, pd.DataFrame):
        if isinstance(extra, pd.DataFrame):
            extra_frame = extra
        else:
            values = np.asarray(extra, dtype=np.float64).reshape(len(X), -1)
            extra_frame = pd.DataFrame(values, columns=[f"augment_{j}" for j in range(values.shape[1])])
        extra_frame = extra_frame.set_axis(X.index, axis=0)
        return pd.concat([X, extra_frame], axis=1)
    return np.hstack([X, np.asarray(extra, dtype=np.float64).reshape(len(X), -1)])


# augment(k, train_rows, test_rows) -> (extra columns for the training rows, extra for fold k's rows)
FoldAugment = Callable[[int, np.ndarray, np.ndarray], tuple[Any, Any]]


@dataclass(frozen=True, kw_only=True)
class CrossFitResult:
    """Out-of-fold scores and the K fitted fold models.

    Attributes
    ----------
    oof : ndarray of shape (n_exposures,), P(y=1) from the model of the row's own fold, which
        was trained on the other K-1 folds only.
    models : list of K fitted estimators, ``models[k]`` trained on rows with ``folds != k``.
    folds : ndarray of shape (n_exposures,), the fold of each row.
    """

    oof: np.ndarray
    models: list
    folds: np.ndarray


def cross_fit(
    estimator: Any,
    X: np.ndarray | pd.DataFrame,
    y: np.ndarray,
    folds: np.ndarray,
    *,
    augment: FoldAugment | None = None,
    on_fold_done: Callable[[int], None] | None = None,
) -> CrossFitResult:
    """Fit a clone of ``estimator`` per fold on the other folds and score the held-out fold.

    Parameters
    ----------
    estimator : unfitted scikit-learn-style binary classifier (``predict_proba`` -> (n, 2)).
    X : array or DataFrame of shape (n_exposures, n_features).
    y : array of shape (n_exposures,), 0/1 target (e.g. ``observed``).
    folds : int array of shape (n_exposures,) from :func:`group_folds`.
    augment : optional hook for features that depend on other rows' labels (e.g. an item's
        feedback rate). Called per fold with the training and held-out row indices, it returns
        extra columns for each; it must compute the held-out rows' columns from the training
        rows only and the training rows' columns without the held-out fold (see ``propensity.slice.coat``).
    on_fold_done : called with k after fold k is scored (progress bars).

    Raises
    ------
    EstimationError : some training split holds a single class.
    """
    y = np.asarray(y).astype(np.int8)
    folds = np.asarray(folds)
    fold_ids = np.unique(folds)
    for k in fold_ids:
        train_y = y[folds != k]
        n_pos = int(train_y.sum())
        if n_pos == 0 or n_pos == len(train_y):
            raise EstimationError(
                f"training folds for fold {k} hold one class only ({n_pos:,} positives of {len(train_y):,})",
                where="cross-fitting",
                fix="use fewer --folds or more data",
            )
    shared_bins = getattr(estimator, "_cross_fit_shared_bins", None)
    if augment is None and callable(shared_bins):
        # LightGBM: bin the features once for all folds (label-free, see the estimator's docstring).
        oof, models = shared_bins(X, y, folds, on_fold_done)
        return CrossFitResult(oof=oof, models=models, folds=folds)
    oof = np.full(len(y), np.nan, dtype=np.float64)
    models = []
    for k in fold_ids:
        test_rows = np.flatnonzero(folds == k)
        train_rows = np.flatnonzero(folds != k)
        X_train, X_test = _take(X, train_rows), _take(X, test_rows)
        if augment is not None:
            extra_train, extra_test = augment(int(k), train_rows, test_rows)
            X_train, X_test = _append(X_train, extra_train), _append(X_test, extra_test)
        model = clone(estimator).fit(X_train, y[train_rows])
        oof[test_rows] = model.predict_proba(X_test)[:, 1]
        models.append(model)
        log.debug("fold %d: trained on %d rows, scored %d", k, len(train_rows), len(test_rows))
        if on_fold_done is not None:
            on_fold_done(int(k))
    return CrossFitResult(oof=oof, models=models, folds=folds)
