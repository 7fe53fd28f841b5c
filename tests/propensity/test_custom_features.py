"""Custom context columns (issue 17) in the propensity fit, the noise proxy and the audit's balance table.

The simulator's ``extra_context`` logs a plan tier, an app version and a turn number that drive who
votes; ingested with ``--keep-extra-columns`` they become feedback columns the fit uses by default.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.simulator import SimulationConfig, simulate
from propensity.audit.report import AuditConfig, build_report
from propensity.models.custom_features import parse_feature_list, select_features, with_custom_features
from propensity.models.fit import PropensityConfig, fit_propensity
from feedback_etl.io import read_feedback
from schemas.errors import ConfigError

N = 4_000
CUSTOM = ("plan_tier", "app_version", "turn")


@pytest.fixture(scope="module")
def context_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("custom_features")
    simulate(SimulationConfig(out=str(root / "logs"), n_exposures=N, n_users=1_000, seed=3, extra_context=True))
    ingest(IngestConfig(inputs=(str(root / "logs" / "events"),), warehouse=str(root / "wh"), keep_extra_columns=True))
    return root / "wh"


def _fit(wh: Path, **kw):
    return fit_propensity(wh, PropensityConfig(folds=3, n_jobs=1, model_params={"n_estimators": 100}, **kw))


@pytest.mark.slow
def test_declaring_the_context_columns_raises_the_context_auc(context_warehouse):
    without = _fit(context_warehouse, exclude_features=CUSTOM).metrics
    with_custom = _fit(context_warehouse).metrics
    assert set(CUSTOM) <= set(with_custom["features"]) and not set(CUSTOM) & set(without["features"])
    # The columns multiply the propensity by up to 2.5 x 2 x 1.15^7 (simulator): a large effect. The
    # AUC's standard error with ~800 positives among 4,000 is about 0.01 (Hanley-McNeil), so a
    # gain of three standard errors is asked for (1,000 users: user-level columns are learnt across users).
    n_pos = with_custom["n_observed"]
    se = math.sqrt(0.25 * (1 / n_pos + 1 / (N - n_pos)))
    assert with_custom["auc"] - without["auc"] > 3 * se


def test_features_option_picks_an_exact_list_and_names_unknown_columns(context_warehouse):
    result = _fit(context_warehouse, features=("plan_tier", "position"))
    assert result.metrics["features"] == ["plan_tier", "position"]
    with pytest.raises(ConfigError, match=r"\['tier'\] is not feature column"):
        _fit(context_warehouse, features=("tier",))
    assert parse_feature_list(" plan_tier, turn ,", where="--features") == ("plan_tier", "turn")
    assert parse_feature_list("", where="--features") is None


def test_select_features_types_custom_columns(context_warehouse):
    frame = with_custom_features(read_feedback(context_warehouse), context_warehouse)
    categorical, numeric = select_features(frame)
    assert "plan_tier" in categorical and "turn" in numeric
    # app_version values ("1.9", "2.4", "3.1") all parse as numbers: inferred numeric (declare it to choose).
    assert "app_version" in numeric


@pytest.mark.slow
def test_audit_balance_table_and_noise_proxy_see_the_custom_columns(context_warehouse):
    from propensity.noise._proxy import build_proxy_features

    _fit(context_warehouse)
    report = build_report(AuditConfig(warehouse=str(context_warehouse), out=str(context_warehouse / "audit.html")))
    balanced = {row["feature"] for row in report["balance"]}
    assert {"plan_tier=pro", "turn", "app_version"} <= balanced
    frame = with_custom_features(read_feedback(context_warehouse), context_warehouse)
    _, names = build_proxy_features(frame, text=False, custom={"plan_tier": "categorical", "turn": "numeric"})
    assert "plan_tier=free" in names and "turn" in names
    _, plain = build_proxy_features(frame, text=False)
    assert not any(n.startswith(("plan_tier", "turn")) for n in plain)
    assert np.isfinite(report["estimates"]["ips"]["estimate"]) if "estimates" in report else True


@pytest.mark.slow
def test_label_aware_outcome_model_uses_the_custom_columns(tmp_path, monkeypatch):
    import propensity.models.features as features_module
    from propensity.slice.label_aware import LabelAwareConfig, fit_label_aware

    simulate(SimulationConfig(out=str(tmp_path / "logs"), n_exposures=3_000, n_users=750, seed=1, extra_context=True,
                              randomized_slice=0.1))
    ingest(IngestConfig(inputs=(str(tmp_path / "logs" / "events"),), warehouse=str(tmp_path / "wh"), keep_extra_columns=True))
    _fit(tmp_path / "wh", exclude_features=("turn",))
    built = []
    original = features_module.build_features

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        built.append(result[1])
        return result

    monkeypatch.setattr(features_module, "build_features", spy)
    report = fit_label_aware(tmp_path / "wh", LabelAwareConfig(bootstrap=20, n_jobs=1)).report
    # The context fit's choice: its custom columns, less the one it excluded.
    assert built and {"plan_tier", "app_version"} <= set(built[0]) and "turn" not in built[0]
    assert report["estimates"]["label_aware_snips"]["estimate"] is not None


def test_a_case_control_fit_uses_the_context_columns_too(context_warehouse, tmp_path):
    """A table over --max-rows (case-control sample, streamed scoring): the custom columns are
    used by default and raise the AUC as in an in-memory fit (same 3-standard-error bar)."""
    import shutil

    wh = tmp_path / "wh"
    shutil.copytree(context_warehouse, wh)
    without = _fit(wh, exclude_features=CUSTOM, max_rows=2_000).metrics
    with_custom = _fit(wh, max_rows=2_000, batch_rows=900).metrics
    assert with_custom["sampling"]["sampled"] and set(CUSTOM) <= set(with_custom["features"])
    n_pos = with_custom["n_observed"]
    se = math.sqrt(0.25 * (1 / n_pos + 1 / (N - n_pos)))
    assert with_custom["auc"] - without["auc"] > 3 * se, (without["auc"], with_custom["auc"], se)
