"""Where the suite's temporary files go (``memory_temp_base`` in the root conftest): a
tmpfs with room, in a directory of the user's own, unless ``TMPDIR`` says otherwise."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from conftest import memory_temp_base

# ``tmp_path`` stands for the tmpfs in these tests, named a mount point (a real mount is out
# of reach here), so nothing at the real name is touched and no test needs a tmpfs.


def test_a_tmpfs_with_room_is_chosen_in_a_directory_of_our_own(tmp_path: Path) -> None:
    base = memory_temp_base({}, [tmp_path], needed=1, tmpfs={str(tmp_path)})
    assert base == tmp_path / f"aether-tests-{os.getuid()}"
    found = base.lstat()
    assert found.st_uid == os.getuid()
    assert not found.st_mode & 0o022
    # Found again by the next run, as it is.
    assert memory_temp_base({}, [tmp_path], needed=1, tmpfs={str(tmp_path)}) == base


def test_the_callers_tmpdir_stands(tmp_path: Path) -> None:
    mounts = {str(tmp_path)}
    assert memory_temp_base({"TMPDIR": "/elsewhere"}, [tmp_path], 1, tmpfs=mounts) is None


def test_a_tmpfs_without_the_room_needed_is_passed_over(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path)
    everything = free.f_blocks * free.f_frsize + 1
    assert memory_temp_base({}, [tmp_path], needed=everything, tmpfs={str(tmp_path)}) is None


def test_a_directory_that_is_no_tmpfs_mount_is_passed_over(tmp_path: Path) -> None:
    # As the mount table has it (even a directory inside a tmpfs is not one).
    assert memory_temp_base({}, [tmp_path], needed=1) is None
    assert memory_temp_base({}, [tmp_path], needed=1, tmpfs={"/dev/shm"}) is None


def test_a_name_taken_by_a_link_or_open_to_others_is_not_used(tmp_path: Path) -> None:
    """Someone else's link at the directory's name (a shared tmpfs) is not followed, and
    a directory others may write in is not used (one they may read is)."""
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
