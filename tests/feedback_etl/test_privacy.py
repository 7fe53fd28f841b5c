"""Pseudonymisation, text retention and the redactor (issue 9)."""

from __future__ import annotations

import hashlib
import hmac

import polars as pl
import pytest

from feedback_etl.privacy import PrivacyConfig, apply_privacy, apply_text_mode, pseudonymize, redact
from schemas.errors import ConfigError

KEY = b"k" * 32


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": ["alice", "bob", "alice", None],
            "session_id": ["s1", "s2", "s1", "s3"],
            "prompt_text": ["hi", "hi", "mail me at a.b@example.com", None],
            "response_text": ["ok", "card 4111 1111 1111 1111 or 4111 1111 1111 1112", "call +1 415-555-0132", "token sk-abcdefghijklmnopqrstuv"],
        }
    )


def test_pseudonymize_is_keyed_stable_and_hides_ids():
    out = pseudonymize(_frame(), KEY)
    expected = hmac.new(KEY, b"alice", hashlib.sha256).hexdigest()
    assert out["user_id"].to_list()[:3] == [expected, hmac.new(KEY, b"bob", hashlib.sha256).hexdigest(), expected]
    assert out["user_id"][3] is None
    assert "alice" not in out.write_csv() and "s1" not in out["session_id"].to_list()
    other = pseudonymize(_frame(), b"z" * 32)
    assert other["user_id"][0] != out["user_id"][0]


@pytest.mark.parametrize("mode", ["keep", "hash", "drop"])
def test_text_modes(mode):
    out = apply_text_mode(_frame(), mode, KEY)
    if mode == "keep":
        assert out.equals(_frame())
    elif mode == "drop":
        assert out["prompt_text"].null_count() == 4 and out["response_text"].null_count() == 4
    else:
        hashed = out["prompt_text"].to_list()
        assert hashed[0] == hashed[1] != hashed[2]  # equal texts hash equal: dedup and joins still work
        assert all(h.startswith("hmac-sha256:") for h in hashed[:3]) and hashed[3] is None
        assert "example.com" not in out.write_csv()


def test_redactor_counts_planted_examples():
    out, counts = redact(_frame())
    assert counts == {"email": 1, "access_token": 1, "card_number": 1, "phone": 1}
    text = out.write_csv()
    assert "a.b@example.com" not in text and "4111 1111 1111 1111" not in text and "sk-abc" not in text
    assert "555-0132" not in text
    assert "4111 1111 1111 1112" in text  # fails the Luhn check: not a card number, left alone


def test_apply_privacy_manifest_never_holds_the_key(monkeypatch):
    monkeypatch.setenv("CRM_TEST_KEY", KEY.decode())
    cfg = PrivacyConfig.from_env("CRM_TEST_KEY", text="keep", redact=True)
    out, record = apply_privacy(_frame(), cfg)
    assert record["pseudonymized"] and record["key_env"] == "CRM_TEST_KEY"
    assert KEY.decode() not in str(record)
    assert record["redacted"]["email"] == 1
    assert "alice" not in out.write_csv()


@pytest.mark.parametrize(
    ("env", "name", "message"),
    [
        ({}, "CRM_MISSING", "unset or empty"),
        ({"CRM_SHORT": "abc"}, "CRM_SHORT", "shorter than"),
        ({}, "my secret value", "not an environment variable name"),
    ],
)
def test_key_errors(monkeypatch, env, name, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CRM_MISSING", raising=False)
    with pytest.raises(ConfigError, match=message):
        PrivacyConfig.from_env(name)


# ---------------------------------------------------------------- found by mutation testing (issue 22)


def test_luhn_check_doubles_digits_above_4():
    """5105 1051 0510 5100 is a valid card number whose doubled digits exceed 9 (10 -> 1 + 0): it must
    be redacted, and one digit off must not be."""
    out, counts = redact(pl.DataFrame({"prompt_text": ["card 5105 1051 0510 5100", "card 5105 1051 0510 5101"]}))
    assert out["prompt_text"].to_list()[0] == "card [CARD_NUMBER]"
    assert counts["card_number"] == 1


def test_an_all_null_id_column_stays_a_string_column():
    """Pseudonymising a column with no value keeps its String type (the table schemas need it)."""
    frame = pl.DataFrame({"user_id": ["alice", "bob"], "session_id": pl.Series([None, None], dtype=pl.Utf8)})
    out = pseudonymize(frame, KEY)
    assert out.schema["session_id"] == pl.String and out["session_id"].null_count() == 2
