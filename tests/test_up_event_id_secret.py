"""``aether up`` keeps the event id secret it is given (decision 0031): the services key
their events' ids with it, so a later start must key with the same one, given again or
not; an operator's secret other than the one the home keeps is refused (the ids would
change mid-stream) unless the operator says which to take."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from aether.credentials import event_id_fingerprint
from aether.stack import Stack
from aether.supervise import StackError

GIVEN = "the-operators-own-event-id-secret"
OTHER = "another-operators-event-id-secret"
HOLDERS = ("gateway", "planner", "scheduler", "git-broker")


@pytest.fixture(autouse=True)
def no_secret_of_the_test_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AETHER_EVENT_ID_SECRET", raising=False)
    monkeypatch.delenv("AETHER_EVENT_ID_SECRET_FILE", raising=False)


def kept(home: Path) -> Path:
    return home / "credentials" / "event-id.secret"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_given_secret_is_kept_in_the_home_and_taken_by_a_start_without_it(
    tmp_path: Path,
) -> None:
    first = Stack(home=tmp_path, env={"AETHER_EVENT_ID_SECRET": GIVEN})
    assert first.load_event_id_secret() == GIVEN
    # Kept as the secret the stack makes is: readable by its owner only.
    assert kept(tmp_path).read_text(encoding="utf-8").strip() == GIVEN
    assert mode(kept(tmp_path)) == 0o600
    assert mode(kept(tmp_path).parent) == 0o700
    assert "the home keeps the given AETHER_EVENT_ID_SECRET" in first.event_id_secret_note
    # A later start without it in the environment keys with it, not with a new one.
    later = Stack(home=tmp_path)
    assert later.load_event_id_secret() == GIVEN
    assert later.event_id_secret_note == ""
    for service in HOLDERS:
        assert later.service_env(service)["AETHER_EVENT_ID_SECRET"] == GIVEN
    # Given again, the same: nothing to say.
    again = Stack(home=tmp_path, env={"AETHER_EVENT_ID_SECRET": GIVEN})
    assert again.load_event_id_secret() == GIVEN
    assert again.event_id_secret_note == ""


def test_a_secret_given_in_a_file_is_kept_too_and_the_file_is_not_passed_on(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    file = tmp_path / "event-id"
    file.write_text(GIVEN + "\n", encoding="utf-8")
    stack = Stack(home=home, env={"AETHER_EVENT_ID_SECRET_FILE": str(file)})
    assert stack.load_event_id_secret() == GIVEN
    env = stack.service_env("scheduler")
    assert env["AETHER_EVENT_ID_SECRET"] == GIVEN
    assert "AETHER_EVENT_ID_SECRET_FILE" not in env
    assert Stack(home=home).load_event_id_secret() == GIVEN
    missing = Stack(home=tmp_path / "other", env={"AETHER_EVENT_ID_SECRET_FILE": "/nowhere/x"})
    with pytest.raises(StackError, match="AETHER_EVENT_ID_SECRET_FILE cannot be read"):
        missing.load_event_id_secret()


def test_another_secret_than_the_homes_is_refused_unless_told_which_to_take(
    tmp_path: Path,
) -> None:
    made = Stack(home=tmp_path).load_event_id_secret()
    with pytest.raises(StackError) as refused:
        Stack(home=tmp_path, env={"AETHER_EVENT_ID_SECRET": OTHER}).load_event_id_secret()
    said = str(refused.value)
    assert said.startswith(
        "AETHER_EVENT_ID_SECRET is another secret than the one this home keeps"
    ), said
    assert "stored twice" in said and "nothing was started" in said
    assert "--event-id-secret home" in said and "--event-id-secret environment" in said
    assert OTHER not in said and made not in said
    assert kept(tmp_path).read_text(encoding="utf-8").strip() == made
    # Told to take the home's: the environment's is left aside, and not passed on.
    home = Stack(home=tmp_path, env={"AETHER_EVENT_ID_SECRET": OTHER}, event_id_source="home")
    assert home.load_event_id_secret() == made
    assert "left aside" in home.event_id_secret_note
    assert home.service_env("gateway")["AETHER_EVENT_ID_SECRET"] == made
    assert kept(tmp_path).read_text(encoding="utf-8").strip() == made
    # Told to take the environment's: kept from then on, the former beside it.
    taken = Stack(
        home=tmp_path, env={"AETHER_EVENT_ID_SECRET": OTHER}, event_id_source="environment"
    )
    assert taken.load_event_id_secret() == OTHER
    assert "the services' event ids change" in taken.event_id_secret_note
    assert kept(tmp_path).read_text(encoding="utf-8").strip() == OTHER
    previous = kept(tmp_path).with_name("event-id.secret.previous")
    assert previous.read_text(encoding="utf-8").strip() == made
    assert mode(kept(tmp_path)) == mode(previous) == 0o600
    assert Stack(home=tmp_path).load_event_id_secret() == OTHER


def test_aether_up_refuses_another_secret_before_it_starts_anything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    made = Stack(home=home).load_event_id_secret()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AETHER_", "NATS_"))}
    env.pop("DATABASE_URL", None)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env["AETHER_EVENT_ID_SECRET"] = OTHER
    ended = subprocess.run(
        [sys.executable, "-m", "aether.cli", "up", "--home", str(home), "--port-base", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ended.returncode == 1, ended.stdout + ended.stderr
    assert ended.stderr.startswith(
        "error: AETHER_EVENT_ID_SECRET is another secret than the one this home keeps"
    ), ended.stderr
    assert "aether up --event-id-secret home" in ended.stderr
    assert "starting Aether" not in ended.stdout
    # Nothing started, recorded or remembered.
    assert not (home / "nats").exists() and not (home / "postgres").exists()
    assert not (home / "stack.json").exists()
    assert not (tmp_path / "state").exists()
    assert Stack(home=home).load_event_id_secret() == made
    assert event_id_fingerprint(made) != event_id_fingerprint(OTHER)
