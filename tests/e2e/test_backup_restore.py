"""``aether backup`` and ``aether restore`` between two ``aether up`` homes, as a person
moving a stack runs them: real NATS, PostgreSQL, services and git.

- a mission completed and a token made on one home, backed up, then the home deleted: the
  backup restored into a new home given the old home's event id secret (which the new
  home keeps), the stack started there shows the mission with the same ids, tasks and
  final sha, the token still lets its holder in, and a second mission completes while
  the first one's events stay exactly those of the backup (nothing of it was done again);
- a restore is refused, with nothing written, while a stack runs on the home, into a
  stream that holds events, from a file that is damaged or cut short, and into a new
  home without the source's event id secret (its first start would make another: the
  services would take the backup's steps again, decision 0031).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from dulwich.refs import Ref
from dulwich.repo import Repo

from aether import archive
from aether.gitview import create_sample_repository
from tests.e2e.test_up import Up, complete_a_mission, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def show(tmp_path: Path, mission_id: str) -> dict[str, object]:
    shown = run(tmp_path, "mission", "show", mission_id, "--json")
    assert shown.returncode == 0, shown.stderr
    mission: dict[str, object] = json.loads(shown.stdout)
    return mission


def essentials(mission: dict[str, object]) -> dict[str, object]:
    """What a restore must keep of a mission as shown: ids, states, shas."""
    tasks = mission["tasks"]
    assert isinstance(tasks, list)
    return {
        "id": mission["id"],
        "status": mission["status"],
        "final_sha": mission["final_sha"],
        "integration_branch": mission["integration_branch"],
        "tasks": [(t["task_id"], t["status"], t.get("attempt"), t.get("merge_sha")) for t in tasks],
    }


def events_of(path: Path, mission_id: str) -> list[tuple[int, str, bytes, str | None]]:
    """The stored messages of one mission in a backup: sequence, subject, data, msg id."""
    archive.verify(path)
    return [
        (r.seq, r.subject, r.data, (r.headers or {}).get("Nats-Msg-Id"))
        for r in archive.records(path)
        if isinstance(r, archive.Message) and archive.mission_of(r.subject) == mission_id
    ]


def event_id_secret(home: Path) -> dict[str, str]:
    """The event id secret of the stack of ``home``, as the operator gives it to another
    (``AETHER_EVENT_ID_SECRET``): restored events keep their ids only under it."""
    secret = (home / "credentials" / "event-id.secret").read_text(encoding="utf-8").strip()
    return {"AETHER_EVENT_ID_SECRET": secret}


def refused(result: subprocess.CompletedProcess[str], why: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert why in result.stderr, result.stderr
    assert "nothing was restored" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_backup_restored_into_a_new_home_carries_on(tmp_path: Path):
    # Not under tmp_path: the embedded PostgreSQL runs as its own user under root.
    old_home = Path(tempfile.mkdtemp(prefix="aether-backup-old-"))
    new_home = Path(tempfile.mkdtemp(prefix="aether-backup-new-"))
    backup = tmp_path / "aether.backup"
    repo = tmp_path / "project"
    create_sample_repository(repo)
    try:
        old = Up(tmp_path, old_home, "--port-base", "0")
        try:
            old.wait_for("Aether is up.")
            mission_id = complete_a_mission(old, tmp_path, repo, "src/greeting.py")
            before = essentials(show(tmp_path, mission_id))
            created = run(tmp_path, "tokens", "create", "ci", "--scope", "read")
            assert created.returncode == 0, created.stderr
            secret = next(
                line.strip() for line in created.stdout.splitlines() if line.startswith("aet_")
            )

            made = run(tmp_path, "backup", "--home", str(old_home), str(backup))
            assert made.returncode == 0, made.stdout + made.stderr
            assert "of 1 mission " in made.stdout and "1 API token " in made.stdout, made.stdout
            header = archive.verify(backup)
            assert header.counts.messages == header.stream.last_seq > 0
            assert (header.counts.missions, header.counts.tokens) == (1, 1)

            # The services of a running stack would take the events for new work.
            refused(run(tmp_path, "restore", "--home", str(old_home), str(backup)), "running")
        finally:
            old.stop()
        # Stopped now, but its stream holds the events already.
        refused(run(tmp_path, "restore", "--home", str(old_home), str(backup)), "already holds")
        source_secret = event_id_secret(old_home)  # the operator keeps it, as the backup
        shutil.rmtree(old_home)

        # A damaged or shortened copy is refused before any server starts.
        data = backup.read_bytes()
        damaged, short = tmp_path / "damaged.backup", tmp_path / "short.backup"
        damaged.write_bytes(
            data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1 :]
        )
        short.write_bytes(data[:-40])
        untouched = tmp_path / "untouched-home"
        for bad in (damaged, short):
            refused(run(tmp_path, "restore", "--home", str(untouched), str(bad)), "damaged")
        assert not untouched.exists()

        # The new home has no event id secret: its first start would make another one.
        refused(
            run(tmp_path, "restore", "--home", str(new_home), str(backup)),
            "has no event id secret yet",
        )
        assert list(new_home.iterdir()) == []

        restored = run(tmp_path, "restore", "--home", str(new_home), str(backup), env=source_secret)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert f"restored {header.counts.messages} events of 1 mission " in restored.stdout, (
            restored.stdout
        )
        assert "1 of 1 API token " in restored.stdout, restored.stdout
        # The home keeps the given secret (written as its NATS and PostgreSQL start, or
        # by the restore, which then says so).
        assert event_id_secret(new_home) == source_secret

        # Started without being given the secret: the one the home now keeps.
        new = Up(tmp_path, new_home, "--port-base", "0")
        try:
            new.wait_for("Aether is up.")
            assert essentials(show(tmp_path, mission_id)) == before
            listed = run(tmp_path, "mission", "list", "--json")
            assert [m["id"] for m in json.loads(listed.stdout)["missions"]] == [mission_id]
            whoami = run(tmp_path, "tokens", "whoami", "--token", secret)
            assert whoami.returncode == 0, whoami.stderr
            assert whoami.stdout.startswith("ci "), whoami.stdout

            later = complete_a_mission(new, tmp_path, repo, "src/farewell.py")
            again = tmp_path / "again.backup"
            made = run(tmp_path, "backup", "--home", str(new_home), str(again))
            assert made.returncode == 0, made.stdout + made.stderr
            # The first mission's events are the backup's, at the same sequences: no
            # service did any of its steps again. The second mission's follow them.
            assert events_of(again, mission_id) == events_of(backup, mission_id)
            assert min(seq for seq, *_ in events_of(again, later)) > header.stream.last_seq
            assert essentials(show(tmp_path, mission_id)) == before
            branch = Ref(f"refs/heads/{before['integration_branch']}".encode())
            assert Repo(str(repo)).refs[branch].decode() == before["final_sha"]
        finally:
            new.stop()
    finally:
        shutil.rmtree(old_home, ignore_errors=True)
        shutil.rmtree(new_home, ignore_errors=True)


def test_a_restore_while_running_under_up_rebuilds_the_read_model(tmp_path: Path):
    """``aether restore --while-running`` into a stack running on a new home (its stream
    empty) started with the old home's event id secret, as the operator gives it: the
    running services are given the restored events, the gateway's read model is rebuilt
    and shows the mission as it was, and no service works it again (a later mission
    completes; a second backup holds the first mission's events exactly as the first
    did). The services act on the restored events as they arrive (the scheduler approves
    the restored plan again): only under the same secret do their steps get the restored
    events' ids, which the stream's duplicate window then drops; under another, the
    restore is refused (``tests/test_backup_restore_stream.py``)."""
    old_home = Path(tempfile.mkdtemp(prefix="aether-backup-old-"))
    new_home = Path(tempfile.mkdtemp(prefix="aether-backup-new-"))
    backup = tmp_path / "aether.backup"
    repo = tmp_path / "project"
    create_sample_repository(repo)
    try:
        old = Up(tmp_path, old_home, "--port-base", "28000")
        try:
            old.wait_for("Aether is up.")
            mission_id = complete_a_mission(old, tmp_path, repo, "src/greeting.py")
            before = essentials(show(tmp_path, mission_id))
            made = run(tmp_path, "backup", "--home", str(old_home), str(backup))
            assert made.returncode == 0, made.stdout + made.stderr
        finally:
            old.stop()
        header = archive.verify(backup)

        new = Up(tmp_path, new_home, "--port-base", "28100", env=event_id_secret(old_home))
        try:
            new.wait_for("Aether is up.")
            restored = run(
                tmp_path, "restore", "--while-running", "--home", str(new_home), str(backup)
            )
            assert restored.returncode == 0, restored.stdout + restored.stderr
            assert f"restored {header.counts.messages} events of 1 mission " in restored.stdout
            assert "read model rebuilt: " in restored.stdout, restored.stdout
            # The running stack's fingerprint (``stack.json``) is the backup's: checked.
            assert "warning" not in restored.stderr, restored.stderr
            assert essentials(show(tmp_path, mission_id)) == before

            later = complete_a_mission(new, tmp_path, repo, "src/farewell.py")
            again = tmp_path / "again.backup"
            made = run(tmp_path, "backup", "--home", str(new_home), str(again))
            assert made.returncode == 0, made.stdout + made.stderr
            assert events_of(again, mission_id) == events_of(backup, mission_id)
            assert min(seq for seq, *_ in events_of(again, later)) > header.stream.last_seq
            assert essentials(show(tmp_path, mission_id)) == before
        finally:
            new.stop()
    finally:
        shutil.rmtree(old_home, ignore_errors=True)
        shutil.rmtree(new_home, ignore_errors=True)
