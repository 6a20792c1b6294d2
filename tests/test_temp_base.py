"""Where the suite's temporary files go (``memory_temp_base`` in the root conftest): a
tmpfs with room, in a directory of the user's own, unless ``TMPDIR`` says otherwise."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from conftest import MEMORY_TEMP_CANDIDATES, _tmpfs_mounts, memory_temp_base

TMPFS = next((c for c in MEMORY_TEMP_CANDIDATES if str(c) in _tmpfs_mounts()), None)
needs_tmpfs = pytest.mark.skipif(TMPFS is None, reason="no tmpfs among the candidates here")


@needs_tmpfs
def test_a_tmpfs_with_room_is_chosen_in_a_directory_of_our_own() -> None:
    assert TMPFS is not None
    base = memory_temp_base({}, [TMPFS], needed=1)
    assert base == TMPFS / f"aether-tests-{os.getuid()}"
    found = base.lstat()
    assert found.st_uid == os.getuid()
    assert not found.st_mode & 0o022


@needs_tmpfs
def test_the_callers_tmpdir_stands(tmp_path: Path) -> None:
    assert TMPFS is not None
    assert memory_temp_base({"TMPDIR": str(tmp_path)}, [TMPFS], needed=1) is None


@needs_tmpfs
def test_a_tmpfs_without_the_room_needed_is_passed_over() -> None:
    assert TMPFS is not None
    free = os.statvfs(TMPFS)
    assert memory_temp_base({}, [TMPFS], needed=free.f_blocks * free.f_frsize + 1) is None


def test_a_directory_on_another_file_system_is_passed_over(tmp_path: Path) -> None:
    # A directory that is not itself a tmpfs mount (even one inside a tmpfs).
    assert memory_temp_base({}, [tmp_path], needed=1) is None


def test_a_name_taken_by_a_link_or_open_to_others_is_not_used(tmp_path: Path) -> None:
    """Someone else's link at the directory's name (a shared tmpfs) is not followed, and
    a directory others may write in is not used (one they may read is). ``tmp_path``
    stands for the tmpfs (named a mount: a real one is out of reach here), so nothing at
    the real name is touched."""
    mounts = {str(tmp_path)}
    name = tmp_path / f"aether-tests-{os.getuid()}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    name.symlink_to(elsewhere)
    assert memory_temp_base({}, [tmp_path], needed=1, tmpfs=mounts) is None
    name.unlink()
    name.mkdir()
    for open_to_others in (0o775, 0o757, 0o777):
        name.chmod(open_to_others)
        assert memory_temp_base({}, [tmp_path], needed=1, tmpfs=mounts) is None
    for ours_to_write in (0o700, 0o755):
        name.chmod(ours_to_write)
        assert memory_temp_base({}, [tmp_path], needed=1, tmpfs=mounts) == name


def test_this_run_uses_the_base_chosen_for_it(tmp_path: Path) -> None:
    """The run's processes inherit the choice: this worker's temporary files and its
    ``tmp_path`` are under ``TMPDIR`` whenever the conftest set it."""
    chosen = os.environ.get("TMPDIR")
    if chosen is None:
        pytest.skip("no TMPDIR for this run (no tmpfs with room, or not set)")
    assert Path(tempfile.gettempdir()) == Path(chosen)
    assert tmp_path.is_relative_to(chosen)
