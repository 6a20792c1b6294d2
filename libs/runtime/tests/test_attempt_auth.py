"""The attempt authorizer's pure parts: user names, grants, and the JWTs it signs (the
escape tests run it against a real server)."""

from __future__ import annotations

import base64
import json

import pytest

from aether_events import ATTEMPT_MAX_PAYLOAD, AgentCompleted, AgentHeartbeat
from aether_runtime.attempt_auth import (
    AttemptAuthorizer,
    AttemptKey,
    Grants,
    decode_jwt,
    encode_jwt,
    issuer_public_key,
    new_issuer_seed,
    parse_key_subject,
    parse_user,
    runner_token,
)
from aether_runtime.runner_secrets import (
    attempt_event_key,
    proves,
    runner_secret,
    step_record_key,
)
from aether_runtime.runners import entry_subject, parse_runner_user, runner_inbox, runner_user

KEY = AttemptKey("m1", "t1", 2)
MASTER = "the-deployments-master-secret"
R1 = runner_secret(MASTER, "r1")


def test_a_user_name_names_one_attempt_and_its_runner() -> None:
    assert parse_user(KEY.user("r1")) == (KEY, "r1")
    dotted = AttemptKey("m1", "1.2", 1)  # the planner's task ids may hold dots
    assert parse_user(dotted.user("r1")) == (dotted, "r1")
    assert dotted.inbox_prefix.count(".") == 2
    assert dotted.inbox_prefix != AttemptKey("m1", "1_2", 1).inbox_prefix
    for forged in (
        "agent-runner",
        "attempt/m1/t1/2",
        "attempt/m1/t1/two/r1",
        "attempt/m1/t1/2/r1/extra",
        "attempt/m.>/t1/2/r1",
        "attempt/m1/t*/2/r1",
        "other/m1/t1/2/r1",
    ):
        assert parse_user(forged) is None, forged
    assert runner_token("host.example.org-12-ab") == "host-example-org-12-ab"


def test_the_first_runner_holds_an_open_attempt() -> None:
    open_now = {KEY}
    grants = Grants(lambda key: key in open_now)
    assert grants.claim(KEY, "r1") is None
    assert grants.claim(KEY, "r1") is None  # its reconnection
    assert grants.claim(KEY, "r2") == "the attempt is held by another runner"
    assert grants.claim(AttemptKey("m1", "t2", 1), "r1") == "the attempt is not open"
    open_now.clear()
    assert grants.claim(KEY, "r1") == "the attempt is not open"


def test_another_runner_takes_an_attempt_over_once_its_holders_credential_expired() -> None:
    """A runner that died never renews: its attempt's message goes to another runner,
    which is granted the attempt once the dead runner's credential can no longer be used."""
    grants = Grants(lambda key: True)
    assert grants.claim(KEY, "r1", now=100.0, ttl=60.0) is None
    assert grants.claim(KEY, "r2", now=159.0, ttl=60.0) == "the attempt is held by another runner"
    assert grants.claim(KEY, "r1", now=159.5, ttl=60.0) is None  # renewed: held again
    assert grants.claim(KEY, "r2", now=200.0, ttl=60.0) == "the attempt is held by another runner"
    assert grants.claim(KEY, "r2", now=220.0, ttl=60.0) is None
    assert grants.claim(KEY, "r1", now=221.0, ttl=60.0) == "the attempt is held by another runner"


def _server_request(server_seed: str, user: str, password: str) -> str:
    import nkeys

    server = nkeys.from_seed(server_seed.encode())
    server_id = bytes(server.public_key).decode()
    claims = {
        "aud": "nats-authorization-request",
        "iss": server_id,
        "sub": "UUSER",
        "nats": {
            "type": "authorization_request",
            "version": 2,
            "server_id": {"id": server_id},
            "user_nkey": "UUSERNKEY",
            "connect_opts": {"user": user, "pass": password},
        },
    }
    return encode_jwt(claims, server)


def _server_seed() -> str:
    import os

    import nkeys

    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER)).decode()


def test_the_answer_is_a_signed_user_limited_to_the_attempts_subjects() -> None:
    seed = new_issuer_seed()
    authorizer = AttemptAuthorizer(
        issuer_seed=seed,
        master=MASTER,
        grants=Grants(lambda key: key == KEY),
        types=frozenset({AgentCompleted, AgentHeartbeat}),
        ttl_seconds=60,
        clock=lambda: 1000.0,
    )
    answer = decode_jwt(authorizer.answer(_server_request(_server_seed(), KEY.user("r1"), R1)))
    assert answer["iss"] == issuer_public_key(seed)
    assert answer["nats"]["error"] == ""
    user = decode_jwt(answer["nats"]["jwt"])
    assert user["sub"] == "UUSERNKEY"
    assert user["exp"] == 1060
    # Its mission, its task, its attempt: no wildcard; and the request for its own key.
    assert user["nats"]["pub"]["allow"] == [
        "aether.mission.m1.agent_completed.t1.2",
        "aether.telemetry.m1.agent_heartbeat.t1.2",
        "aether.attempt_key.m1.t1.2",
    ]
    assert user["nats"]["sub"]["allow"] == [f"{KEY.inbox_prefix}.>"]
    # A largest message of its own, sized to what its runner sends (not the server's).
    assert user["nats"]["payload"] == ATTEMPT_MAX_PAYLOAD


@pytest.mark.parametrize(
    ("user", "password", "error"),
    [
        (KEY.user("r1"), "wrong", "wrong password: not the secret of runner 'r1'"),
        # The master itself is no runner's secret.
        (KEY.user("r1"), MASTER, "wrong password: not the secret of runner 'r1'"),
        # Another runner's name with r1's secret.
        (KEY.user("r2"), R1, "wrong password: not the secret of runner 'r2'"),
        (runner_user("r2", "r2-1"), R1, "wrong password: not the secret of runner 'r2'"),
        (AttemptKey("m1", "t1", 3).user("r1"), R1, "the attempt is not open"),
        ("gateway", R1, "not an attempt user"),
    ],
)
def test_a_refusal_is_a_signed_error(user: str, password: str, error: str) -> None:
    authorizer = AttemptAuthorizer(
        issuer_seed=new_issuer_seed(),
        master=MASTER,
        grants=Grants(lambda key: key == KEY),
        types=frozenset({AgentCompleted}),
    )
    answer = decode_jwt(authorizer.answer(_server_request(_server_seed(), user, password)))
    assert answer["nats"] == {
        "jwt": "",
        "error": error,
        "type": "authorization_response",
        "version": 2,
    }


def test_a_request_not_signed_by_its_issuer_is_not_answered() -> None:
    request = _server_request(_server_seed(), KEY.user("r1"), R1)
    head, body, signature = request.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["nats"]["connect_opts"]["user"] = AttemptKey("m2", "t1", 2).user("r1")
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    authorizer = AttemptAuthorizer(
        issuer_seed=new_issuer_seed(),
        master=MASTER,
        grants=Grants(lambda key: True),
        types=frozenset({AgentCompleted}),
    )
    with pytest.raises(ValueError, match="signed"):
        authorizer.answer(f"{head}.{forged_body}.{signature}")


def test_a_runners_secret_proves_its_own_name_only() -> None:
    assert proves(MASTER, "r1", R1)
    assert not proves(MASTER, "r2", R1)
    assert not proves("another-deployments-master", "r1", R1)
    # Names are compared as subject tokens: a name that is not one is nobody's.
    assert runner_secret(MASTER, "host.example") == runner_secret(MASTER, "host-example")
    assert not proves(MASTER, "host.example", runner_secret(MASTER, "host.example"))
    assert len({runner_secret(MASTER, name) for name in ("a", "b", "ab", "a-b")}) == 4


def test_a_runners_registry_credential_writes_the_entry_of_its_name_and_id_only() -> None:
    authorizer = AttemptAuthorizer(
        issuer_seed=new_issuer_seed(),
        master=MASTER,
        grants=Grants(lambda key: False),
        types=frozenset({AgentCompleted}),
    )
    user = runner_user("r1", "r1-12-abcdef")
    assert parse_runner_user(user) == ("r1", "r1-12-abcdef")
    answer = decode_jwt(authorizer.answer(_server_request(_server_seed(), user, R1)))
    assert answer["nats"]["error"] == ""
    claims = decode_jwt(answer["nats"]["jwt"])
    assert claims["nats"]["pub"]["allow"] == [entry_subject("r1", "r1-12-abcdef")]
    assert entry_subject("r1", "r1-12-abcdef") == "$KV.AETHER_RUNNERS.r1.r1-12-abcdef"
    assert claims["nats"]["sub"]["allow"] == [f"{runner_inbox('r1', 'r1-12-abcdef')}.>"]
    for forged in ("runner/r1", "runner/r1/x/y", "runner/r.1/x", "runner/r1/>", "runner//x"):
        assert parse_runner_user(forged) is None, forged


def test_an_attempts_key_subject_names_it_as_its_event_subjects_do() -> None:
    assert KEY.key_subject == "aether.attempt_key.m1.t1.2"
    assert parse_key_subject(KEY.key_subject) == ("m1", "t1", 2)
    dotted = AttemptKey("m1", "1.2", 1)  # a task id holding a dot: its digest token
    mission, token, attempt = parse_key_subject(dotted.key_subject) or ("", "", 0)
    assert (mission, attempt) == ("m1", 1) and token.startswith("_") and "." not in token
    for forged in (
        "aether.attempt_key.m1.t1",
        "aether.attempt_key.m1.t1.two",
        "aether.attempt_key.m1.t1.2.extra",
        "aether.attempt_key.m1.*.2",
        "aether.attempt_key.>",
        "aether.attempt_keys.m1.t1.2",
        "aether.mission.m1.t1.2",
    ):
        assert parse_key_subject(forged) is None, forged


def test_an_attempts_event_key_is_the_masters_for_that_attempt_alone() -> None:
    """Every process holding the master (a standby, a restarted scheduler) gives the
    same key; another attempt, task, mission or master another; and the key is no
    runner's secret, though derived from the same master (another context)."""
    key = attempt_event_key(MASTER, "m1", "t1", 2)
    assert key == attempt_event_key(MASTER, "m1", "t1", 2) and len(key) == 32
    others = {
        attempt_event_key(MASTER, "m1", "t1", 3),
        attempt_event_key(MASTER, "m1", "t2", 2),
        attempt_event_key(MASTER, "m2", "t1", 2),
        attempt_event_key("another-deployments-master", "m1", "t1", 2),
        # The parts are kept apart: moving a character from one to the next changes it.
        attempt_event_key(MASTER, "m1t", "1", 2),
    }
    assert key not in others and len(others) == 5
    as_text = base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert as_text != runner_secret(MASTER, "m1-t1-2")
    # Pinned: a change of derivation changes every stored attempt event's id.
    assert key.hex()[:16] == PINNED_KEY_PREFIX
    authorizer = AttemptAuthorizer(
        issuer_seed=new_issuer_seed(),
        master=MASTER,
        grants=Grants(lambda key: True),
        types=frozenset({AgentCompleted}),
    )
    assert authorizer.event_key("m1", "t1", 2) == key


PINNED_KEY_PREFIX = "ce48a1d758960010"


def test_a_runners_step_record_key_is_its_names_alone() -> None:
    """The key of a runner's step records (decision 0032) follows from its own secret:
    every process of the name derives it again (a restart records a step under the id it
    did), another name another; and it is neither the secret (the password it proves its
    name with) nor any attempt's key."""
    key = step_record_key(R1)
    assert key == step_record_key(runner_secret(MASTER, "r1")) and len(key) == 32
    assert key != step_record_key(runner_secret(MASTER, "r2"))
    assert key != step_record_key(runner_secret("another-deployments-master", "r1"))
    assert base64.urlsafe_b64encode(key).decode().rstrip("=") != R1
    assert key != attempt_event_key(MASTER, "m1", "t1", 2)
    # Pinned: a change of derivation changes every runner's step records' ids.
    assert key.hex()[:16] == "adea0f8381596072"
    with pytest.raises(ValueError, match="no runner secret"):
        step_record_key("")
