"""The Landlock ruleset a sandbox asks for, by ABI (pure: no kernel involved)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aether_sandbox import Bubblewrap, Request, SandboxSettings, landlock
from aether_sandbox.landlock import (
    IOCTL_DEV,
    MAKE_BLOCK,
    MAKE_CHAR,
    READ,
    READ_DIR,
    REFER,
    TRUNCATE,
    Policy,
)

POLICY = Policy(read=(Path("/usr"),), write=(Path("/work"),))


def parsed(words: list[str]) -> tuple[int, int, int, dict[str, int], list[str]]:
    paths, checks = {}, []
    for index in range(3, len(words), 3):
        kind, rights, target = words[index : index + 3]
        if kind == "p":
            paths[target] = int(rights)
        else:
            checks.append(f"{kind} {rights} {target}")
    return int(words[0]), int(words[1]), int(words[2]), paths, checks


@pytest.mark.parametrize("abi", range(1, 9))
def test_only_the_rights_the_kernels_abi_knows_are_handled(abi: int) -> None:
    handled, net, scoped, paths, checks = parsed(POLICY.words(abi))
    assert bool(handled & REFER) == (abi >= 2)
    assert bool(handled & TRUNCATE) == (abi >= 3)
    assert bool(handled & IOCTL_DEV) == (abi >= 5)
    assert handled < 1 << 16  # nothing an ABI after 7 may add is asked for
    assert net == 0  # TCP is left to the network namespace, checked to hold loopback alone
    assert scoped == (3 if abi >= 6 else 0)
    assert checks == ["l 0 lo"]
    assert paths["/"] == READ_DIR and paths["/usr"] == READ
    for tree in ("/work", "/dev"):
        assert paths[tree] & handled == paths[tree]
        assert not paths[tree] & (MAKE_CHAR | MAKE_BLOCK)
    assert not paths["/work"] & IOCTL_DEV
    assert paths["/dev"] & IOCTL_DEV == handled & IOCTL_DEV


def test_the_hosts_network_is_not_checked_for_loopback_alone() -> None:
    _, net, scoped, _, checks = parsed(Policy(read=(), write=(), lone_loopback=False).words(7))
    assert net == 0 and checks == [] and scoped == 3


def test_abi_1_and_none_count_as_missing() -> None:
    assert landlock.missing(0) is not None and "ABI 1" in (landlock.missing(1) or "")
    assert landlock.missing(2) is None


def test_the_policy_comes_from_the_lists_the_mounts_come_from(tmp_path: Path) -> None:
    """Every tree the sandbox binds writable is written, every tree it shows read-only
    read; nothing it does not mount is listed."""
    work, home, tools = tmp_path / "work", tmp_path / "home", tmp_path / "tools"
    for directory in (work, home, tools):
        directory.mkdir()
    sandbox = Bubblewrap(SandboxSettings(landlock="off"))
    request = Request(["true"], work, work, {"PATH": "/usr/bin"}, read_only=(tools,), home=home)
    policy = sandbox.landlock_policy(request)
    mounts = sandbox.mounts(request)
    binds = {mounts[i + 2] for i, arg in enumerate(mounts) if arg == "--bind"}
    assert binds == {str(work), "/tmp/home"}
    assert set(policy.write) == {Path(p) for p in binds} | {Path("/tmp")}
    assert tools in policy.read and Path("/usr") in policy.read and work not in policy.read
    ro = {mounts[i + 2] for i, arg in enumerate(mounts) if arg.startswith("--ro-bind")}
    for target in map(Path, ro):  # under a tree read (masked files in /etc, /proc/sys)
        assert any(target == tree or tree in target.parents for tree in policy.read), target
    assert policy.lone_loopback
    egress = Bubblewrap(SandboxSettings(landlock="off", egress=("pypi.org",)))
    assert egress.landlock_policy(request).lone_loopback  # the proxy is reached on loopback
    host = Bubblewrap(SandboxSettings(landlock="off", network="host"))
    assert not host.landlock_policy(request).lone_loopback


def test_the_setting_is_read_and_checked() -> None:
    assert SandboxSettings.from_env({}).landlock == "auto"
    for value in ("auto", "required", "off", " Required "):
        assert SandboxSettings.from_env({"AETHER_SANDBOX_LANDLOCK": value}).landlock == (
            value.strip().lower()
        )
    with pytest.raises(ValueError, match="AETHER_SANDBOX_LANDLOCK"):
        SandboxSettings.from_env({"AETHER_SANDBOX_LANDLOCK": "maybe"})
