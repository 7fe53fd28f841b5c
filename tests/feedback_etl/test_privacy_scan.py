"""Privacy scans that can fail (issue 22): every table's decoded values and every text file of the
warehouse are searched for the raw ids and texts of the input, on logs whose rejects carry ids and
text (impressions rejected at typing, a conflicting impression, orphan feedback).

The scan is first shown to see: on a warehouse ingested without privacy options it finds the
ids and texts in every table. Then a pseudonymised, text-hashed warehouse must hold none of them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from privacy_scan import scan

from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_rejects
from feedback_etl.privacy import PrivacyConfig, ingest_hook

SECRET = "s3cret-key-for-tests-0123456789abcdef"
EMAIL = "leaky.person@example.net"
PLANTED_USER, PLANTED_SESSION = "user-planted-4711", "session-planted-4711"
PLANTED_PROMPT = f"please mail the contract to {EMAIL} before friday (planted prompt 4711)"
PLANTED_RESPONSE = "sure, I will forward the contract today (planted response 4711)"


def _impression(**extra) -> dict:
    return {
        "event_id": "imp-planted", "event_time": "2026-01-06T10:00:00Z", "event_type": "impression",
        "exposure_id": "x-planted", "user_id": PLANTED_USER, "session_id": PLANTED_SESSION, "prompt_id": "p-planted",
        "response_id": "r-planted", "model_id": "m-base", "prompt_text": PLANTED_PROMPT, "response_text": PLANTED_RESPONSE,
        "position": 0, "platform": "web", "locale": "en-US", "latency_ms": 12.0, **extra,
    }


# Every reject here carries the planted ids and texts: rejected at typing (raw payload kept by
# typing) and rejected after typing (payload rebuilt from the typed columns).
HOSTILE_ROWS: list[dict] = [
    _impression(event_id="bad-time", exposure_id="x-bad-time", event_time="yesterday-ish"),
    _impression(event_id="no-exposure", exposure_id=None),
    _impression(event_id="odd-type", exposure_id="x-odd", event_type="impression_v2"),
    _impression(event_id="conflict-a", exposure_id="x-conflict"),
    _impression(event_id="conflict-b", exposure_id="x-conflict", prompt_text=PLANTED_PROMPT + " (edited)", response_text="other"),
    {"event_id": "ghost-vote", "event_time": "2026-01-06T10:05:00Z", "event_type": "thumbs_up", "exposure_id": "x-ghost",
     "user_id": PLANTED_USER, "session_id": PLANTED_SESSION},
]
PLANTED = [EMAIL, PLANTED_USER, PLANTED_SESSION, PLANTED_PROMPT, PLANTED_RESPONSE]


@pytest.fixture(scope="module")
def hostile_inputs(messy_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The messy logs plus a JSONL file of rejected rows carrying ids and text, and the raw values
    a private warehouse must not hold."""
    root = tmp_path_factory.mktemp("hostile")
    path = root / "hostile.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in HOSTILE_ROWS), encoding="utf-8")
    events = pl.read_parquet(messy_logs / "events" / "*.parquet")
    ids = set(events["user_id"].drop_nulls().to_list()) | set(events["session_id"].drop_nulls().to_list())
    texts = set(events["prompt_text"].drop_nulls().to_list()) | set(events["response_text"].drop_nulls().to_list())
    return {"inputs": (str(messy_logs / "events"), str(path)), "ids": sorted(ids), "texts": sorted(texts)}


def _ingest(inputs: tuple[str, ...], wh: Path, privacy: PrivacyConfig | None) -> dict:
    hook = ingest_hook(privacy) if privacy is not None else None
    return ingest(IngestConfig(inputs=inputs, warehouse=str(wh), threads=1), typed_hook=hook)


@pytest.fixture(scope="module")
def plain_warehouse(hostile_inputs: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    wh = tmp_path_factory.mktemp("plain") / "wh"
    _ingest(hostile_inputs["inputs"], wh, None)
    return wh


@pytest.fixture(scope="module")
def private_warehouse(hostile_inputs: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    wh = tmp_path_factory.mktemp("private") / "wh"
    _ingest(hostile_inputs["inputs"], wh, PrivacyConfig(key=SECRET.encode(), key_env="CRM_KEY", text="hash"))
    return wh


def test_the_fixture_rejects_impressions_that_carry_ids_and_text(plain_warehouse: Path) -> None:
    """The premise of the reject checks: impressions (not only id-less feedback rows) are rejected
    for every reason the hostile file plants, and their payloads hold the planted values."""
    rejects = read_rejects(plain_warehouse).filter(pl.col("source_file").str.ends_with("hostile.jsonl"))
    reasons = set(rejects["reason"].to_list())
    assert {"bad_timestamp", "missing_field", "unknown_event_type", "conflicting_impression", "orphan_feedback"} <= reasons, reasons
    impressions = rejects.filter(pl.col("reason") != "orphan_feedback")
    assert impressions.height >= 4
    assert all(PLANTED_USER in p and EMAIL in p for p in impressions["payload"].to_list())


def assert_private(roots: list[Path], hostile_inputs: dict) -> None:
    """No raw id, text, planted value or key in any decoded table value or text file under roots."""
    ids, texts = hostile_inputs["ids"], hostile_inputs["texts"]
    result = scan(roots, ids + texts + PLANTED + [SECRET])
    assert result.parquet_files >= 1 and result.string_values > 0, "nothing was scanned"
    assert result.found == {}, f"{len(result.found)} raw values leaked, e.g. " + str({k: v[:2] for k, v in list(result.found.items())[:3]})


def test_scan_finds_ids_and_texts_in_every_table_of_a_plain_warehouse(plain_warehouse: Path, hostile_inputs: dict) -> None:
    """The scan must be able to fail: without privacy options it finds every raw id and text (in
    decoded values; a byte search of the snappy Parquet found 30 of 125 user ids and no text), and
    the privacy assertion fails on that warehouse."""
    ids, texts = hostile_inputs["ids"], hostile_inputs["texts"]
    result = scan([plain_warehouse], ids + texts + PLANTED)
    assert result.parquet_files >= 3 and result.string_values > 0
    assert result.leaked(ids) == ids
    assert result.leaked(texts) == texts
    assert result.leaked(PLANTED) == PLANTED
    tables = {Path(where.split(":")[0]).relative_to(plain_warehouse).parts[0] for where in result.found[PLANTED_USER]}
    assert {"events", "rejects"} <= tables
    assert any("/feedback/" in where for where in result.found[ids[0]] + result.found[texts[0]])
    with pytest.raises(AssertionError, match="raw values leaked"):
        assert_private([plain_warehouse], hostile_inputs)


def test_private_warehouse_holds_no_raw_id_text_or_key(private_warehouse: Path, hostile_inputs: dict) -> None:
    """Catches issue 22 bug 4: rejected rows keeping their raw payload under
    --pseudonymize-key-env / --text hash (the e-mail address, the session id and the prompt text
    survived in the rejects table). Every decoded value of every table and every text file of the
    warehouse is searched for every raw id and text of the input, and for the key."""
    assert_private([private_warehouse], hostile_inputs)
    assert scan([private_warehouse], []).text_files >= 1  # the manifest was read too
    run = json.loads((private_warehouse / "manifest.json").read_text())["runs"][-1]
    assert run["privacy"]["reject_payloads"] == "withheld (digest only)" and run["privacy"]["pseudonymized"] is True
    rejects = read_rejects(private_warehouse)
    typing = rejects.filter(pl.col("reason").is_in(["bad_timestamp", "missing_field", "unknown_event_type"]))
    assert typing.height >= 3 and typing["payload"].str.starts_with("withheld ").all()


def test_the_scan_reads_time_travel_versions_too(private_warehouse: Path, plain_warehouse: Path, tmp_path: Path) -> None:
    """An old table version (files a Delta log still names) is part of the warehouse until vacuumed:
    a raw file left under a table folder is found, not skipped."""
    wh = tmp_path / "wh"
    shutil.copytree(private_warehouse, wh)
    raw_file = next((plain_warehouse / "rejects").rglob("*.parquet"))
    shutil.copy(raw_file, wh / "rejects" / "part-old-version.parquet")
    assert scan([wh], [PLANTED_USER]).leaked([PLANTED_USER]) == [PLANTED_USER]


@pytest.mark.slow
def test_dataset_report_and_model_built_from_a_private_warehouse_hold_no_raw_value(
    private_warehouse: Path, hostile_inputs: dict, tmp_path: Path
) -> None:
    """Downstream folders inherit the warehouse's privacy: propensity fit, weights export (the
    dataset), audit (the HTML and JSON report) and a reward model with user_id as an id feature
    (its vocabulary) hold no raw id, text or key, in decoded table values or in any text file."""
    import numpy as np
    from typer.testing import CliRunner

    from cli import app
    from feedback_etl.io import read_feedback
    from propensity.models.fit import PropensityConfig, fit_propensity

    wh = tmp_path / "wh"
    shutil.copytree(private_warehouse, wh)
    fit_propensity(wh, PropensityConfig(folds=3, n_jobs=1, model_params={"n_estimators": 40}))
    # Cheap vectors in the embed layout, so that the model step needs no backbone.
    exposures = read_feedback(wh)["exposure_id"]
    vectors = np.random.default_rng(0).normal(size=(len(exposures), 8)).astype(np.float32)
    (wh / "embeddings").mkdir()
    pl.DataFrame({"exposure_id": exposures, "embedding": vectors.tolist()}).write_parquet(wh / "embeddings" / "part-0.parquet")
    runner = CliRunner()
    steps = [
        ["weights", "export", str(wh), "--out", str(tmp_path / "dataset"), "--no-noise"],
        ["audit", str(wh), "--out", str(tmp_path / "report" / "report.html")],
        ["train", str(tmp_path / "dataset"), "--out", str(tmp_path / "model"), "--loss", "ips", "--epochs", "1",
         "--hidden", "8", "--device", "cpu", "--id-features", "user_id"],
    ]
    for step in steps:
        result = runner.invoke(app, step)
        assert result.exit_code == 0, (step[:2], result.output[-2000:])
    roots = [wh, tmp_path / "dataset", tmp_path / "report", tmp_path / "model"]
    for root in roots[1:]:
        assert scan([root], []).parquet_files + scan([root], []).text_files > 0, f"{root} is empty"
    assert_private(roots, hostile_inputs)
