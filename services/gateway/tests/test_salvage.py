"""What the read model can still store of an event PostgreSQL refuses (pure)."""

from __future__ import annotations

from aether_events import MissionRequested, encode
from aether_gateway.domain import placeholder_mission, salvage, sanitised, scrub

from .conftest import T0, Script


def test_scrub_replaces_nul_and_lone_surrogates_everywhere_and_says_so():
    data = {"a\x00": ["x\ud800", {"k": "\udfffy"}], "n": 3, "ok": "fine \U0001f600"}
    cleaned, changed = scrub(data)
    assert changed
    assert cleaned == {"a\ufffd": ["x\ufffd", {"k": "\ufffdy"}], "n": 3, "ok": "fine \U0001f600"}
    assert scrub({"ok": ["plain", 1, None]}) == ({"ok": ["plain", 1, None]}, False)


def test_an_event_with_a_nul_is_sanitised_and_one_without_is_not(script: Script):
    bad = script.requested(repository="/repos/a\x00b", model_overrides={"x\x00": "m"})
    clean = sanitised(bad)
    assert isinstance(clean, MissionRequested)
    assert clean.repository == "/repos/a\ufffdb"
    assert clean.model_overrides == {"x\ufffd": "m"}
    assert clean.event_id == bad.event_id
    assert sanitised(script.requested()) is None


def test_a_payload_with_a_lone_surrogate_escape_is_salvaged(script: Script):
    event = script.requested(repository="/repos/HERE")
    payload = encode(event).replace(b"HERE", b"a\\ud83db")
    salvaged = salvage(payload)
    assert isinstance(salvaged, MissionRequested)
    assert salvaged.repository == "/repos/a\ufffdb"
    assert salvage(encode(event).replace(b"HERE", b"\xff\xfe")).repository == "/repos/\ufffd\ufffd"


def test_a_payload_that_is_no_event_even_leniently_is_not_salvaged(script: Script):
    assert salvage(b"not json") is None
    wrong_type = encode(script.requested()).replace(b'"requirement":', b'"requirement":1,"x":')
    assert salvage(wrong_type) is None


def test_a_placeholder_mission_is_listed_as_requested():
    mission = placeholder_mission("m-1", T0)
    assert (mission.id, mission.status, mission.created_at) == ("m-1", "requested", T0)
    assert mission.repository == ""
