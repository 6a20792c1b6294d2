"""Reading the servers' list of connections (``attempt_connections``): only attempt users
are taken, each with where it is; an answer that is an error or not in shape is passed
over, not raised (a start's sweep goes on with the other servers)."""

from __future__ import annotations

import json

from aether_runtime.attempt_auth import AttemptKey
from aether_runtime.attempt_connections import HeldConnection, _attempts, _listed

SERVER = {"name": "n1", "id": "NSERVER"}


def answer(**fields: object) -> bytes:
    return json.dumps({"server": SERVER, **fields}).encode()


def test_only_attempt_users_are_taken_from_a_list() -> None:
    key = AttemptKey("m1", "t.1", 2)
    entries = [
        {"cid": 5, "authorized_user": "scheduler"},
        {"cid": 6, "authorized_user": "runner/host-1"},
        {"cid": 7, "authorized_user": key.user("host-1")},
        {"cid": 8, "authorized_user": "attempt/m1/t1/x/host-1"},  # not an attempt number
        {"cid": "9", "authorized_user": key.user("host-2")},  # not a client id
        {"cid": 10},
        "not an entry",
    ]
    listed = _listed(answer(data={"connections": entries}))
    assert listed is not None
    name, server_id, got = listed
    assert (name, server_id) == ("n1", "NSERVER")
    assert _attempts(server_id, got) == [HeldConnection(key, "host-1", "NSERVER", 7)]


def test_an_answer_that_is_an_error_or_out_of_shape_is_passed_over() -> None:
    assert _listed(answer(error={"code": 403, "description": "no"})) is None
    assert _listed(answer(data={"connections": {"cid": 1}})) is None
    assert _listed(answer(data=[])) is None
    assert _listed(b"{not json") is None
    assert _listed(json.dumps({"data": {}}).encode()) is None
    assert _listed(answer(data={})) == ("n1", "NSERVER", [])
