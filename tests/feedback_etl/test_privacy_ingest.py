"""Privacy at ingest (issue 9): a pseudonymised warehouse holds no raw id, no key and, in hash or
drop mode, no text; redaction counts land in the manifest; hostile inputs end as documented."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from privacy_scan import scan
from typer.testing import CliRunner

from cli import app
from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_feedback
from feedback_etl.privacy import PrivacyConfig, ingest_hook

SECRET = "s3cret-key-for-tests-0123456789abcdef"


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def _leaked(root: Path, values) -> list[str]:
    """Values found in the decoded values of any table or in any text file under root (issue 22:
    a byte search of snappy Parquet misses most of them, so it could not fail)."""
    return scan([root], sorted(values)).leaked(sorted(values))


def _ingest(logs: Path, wh: Path, privacy: PrivacyConfig) -> dict:
    return ingest(IngestConfig(inputs=(str(logs / "events"),), warehouse=str(wh)), typed_hook=ingest_hook(privacy))


@pytest.fixture(scope="module")
def raw(messy_logs):
    events = pl.read_parquet(messy_logs / "events" / "*.parquet")
    return {
        "users": set(events["user_id"].drop_nulls().unique().to_list()),
        "sessions": set(events["session_id"].drop_nulls().unique().to_list()),
        "responses": set(events["response_text"].drop_nulls().unique().to_list()),
    }


def test_pseudonymised_warehouse_holds_no_raw_id_nor_key(messy_logs, tmp_path, raw):
    wh = tmp_path / "wh"
    run = _ingest(messy_logs, wh, PrivacyConfig(key=SECRET.encode(), key_env="CRM_KEY", text="hash"))
    assert SECRET.encode() not in _all_bytes(wh)
    # ids look like u000123 / u000123-s45: none may survive in any table or file (feedback, events, rejects, manifest)
    assert _leaked(wh, raw["users"] | raw["sessions"] | raw["responses"] | {SECRET}) == []
    assert run["privacy"]["pseudonymized"] and run["privacy"]["key_env"] == "CRM_KEY"
    manifest = (wh / "manifest.json").read_text()
    assert SECRET not in manifest and '"pseudonymized": true' in manifest


def test_pseudonyms_keep_joins_splits_and_history(messy_logs, tmp_path):
    plain_wh, pseudo_wh = tmp_path / "plain", tmp_path / "pseudo"
    _ingest(messy_logs, plain_wh, PrivacyConfig())
    _ingest(messy_logs, pseudo_wh, PrivacyConfig(key=SECRET.encode(), key_env="K"))
    plain, pseudo = read_feedback(plain_wh), read_feedback(pseudo_wh)
    assert plain["exposure_id"].to_list() == pseudo["exposure_id"].to_list()
    # history features and observed/label are unchanged; users map one to one
    for column in ("observed", "label", "user_prior_exposures", "user_prior_votes"):
        assert plain[column].to_list() == pseudo[column].to_list()
    pairs = pl.DataFrame({"a": plain["user_id"], "b": pseudo["user_id"]}).unique()
    assert pairs["a"].n_unique() == pairs["b"].n_unique() == pairs.height
    # splits follow the pseudonym (a stable hash of whatever user_id is stored): no user straddles splits
    assert pseudo.group_by("user_id").agg(pl.col("split").n_unique())["split"].max() == 1


@pytest.mark.parametrize("mode", ["hash", "drop"])
def test_text_modes_in_the_warehouse(messy_logs, tmp_path, raw, mode):
    wh = tmp_path / "wh"
    _ingest(messy_logs, wh, PrivacyConfig(text=mode))
    feedback = read_feedback(wh)
    assert _leaked(wh, raw["responses"]) == []
    if mode == "drop":
        assert feedback["response_text"].null_count() == feedback.height
    else:
        assert feedback["response_text"].str.starts_with("sha256:").all()
        # equal texts hash equal: as many distinct digests as distinct texts shown
        assert feedback["response_text"].n_unique() == len(raw["responses"])


def test_redaction_counts_on_planted_examples(tmp_path):
    rows = []
    planted = ["write to jane.doe@example.org", "my card 4111 1111 1111 1111", "key sk-ABCDEFGHIJKLMNOPQRSTUV", "ring +44 20 7946 0958", "nothing here"]
    for k, text in enumerate(planted):
        rows.append({"event_id": f"i{k}", "event_time": "2026-01-05T10:00:00Z", "event_type": "impression", "exposure_id": f"x{k}",
                     "user_id": "u1", "session_id": "s1", "prompt_id": f"p{k}", "response_id": f"r{k}", "model_id": "m",
                     "prompt_text": text, "response_text": "ok"})
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = ingest(IngestConfig(inputs=(str(tmp_path / "in.jsonl"),), warehouse=str(tmp_path / "wh")),
                 typed_hook=ingest_hook(PrivacyConfig(redact=True)))
    assert run["privacy"]["redacted"] == {"email": 1, "access_token": 1, "card_number": 1, "phone": 1}
    prompts = read_feedback(tmp_path / "wh")["prompt_text"].to_list()
    assert prompts == ["write to [EMAIL]", "my card [CARD_NUMBER]", "key [ACCESS_TOKEN]", "ring [PHONE]", "nothing here"]


def test_cli_notice_without_key_and_error_with_missing_key(messy_logs, tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(messy_logs / "events"), "--warehouse", str(tmp_path / "a")])
    assert result.exit_code == 0 and "stored as given" in result.output
    monkeypatch.delenv("CRM_NOPE", raising=False)
    bad = runner.invoke(app, ["ingest", str(messy_logs / "events"), "--warehouse", str(tmp_path / "b"), "--pseudonymize-key-env", "CRM_NOPE"])
    assert bad.exit_code == 1 and "CRM_NOPE is unset" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "b" / "feedback").exists()
    monkeypatch.setenv("CRM_KEY", SECRET)
    good = runner.invoke(app, ["ingest", str(messy_logs / "events"), "--warehouse", str(tmp_path / "c"), "--pseudonymize-key-env", "CRM_KEY", "--text", "drop"])
    assert good.exit_code == 0, good.output
    assert "stored as given" not in good.output
    assert SECRET.encode() not in _all_bytes(tmp_path / "c")


def test_embed_at_ingest_keeps_vectors_not_text(messy_logs, tmp_path, tiny_backbone, raw):
    from feedback_etl.io import read_embeddings

    wh = tmp_path / "wh"
    result = CliRunner().invoke(app, ["ingest", str(messy_logs / "events"), "--warehouse", str(wh), "--text", "drop",
                                      "--embed", "--embed-model", str(tiny_backbone)])
    assert result.exit_code == 0, result.output
    vectors, feedback = read_embeddings(wh), read_feedback(wh)
    assert sorted(vectors["exposure_id"].to_list()) == sorted(feedback["exposure_id"].to_list())
    assert feedback["response_text"].null_count() == feedback.height
    assert _leaked(wh, raw["responses"]) == []
    # `causalrm embed` on such a warehouse refuses instead of embedding empty strings
    again = CliRunner().invoke(app, ["embed", str(wh), "--model", str(tiny_backbone)])
    assert again.exit_code == 1 and "keeps no response text" in again.output
