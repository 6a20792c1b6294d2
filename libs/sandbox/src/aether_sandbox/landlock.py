"""The Landlock layer of every bubblewrap sandbox: what its commands may reach, said to
the kernel a second time.

bubblewrap confines by what it mounts; Landlock confines by what a process may do with
the files and ports it can name, whatever is mounted. Inside each sandbox, before the
command starts (``confine.py``: a cold sandbox's first program, or the kept sandbox's
init for each command it forks), a ruleset is applied that allows:

- reading and executing the trees the sandbox shows read-only (``Policy.read``), and
  listing directories from the root down (so ``ls /`` and ``find /`` work; a file's
  contents stay out of reach unless a rule covers it);
- everything but making device nodes in the trees it may write (``Policy.write``: the
  worktree, its home when it has one, the private ``/tmp``), and on top, device ioctls
  in ``/dev``;
- no network but loopback: where the sandbox has a network namespace of its own (every
  sandbox but one given the host's network), ``confine.py`` checks that it holds no
  interface but ``lo`` before the command starts, and starts nothing otherwise (a
  namespace left shared by mistake). Landlock's TCP rules (ABI 4) name ports, not
  addresses, so they would also refuse a test suite's server on its own loopback: the
  check holds the host's network out instead, and TCP is left to the namespace;
- no connection to an abstract unix socket and no signal to a process outside the
  command's own domain (ABI 6).

``Policy`` is built by ``Bubblewrap.landlock_policy`` from the same lists its mounts come
from. The ruleset uses only the rights the running kernel's ABI knows (the "best effort"
pattern): a newer right the kernel lacks is simply not handled, so it stays as open as
without Landlock. ABI 1 cannot allow renaming or linking a file into another directory
(``REFER``, ABI 2), which git and every build do: there the layer counts as missing.

``AETHER_SANDBOX_LANDLOCK``: ``auto`` applies it when the kernel has it, ``required``
starts no sandbox without it, ``off`` never applies it (warned of).
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from aether_sandbox import confine

MINIMUM_ABI = 2
CREATE_RULESET_VERSION = 1

# File-system rights (linux/landlock.h), by the ABI that added them.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
# Scopes (ABI 6).
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

READ = EXECUTE | READ_FILE | READ_DIR


def fs_rights(abi: int) -> int:
    """The file-system rights ABI ``abi`` knows."""
    if abi < 1:
        return 0
    rights = (MAKE_SYM << 1) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def scopes(abi: int) -> int:
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


_abi: int | None = None


def kernel_abi() -> int:
    """The Landlock ABI of the running kernel (0: none, or disabled), asked once."""
    global _abi
    if _abi is None:
        _abi = _probe()
    return _abi


def _probe() -> int:
    if os.uname().machine not in ("x86_64", "aarch64"):
        return 0  # the system-call numbers below are those two machines'
    libc = ctypes.CDLL(None, use_errno=True)
    version = int(
        libc.syscall(
            ctypes.c_long(confine.CREATE_RULESET),
            None,
            ctypes.c_long(0),
            ctypes.c_long(CREATE_RULESET_VERSION),
        )
    )
    return max(version, 0)  # -1: ENOSYS (not built in) or EOPNOTSUPP (not enabled)


def missing(abi: int) -> str | None:
    """Why the layer cannot be applied with ABI ``abi``, or ``None`` when it can."""
    if abi < 1:
        return "this kernel has no Landlock (Linux 5.13 or later, with lsm=landlock)"
    if abi < MINIMUM_ABI:
        return (
            "this kernel's Landlock (ABI 1) cannot allow renaming a file into another "
            "directory, which git and builds do (ABI 2, Linux 5.19)"
        )
    return None


@dataclass(frozen=True)
class Policy:
    """What a sandbox's commands may reach, by the paths they see: ``read`` (read and
    execute), ``write`` (everything but device nodes), ``devices`` (as ``write``, plus
    device ioctls); ``lone_loopback``: whether the sandbox's network namespace is its own
    and must hold nothing but loopback (not when it is given the host's network)."""

    read: tuple[Path, ...]
    write: tuple[Path, ...]
    devices: tuple[Path, ...] = (Path("/dev"),)
    lone_loopback: bool = True

    def words(self, abi: int) -> list[str]:
        """The ruleset as ``confine.py`` takes it, with the rights ABI ``abi`` knows."""
        known = fs_rights(abi)
        writes = known & ~(MAKE_CHAR | MAKE_BLOCK | IOCTL_DEV)
        # No network right is handled (see the module): the second word stays 0.
        words = [str(known), "0", str(scopes(abi)), "p", str(READ_DIR), "/"]
        rules = [
            *((path, READ) for path in self.read),
            *((path, writes) for path in self.write),
            *((path, writes | (known & IOCTL_DEV)) for path in self.devices),
        ]
        for path, rights in rules:
            words += ["p", str(rights & known), str(path)]
        if self.lone_loopback:
            words += ["l", "0", "lo"]
        return words


CONFINE_SOURCE = Path(confine.__file__).read_text() + "\nmain(sys.argv[1:])\n"


def wrapper(policy: Policy, abi: int, env: dict[str, str], *, mode: str = "exec") -> list[str]:
    """The argument vector that applies ``policy`` inside the sandbox and then starts
    what follows it (``env``: the program's environment, whose ``LC_CTYPE`` the
    interpreter may change for itself)."""
    ctype = env.get("LC_CTYPE", "-")
    return [
        sys.executable,
        "-I",
        "-S",
        "-c",
        CONFINE_SOURCE,
        mode,
        ctype,
        *policy.words(abi),
        "--",
    ]
