"""The system-call filter of every bubblewrap sandbox: a classic BPF program, built here.

bubblewrap loads it (``--seccomp FD``) as the last step before it starts the command, so
the command and everything it starts carry it; nothing inside can lift it. It is a
deny-list modelled on Docker's default profile and Flatpak's: the kernel interfaces a
command in a sandbox of no capability has no use for, and that widen what a kernel bug
can be reached through (``io_uring``, ``userfaultfd``, ``bpf``, ``perf_event_open``,
keyrings, tracing, module loading, mounts, namespaces, ...). A denied call fails with
``EPERM`` (``clone3`` with ``ENOSYS``, so that the C library falls back to ``clone``,
whose flags a filter can read), so a tool that tries one degrades as it would on a
kernel without it rather than being killed.

The program first checks the architecture in ``seccomp_data.arch``: a call made through
another ABI (32-bit ``int 0x80`` on x86_64, x32, AArch32) has other numbers, so it kills
the process rather than read them with the wrong table. Only x86_64 and aarch64 have a
table; on any other machine ``program`` raises ``UnsupportedArchitecture`` and no
sandbox starts (``AETHER_SANDBOX_SECCOMP=off`` runs sandboxes without a filter).

Arguments are compared on their low 32 bits, which is all the kernel reads of them for
the calls filtered by argument (``clone``'s and ``unshare``'s namespace flags,
``personality``'s persona, ``ioctl``'s request): a value with high bits set cannot pass
as another.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
NR, ARCH, ARGS = 0, 4, 16

# Classic BPF opcodes (linux/bpf_common.h).
LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
JSET_K = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K
RET_K = 0x06 | 0x00  # BPF_RET | BPF_K

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000

# Namespace flags of clone(2) and unshare(2): CLONE_NEWTIME, NEWNS, NEWCGROUP, NEWUTS,
# NEWIPC, NEWUSER, NEWPID, NEWNET. (clone's 0x80 is part of its exit signal, not
# CLONE_NEWTIME, which only unshare and clone3 take.)
CLONE_NAMESPACES = 0x7E020000
UNSHARE_NAMESPACES = CLONE_NAMESPACES | 0x00000080
# personality(2) values that change nothing a sandbox cares about (Docker's list):
# PER_LINUX, PER_LINUX32, UNAME26, both, and the query 0xffffffff.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
# ioctl(2) requests on a terminal that push input into it or drive the console.
TIOCSTI, TIOCLINUX = 0x5412, 0x541C

# The calls denied outright (EPERM), as Docker and Flatpak deny them to a container
# without capabilities, and why.
DENIED = (
    # asynchronous I/O rings and user page-fault handling: large, bug-prone kernel
    # surfaces behind many privilege escalations
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "userfaultfd",
    # keyrings (shared by the whole user namespace), eBPF, performance counters
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    # tracing and reading other processes
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    # kernels and modules
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "get_kernel_syms",
    "query_module",
    # mounts and namespaces, once bubblewrap has made them
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "setns",
    # the machine's state: accounting, swap, reboot, clocks, kernel log, quotas
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "quotactl",
    "quotactl_fd",
    "vhangup",
    "nfsservctl",
    "_sysctl",
    "uselib",
    # files by handle (reach past a bind mount), whole-file-system watches
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    "fanotify_init",
    # raw I/O ports and the x86 local descriptor table
    "iopl",
    "ioperm",
    "modify_ldt",
)
# Tracing one's own processes (strace, gdb): allowed by ``tracing`` (see ``program``).
TRACING = ("ptrace", "process_vm_readv", "process_vm_writev")

# Calls added since Linux 5.1 have one number on every architecture (the unified table).
_UNIFIED = {
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
    "quotactl_fd": 443,
}

# System-call numbers by architecture, for the calls above and those filtered by argument
# (from the kernel's arch/x86/entry/syscalls/syscall_64.tbl and the generic
# include/uapi/asm-generic/unistd.h that aarch64 uses). A call missing from an
# architecture does not exist there.
NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {
        "ioctl": 16,
        "clone": 56,
        "ptrace": 101,
        "syslog": 103,
        "uselib": 134,
        "personality": 135,
        "vhangup": 153,
        "modify_ldt": 154,
        "pivot_root": 155,
        "_sysctl": 156,
        "acct": 163,
        "settimeofday": 164,
        "mount": 165,
        "umount2": 166,
        "swapon": 167,
        "swapoff": 168,
        "reboot": 169,
        "iopl": 172,
        "ioperm": 173,
        "create_module": 174,
        "init_module": 175,
        "delete_module": 176,
        "get_kernel_syms": 177,
        "query_module": 178,
        "quotactl": 179,
        "nfsservctl": 180,
        "lookup_dcookie": 212,
        "clock_settime": 227,
        "kexec_load": 246,
        "add_key": 248,
        "request_key": 249,
        "keyctl": 250,
        "unshare": 272,
        "perf_event_open": 298,
        "fanotify_init": 300,
        "name_to_handle_at": 303,
        "open_by_handle_at": 304,
        "clock_adjtime": 305,
        "setns": 308,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "kcmp": 312,
        "finit_module": 313,
        "kexec_file_load": 320,
        "bpf": 321,
        "userfaultfd": 323,
        **_UNIFIED,
    },
    "aarch64": {
        "lookup_dcookie": 18,
        "ioctl": 29,
        "umount2": 39,
        "mount": 40,
        "pivot_root": 41,
        "nfsservctl": 42,
        "vhangup": 58,
        "quotactl": 60,
        "acct": 89,
        "personality": 92,
        "unshare": 97,
        "kexec_load": 104,
        "init_module": 105,
        "delete_module": 106,
        "clock_settime": 112,
        "syslog": 116,
        "ptrace": 117,
        "reboot": 142,
        "settimeofday": 170,
        "add_key": 217,
        "request_key": 218,
        "keyctl": 219,
        "clone": 220,
        "swapon": 224,
        "swapoff": 225,
        "perf_event_open": 241,
        "fanotify_init": 262,
        "name_to_handle_at": 264,
        "open_by_handle_at": 265,
        "clock_adjtime": 266,
        "setns": 268,
        "process_vm_readv": 270,
        "process_vm_writev": 271,
        "kcmp": 272,
        "finit_module": 273,
        "bpf": 280,
        "userfaultfd": 282,
        "kexec_file_load": 294,
        **_UNIFIED,
    },
}


class UnsupportedArchitecture(Exception):
    """No system-call table for this machine: no filter can be built for it."""


@dataclass(frozen=True)
class Instruction:
    """One ``struct sock_filter``: ``code``, jumps ``jt``/``jf`` when true/false, ``k``."""

    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0

    def encode(self) -> bytes:
        return struct.pack("=HBBI", self.code, self.jt, self.jf, self.k)


def _ret(action: int) -> Instruction:
    return Instruction(RET_K, k=action)


def _deny(number: int = errno.EPERM) -> Instruction:
    return _ret(RET_ERRNO | number)


def _low_word(argument: int) -> Instruction:
    """Load the low 32 bits of argument ``argument`` (little-endian machines only)."""
    return Instruction(LD_W_ABS, k=ARGS + 8 * argument)


def _flags_denied(argument: int, mask: int) -> list[Instruction]:
    """Deny when any bit of ``mask`` is set in the argument; allow otherwise."""
    return [_low_word(argument), Instruction(JSET_K, 0, 1, mask), _deny(), _ret(RET_ALLOW)]


def _values(argument: int, values: tuple[int, ...], *, allowed: bool) -> list[Instruction]:
    """Allow (``allowed``) or deny the listed values of the argument; the other way for
    every other value."""
    count = len(values)
    # The jumps land on the second of the two returns after the comparisons.
    found, other = (_ret(RET_ALLOW), _deny()) if allowed else (_deny(), _ret(RET_ALLOW))
    compare = [Instruction(JEQ_K, count - i, 0, value) for i, value in enumerate(values)]
    return [_low_word(argument), *compare, other, found]


def _rules(
    numbers: dict[str, int], tracing: bool = False
) -> Iterator[tuple[int, list[Instruction]]]:
    """Each filtered call's number and what to do with it (ending in a return)."""
    for name in DENIED:
        if name in numbers and not (tracing and name in TRACING):
            yield numbers[name], [_deny()]
    yield numbers["clone3"], [_deny(errno.ENOSYS)]
    yield numbers["clone"], _flags_denied(0, CLONE_NAMESPACES)
    yield numbers["unshare"], _flags_denied(0, UNSHARE_NAMESPACES)
    yield numbers["personality"], _values(0, PERSONALITIES, allowed=True)
    yield numbers["ioctl"], _values(1, (TIOCSTI, TIOCLINUX), allowed=False)


def instructions(machine: str, *, tracing: bool = False) -> list[Instruction]:
    """The filter for ``machine`` (as ``os.uname().machine`` names it); ``tracing``
    leaves ``ptrace`` and ``process_vm_readv``/``writev`` open."""
    if machine not in NUMBERS:
        raise UnsupportedArchitecture(
            f"no seccomp filter for this machine's architecture ({machine!r}): there is "
            f"one for {', '.join(NUMBERS)}"
        )
    numbers = NUMBERS[machine]
    program = [
        Instruction(LD_W_ABS, k=ARCH),
        Instruction(JEQ_K, 1, 0, AUDIT_ARCH[machine]),
        _ret(RET_KILL_PROCESS),
        Instruction(LD_W_ABS, k=NR),
    ]
    if machine == "x86_64":
        # x32 calls are x86_64's arch with this bit set in the number: another table.
        program += [Instruction(JGE_K, 0, 1, X32_SYSCALL_BIT), _ret(RET_KILL_PROCESS)]
    for number, body in _rules(numbers, tracing):
        # Not this call: skip its body (the accumulator still holds the number).
        program += [Instruction(JEQ_K, 0, len(body), number), *body]
    program.append(_ret(RET_ALLOW))
    assert all(i.jt < 256 and i.jf < 256 for i in program)
    return program


def program(machine: str | None = None, *, tracing: bool = False) -> bytes:
    """The compiled filter (``struct sock_filter`` array) for ``machine``, by default this
    one's; ``UnsupportedArchitecture`` where there is no table.

    ``tracing`` leaves ``ptrace`` and ``process_vm_readv``/``writev`` open, for
    ``strace`` and ``gdb`` in commands: the caller grants it only where the kernel
    re-checks the filter after a tracer changes a call (Linux 4.8, which closed the
    bypass Docker's profile names) and where a command can reach no process but its own
    with them (its own PID namespace, and the Landlock layer, which refuses tracing or
    reading the memory of any process outside the command's domain)."""
    machine = machine or os.uname().machine
    return b"".join(i.encode() for i in instructions(machine, tracing=tracing))


# What bubblewrap's argument vector holds after ``--seccomp`` until the descriptor that
# carries the filter is known (``passed``): bubblewrap refuses to start on it ("Invalid
# fd"), so a way of starting one that forgets the filter fails rather than runs unfiltered.
FD_PLACEHOLDER = "<seccomp-fd>"


def with_fd(argv: list[str], fd: int) -> list[str]:
    """``argv`` with the filter's descriptor placeholder (the first: bubblewrap's options
    come before the command's arguments) replaced by ``fd``."""
    for index in range(len(argv) - 1):
        if argv[index] == "--seccomp" and argv[index + 1] == FD_PLACEHOLDER:
            return [*argv[: index + 1], str(fd), *argv[index + 2 :]]
    raise ValueError("the argument vector has no --seccomp to give a descriptor to")


@contextlib.contextmanager
def passed(
    argv: list[str], filter_program: bytes | None
) -> Iterator[tuple[list[str], tuple[int, ...]]]:
    """``argv`` and the descriptors to pass to it: with ``filter_program``, a pipe's read
    end holding it, named in place of the placeholder (bubblewrap reads it to its end:
    each start needs a fresh one), closed here once the process has started."""
    if filter_program is None:
        if FD_PLACEHOLDER in argv:
            raise ValueError("the argument vector asks for a seccomp filter but has none")
        yield argv, ()
        return
    read, write = os.pipe()  # both ends close-on-exec; the child gets ``read`` by pass_fds
    try:
        # A filter is a few kilobytes, far below a pipe's capacity: this never blocks.
        if os.write(write, filter_program) != len(filter_program):
            raise OSError("the seccomp filter did not fit in a pipe")
        os.close(write)
        write = -1
        yield with_fd(argv, read), (read,)
    finally:
        os.close(read)
        if write != -1:
            os.close(write)
