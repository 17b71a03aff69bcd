"""Who may enter (the [access] rule) and the audit calls the PACS worklist makes; the browser flows are in
tests/test_login.py."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.access import DEFAULT_IDLE_MINUTES, AccessPolicy, idle_for

ALICE = {"sub": "alice-sub", "email": "Alice@Hospital.example", "email_verified": True, "groups": ["cardiology"]}


def test_allow_list_by_email_or_sub():
    rule = AccessPolicy.from_mapping({"allowed_users": ["alice@hospital.example", "carol-sub"]})
    assert rule.has_rule and rule.idle_timeout_s == DEFAULT_IDLE_MINUTES * 60
    assert rule.allows(ALICE)  # e-mail, case-insensitive
    assert rule.allows({"sub": "carol-sub"})
    assert not rule.allows({"sub": "mallory", "email": "mallory@elsewhere.example"})
    assert not rule.allows({**ALICE, "email_verified": False})  # an unverified address proves nothing
    assert not rule.allows({"sub": "CAROL-SUB"})  # subject IDs are case-sensitive


def test_required_claim():
    rule = AccessPolicy.from_mapping({"required_claim": "groups", "required_values": ["radiology"],
                                      "idle_timeout_minutes": 0.5})
    assert rule.idle_timeout_s == 30
    assert rule.allows({"sub": "b", "groups": ["radiology", "staff"]})
    assert rule.allows({"sub": "b", "groups": "radiology"})
    assert not rule.allows(ALICE)
    assert not rule.allows({"sub": "b"})
    assert not rule.allows({"sub": "b", "groups": {"radiology": True}})  # not a string or a list of strings


def test_no_rule_lets_nobody_in():
    rule = AccessPolicy.from_mapping({})
    assert not rule.has_rule and not rule.allows(ALICE)
    assert not AccessPolicy.from_mapping({"required_claim": "groups"}).has_rule


@pytest.mark.parametrize("section", [
    {"allowed_users": "alice@hospital.example", "idle_timeout_minutes": 0},
    {"allowed_users": [1, 2]},
    {"allowed_users": ["a"], "idle_timeout_minutes": "15"},
    {"allowed_users": ["a"], "idle_timeout_minutes": True},
])
def test_malformed_access_section(section):
    with pytest.raises(ValueError, match=r"\[access\]"):
        AccessPolicy.from_mapping(section)


def test_idle_counts_from_the_login_when_this_process_has_not_seen_it():
    assert idle_for(None, issued_at=1000.0, now=1900.0) == 900.0  # a login from before a restart
    assert idle_for(1800.0, issued_at=1000.0, now=1900.0) == 100.0


def _pacs_actions() -> None:
    from dashboard import access

    access.record_study_opened("1.2.826.0.1.3680043.2.1143.990077")
    access.record_study_opened("1.2.826.0.1.3680043.2.1143.990077")  # a rerun: not a new action


def test_study_opened_is_recorded_once_as_a_salted_hash(tmp_path, monkeypatch):
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("HICXR_AUDIT_LOG", str(log))
    at = AppTest.from_function(_pacs_actions)
    at.run()
    assert not at.exception and not at.error
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["action"] for e in entries] == ["study opened"]
    assert entries[0]["user"] == "local" and len(entries[0]["subject"]["study_uid_hmac"]) == 64
    assert "990077" not in log.read_text()
    assert (tmp_path / "audit.jsonl.salt").exists()
