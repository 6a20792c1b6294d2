"""The seccomp filter's program, run by a small classic-BPF interpreter over made-up calls
of both architectures (the kernel runs it in ``tests/escape/test_seccomp.py``), and how
it is handed to bubblewrap."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from aether_sandbox import Bubblewrap, Request, SandboxSettings, SandboxUnavailable, seccomp
from aether_sandbox.seccomp import (
    AUDIT_ARCH,
    DENIED,
    NUMBERS,
    RET_ALLOW,
    RET_ERRNO,
    RET_KILL_PROCESS,
    X32_SYSCALL_BIT,
)

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bubblewrap")

EPERM = RET_ERRNO | errno.EPERM
ENOSYS = RET_ERRNO | errno.ENOSYS
# Calls every program makes, by architecture: read, write, openat, mmap, exit_group.
ORDINARY = {"x86_64": (0, 1, 257, 9, 231), "aarch64": (63, 64, 56, 222, 94)}
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET = 0x10000000, 0x00020000, 0x40000000
# The flags glibc's pthread_create passes to clone.
THREAD_FLAGS = 0x3D0F00


def run(program: bytes, nr: int, arch: int, *args: int) -> int:
    """What ``program`` returns for the call ``nr`` made through ``arch`` with ``args``:
    a classic-BPF interpreter for the instructions the filter uses."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    code = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    accumulator, pc = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        pc += 1
        if op == 0x20:  # ld [k]
            (accumulator,) = struct.unpack_from("<I", data, k)
        elif op == 0x15:  # jeq #k
            pc += jt if accumulator == k else jf
        elif op == 0x35:  # jge #k
            pc += jt if accumulator >= k else jf
        elif op == 0x45:  # jset #k
            pc += jt if accumulator & k else jf
        elif op == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected instruction {op:#x}")


@pytest.fixture(params=sorted(NUMBERS))
def machine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_every_denied_call_fails_with_eperm(machine: str) -> None:
    program, numbers, arch = seccomp.program(machine), NUMBERS[machine], AUDIT_ARCH[machine]
    for name in DENIED:
        if name in numbers:
            assert run(program, numbers[name], arch) == EPERM, name
    for name in ("io_uring_setup", "userfaultfd", "keyctl", "bpf", "ptrace", "setns", "mount"):
        assert name in numbers and run(program, numbers[name], arch) == EPERM


def test_tracing_opens_ptrace_and_process_vm_and_nothing_else(machine: str) -> None:
    program, numbers, arch = (
        seccomp.program(machine, tracing=True),
        NUMBERS[machine],
        AUDIT_ARCH[machine],
    )
    for name in DENIED:
        if name in numbers:
            expected = RET_ALLOW if name in seccomp.TRACING else EPERM
            assert run(program, numbers[name], arch) == expected, name
    assert set(seccomp.TRACING) == {"ptrace", "process_vm_readv", "process_vm_writev"}
    assert run(program, numbers["kcmp"], arch) == EPERM  # comparing others' files stays shut


def test_ordinary_calls_are_allowed(machine: str) -> None:
    program, arch = seccomp.program(machine), AUDIT_ARCH[machine]
    for nr in ORDINARY[machine]:
        assert run(program, nr, arch, 3, 4, 5) == RET_ALLOW


def test_clone3_says_enosys_so_the_c_library_falls_back_to_clone(machine: str) -> None:
    program, numbers = seccomp.program(machine), NUMBERS[machine]
    assert run(program, numbers["clone3"], AUDIT_ARCH[machine]) == ENOSYS


def test_clone_and_unshare_are_denied_only_with_namespace_flags(machine: str) -> None:
    program, numbers, arch = seccomp.program(machine), NUMBERS[machine], AUDIT_ARCH[machine]
    clone, unshare = numbers["clone"], numbers["unshare"]
    assert run(program, clone, arch, THREAD_FLAGS) == RET_ALLOW
    assert run(program, clone, arch, 17) == RET_ALLOW  # fork(): SIGCHLD alone
    for flag in (CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET):
        assert run(program, clone, arch, THREAD_FLAGS | flag) == EPERM
        assert run(program, unshare, arch, flag) == EPERM
    assert run(program, unshare, arch, 0x80) == EPERM  # CLONE_NEWTIME
    assert run(program, unshare, arch, 0x400) == RET_ALLOW  # CLONE_FILES


def test_personality_allows_only_the_harmless_values(machine: str) -> None:
    program, arch = seccomp.program(machine), AUDIT_ARCH[machine]
    personality = NUMBERS[machine]["personality"]
    for value in (0, 0x8, 0x20000, 0xFFFFFFFF, 0xFFFFFFFF_FFFFFFFF):
        assert run(program, personality, arch, value) == RET_ALLOW, hex(value)
    for value in (0x0040000, 0x0400000, 0x1):  # ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ...
        assert run(program, personality, arch, value) == EPERM, hex(value)


def test_terminal_injection_ioctls_are_denied_whatever_the_high_bits(machine: str) -> None:
    program, arch = seccomp.program(machine), AUDIT_ARCH[machine]
    ioctl = NUMBERS[machine]["ioctl"]
    for request in (0x5412, 0x541C, 0x1_00005412, 0xFFFFFFFF_0000541C):
        assert run(program, ioctl, arch, 0, request) == EPERM, hex(request)
    assert run(program, ioctl, arch, 0, 0x5401) == RET_ALLOW  # TCGETS
    assert run(program, ioctl, arch, 0, 0x541B) == RET_ALLOW  # FIONREAD


def test_calls_through_another_abi_kill_the_process() -> None:
    x86, arm = seccomp.program("x86_64"), seccomp.program("aarch64")
    i386, arm32 = 0x40000003, 0x40000028
    assert run(x86, 0, i386) == RET_KILL_PROCESS
    assert run(x86, 0, AUDIT_ARCH["aarch64"]) == RET_KILL_PROCESS
    assert run(x86, X32_SYSCALL_BIT | 0, AUDIT_ARCH["x86_64"]) == RET_KILL_PROCESS
    assert run(arm, 63, arm32) == RET_KILL_PROCESS
    assert run(arm, 63, AUDIT_ARCH["x86_64"]) == RET_KILL_PROCESS


def test_another_machine_has_no_filter() -> None:
    with pytest.raises(seccomp.UnsupportedArchitecture, match="'riscv64'"):
        seccomp.program("riscv64")


def test_the_setting_is_on_unless_turned_off() -> None:
    assert SandboxSettings.from_env({}).seccomp
    assert not SandboxSettings.from_env({"AETHER_SANDBOX_SECCOMP": "off"}).seccomp
    with pytest.raises(ValueError, match="AETHER_SANDBOX_SECCOMP"):
        SandboxSettings.from_env({"AETHER_SANDBOX_SECCOMP": "maybe"})


def test_a_descriptor_is_given_in_place_of_the_placeholder_only() -> None:
    argv = ["bwrap", "--seccomp", seccomp.FD_PLACEHOLDER, "--", "echo", seccomp.FD_PLACEHOLDER]
    with seccomp.passed(argv, b"\0" * 8) as (given, fds):
        (fd,) = fds
        assert given == ["bwrap", "--seccomp", str(fd), "--", "echo", seccomp.FD_PLACEHOLDER]
        assert os.read(fd, 100) == b"\0" * 8
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # closed once started
    with pytest.raises(ValueError, match="has none"), seccomp.passed(argv, None):
        pass
    with (
        pytest.raises(ValueError, match="no --seccomp"),
        seccomp.passed(["bwrap", "--", "true"], b"\0" * 8),
    ):
        pass


@needs_bwrap
def test_a_launch_started_without_its_filter_does_not_start() -> None:
    """A way of starting bubblewrap that forgot the filter fails, rather than running the
    command unfiltered: bubblewrap refuses the placeholder."""
    sandbox = Bubblewrap(SandboxSettings())
    assert sandbox.seccomp is not None
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        launch = sandbox.launch(Request(["/bin/true"], root, root, {"PATH": os.defpath}))
        done = subprocess.run(launch.argv, env=launch.env, capture_output=True, check=False)
        assert done.returncode != 0 and b"Invalid fd" in done.stderr
        with seccomp.passed(launch.argv, launch.seccomp) as (argv, fds):
            done = subprocess.run(argv, env=launch.env, pass_fds=fds, check=False)
        assert done.returncode == 0


@needs_bwrap
def test_without_a_filter_for_the_machine_no_sandbox_opens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(seccomp, "NUMBERS", {})
    with pytest.raises(SandboxUnavailable, match="AETHER_SANDBOX_SECCOMP=off"):
        Bubblewrap(SandboxSettings())
    assert Bubblewrap(SandboxSettings(seccomp=False)).seccomp is None
