"""The init of a warm sandbox: PID 1 of a kept bubblewrap, running one command at a time.

It is started (standard library only, ``python -I -S -c <this file> FD``) as the first and
only process of a bubblewrap with ``--as-pid-1``, and speaks to the runner over the unix
socket ``FD`` (one JSON message per packet, file descriptors alongside):

- ``{"op": "join"}`` with the ``cgroup.procs`` files of the sandbox's cgroup(s): it moves
  itself in, once, so that every command is born there;
- ``{"op": "run", argv, env, cwd, dirs, rlimits}`` with the write end of the command's
  output pipe: it forks; the child starts a session and a session keyring, offers itself
  first to the OOM killer, takes the rlimits, restricts itself to the Landlock ruleset
  it was handed (``--landlock FD``, built by ``confine.py`` before this init started),
  points stdout and stderr at the pipe and execs the command. Once that first process
  exits (or on ``{"op": "kill"}``) every other process of the PID namespace is killed
  (``kill(-1)`` from PID 1 reaches all of them, however they detached) and reaped,
  ``/tmp`` and ``/dev/shm`` are emptied and their modes and extended attributes reset,
  and System V IPC objects are removed; then it answers
  ``{"exit": status, "errno": …, "clean": bool}``.

It is not dumpable, so nothing in the sandbox can trace it or read its ``/proc`` entries;
it installs no signal handler, so no signal sent from inside the namespace reaches it. A
message it cannot read, or the runner closing the socket, ends it, and with it the
namespace and everything in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import select
import signal
import socket
import sys

SCRUBBED = ("/tmp", "/dev/shm")  # noqa: S108 - the sandbox's own tmpfs and /dev
IPC_RMID = 0
PR_SET_DUMPABLE = 4
MAX_MESSAGE = 4 << 20
PROXY_PORT = 3128  # where commands find the egress proxy (egress.INSIDE_PORT)
MAX_FDS = 8
# keyctl(2), by architecture (the C library has no wrapper): keys live in keyrings of the
# user namespace, which a kept sandbox shares between its commands.
KEYCTL = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_CLEAR, KEYCTL_GET_PERSISTENT = 1, 7, 22
SESSION_KEYRING, USER_KEYRING, USER_SESSION_KEYRING = -3, -4, -5
# No keys to isolate or clear: none in the kernel, or keyctl denied to everything in the
# sandbox (its seccomp filter answers EPERM, to the commands as to this init).
NO_KEYS = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOKEY, errno.EPERM)
PR_SET_NO_NEW_PRIVS = 38
PTRACE_DETACH = 17
STOP_CHECK_SECONDS = 0.5
LANDLOCK_RESTRICT_SELF = 446  # x86_64 and aarch64 alike


def main(control_fd: int, egress: str | None, landlock: int | None = None) -> None:
    os.set_inheritable(control_fd, False)
    if landlock is not None:
        os.set_inheritable(landlock, False)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the one handler Python installs
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    control = socket.socket(fileno=control_fd)
    modes = {path: os.stat(path).st_mode & 0o7777 for path in SCRUBBED if os.path.isdir(path)}
    relay = _Relay(egress) if egress else None
    if KEYCTL is None:
        _send(control, {"ready": False, "why": f"no keyctl number for {os.uname().machine}"})
        return
    _send(control, {"ready": True, "pid": os.getpid()})
    while True:
        message, fds = _receive(control)
        if message is None:
            return
        if message.get("op") == "join":
            _send(control, _join(fds))
        elif message.get("op") == "run" and fds:
            _send(control, _run(control, message, fds, libc, modes, relay, landlock))
        else:
            for fd in fds:
                os.close(fd)


def _join(procs: list[int]) -> dict[str, object]:
    """Move into the sandbox's cgroup(s): the commands are then born in them (moving a
    process between cgroups costs milliseconds; forking inside one costs nothing)."""
    try:
        for fd in procs:
            os.write(fd, b"0")
    except OSError as error:
        return {"joined": False, "why": str(error)}
    finally:
        for fd in procs:
            os.close(fd)
    return {"joined": True}


def _receive(control: socket.socket) -> tuple[dict[str, object] | None, list[int]]:
    try:
        data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
    except OSError:
        return None, []
    if not data:
        return None, fds
    try:
        message = json.loads(data)
    except ValueError:
        return None, fds
    return (message if isinstance(message, dict) else None), fds


def _send(control: socket.socket, message: dict[str, object]) -> None:
    control.sendall(json.dumps(message).encode())


def _run(
    control: socket.socket,
    message: dict[str, object],
    fds: list[int],
    libc: ctypes.CDLL,
    modes: dict[str, int],
    relay: _Relay | None,
    landlock: int | None,
) -> dict[str, object]:
    output = fds[0]
    for unexpected in fds[1:]:
        os.close(unexpected)
    for directory in message.get("dirs") or []:  # type: ignore[attr-defined]
        os.makedirs(str(directory), mode=0o755, exist_ok=True)
    error_read, error_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(message, output, error_write, libc, landlock)
    os.close(output)
    os.close(error_write)
    failed = _read_all(error_read)
    os.close(error_read)
    status: int | None = None
    handle = os.pidfd_open(pid)
    try:
        while status is None:
            readers = [control.fileno(), handle, *(relay.readers() if relay else [])]
            writers = relay.writers() if relay else []
            # Not only its exit: a ptrace stop of a command that made this init its
            # tracer is seen only by looking (``_reap``), which this timeout does.
            ready, writable, _ = select.select(readers, writers, [], STOP_CHECK_SECONDS)
            if relay is not None:
                relay.serve(ready, writable)
            if control.fileno() in ready:
                order, passed = _receive(control)
                for unexpected in passed:
                    os.close(unexpected)
                if order is None:
                    _kill_all(pid)
                    sys.exit(0)
                if order.get("op") == "kill":
                    status = _kill_all(pid)
                    break
            status = _reap(pid)
    finally:
        os.close(handle)
        if relay is not None:
            relay.drop()  # every connection was the command's
    _kill_all(pid)
    assert status is not None
    reply: dict[str, object] = {"exit": os.waitstatus_to_exitcode(status)}
    if failed:
        reply.update(json.loads(failed))
    try:
        _scrub(libc, modes)
    except (OSError, RecursionError) as error:
        reply.update(clean=False, why=str(error))
    else:
        reply["clean"] = True
    return reply


def _child(
    message: dict[str, object], output: int, error: int, libc: ctypes.CDLL, landlock: int | None
) -> None:
    """Between fork and exec: never returns."""
    try:
        os.setsid()
        _keyctl(libc, KEYCTL_JOIN_SESSION_KEYRING, 0)  # a session keyring of its own
        # Its processes, not this one, are what the kernel kills first out of memory.
        with open("/proc/self/oom_score_adj", "w") as adjust:
            adjust.write("1000")
        for kind, soft, hard in message["rlimits"]:  # type: ignore[attr-defined]
            resource.setrlimit(int(kind), (int(soft), int(hard)))
        if landlock is not None:
            _restrict(libc, landlock)
        for number in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(number, signal.SIG_DFL)
        stdin = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.chdir(str(message["cwd"]))
        argv = [str(arg) for arg in message["argv"]]  # type: ignore[attr-defined]
        env = {str(k): str(v) for k, v in message["env"].items()}  # type: ignore[attr-defined]
        os.execvpe(argv[0], argv, env)  # noqa: S606 - the command, run without a shell
    except OSError as failure:
        report = {"errno": failure.errno or 0, "error": failure.strerror or str(failure)}
        os.write(error, json.dumps(report).encode())
    except BaseException:  # noqa: S110 - nothing to report to but the exit code
        pass
    os._exit(127)


def _restrict(libc: ctypes.CDLL, ruleset: int) -> None:
    """Restrict this process, and what it execs and forks, to the Landlock ruleset: in a
    domain of its own, outside of which it can signal no process (this init included)."""
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or (
        libc.syscall(ctypes.c_long(LANDLOCK_RESTRICT_SELF), ctypes.c_long(ruleset), 0) != 0
    ):
        number = ctypes.get_errno()
        raise OSError(number, f"cannot apply the Landlock ruleset: {os.strerror(number)}")


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _reap(pid: int) -> int | None:
    """Collect every process that has exited (orphans are PID 1's); the wait status of
    ``pid`` if it was one of them."""
    status = None
    while True:
        try:
            found, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if found == 0:
            return status
        if os.WIFSTOPPED(code):
            _let_go(found, code)
        elif found == pid:
            status = code


def _kill_all(pid: int) -> int | None:
    """SIGKILL every process of the namespace but this one, until none is left; the wait
    status of ``pid`` if it was collected here."""
    status = None
    while True:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        try:
            found, code = os.waitpid(-1, 0)
        except ChildProcessError:
            return status
        if os.WIFSTOPPED(code):
            _let_go(found, code)
        elif found == pid:
            status = code


def _let_go(pid: int, status: int) -> None:
    """A command that made this init its tracer (``PTRACE_TRACEME`` in its first
    process, where the filter allows tracing) is stopped, waiting on a debugger there is
    not: let it go on, with the signal it stopped for (not the trap of an ``exec``, which
    it would not have had untraced)."""
    stopped = os.WSTOPSIG(status)
    passed = 0 if stopped == signal.SIGTRAP else stopped
    ctypes.CDLL(None, use_errno=True).ptrace(PTRACE_DETACH, pid, None, ctypes.c_void_p(passed))


def _scrub(libc: ctypes.CDLL, modes: dict[str, int]) -> None:
    """Leave nothing of the last command for the next one outside the worktree."""
    for root, mode in modes.items():
        os.chmod(root, 0o700)
        _empty(root, os.lstat(root).st_dev)
        for name in os.listxattr(root, follow_symlinks=False):
            os.removexattr(root, name, follow_symlinks=False)
        os.chmod(root, mode)
    persistent = _keyctl(libc, KEYCTL_GET_PERSISTENT, -1, SESSION_KEYRING, check=False)
    for keyring in (USER_KEYRING, USER_SESSION_KEYRING, persistent):
        if keyring != -1:
            _keyctl(libc, KEYCTL_CLEAR, keyring)
    for kind, remove in (("shm", libc.shmctl), ("msg", libc.msgctl)):
        for ident in _ipc_ids(kind):
            if remove(ident, IPC_RMID, None) != 0:
                raise OSError(ctypes.get_errno(), f"cannot remove a System V {kind} object")
    for ident in _ipc_ids("sem"):
        if libc.semctl(ident, 0, IPC_RMID) != 0:
            raise OSError(ctypes.get_errno(), "cannot remove a System V semaphore set")


def _keyctl(libc: ctypes.CDLL, operation: int, *args: int, check: bool = True) -> int:
    """keyctl(2); ``OSError`` on failure (when ``check``) unless keys are not supported."""
    assert KEYCTL is not None
    result = int(libc.syscall(KEYCTL, ctypes.c_long(operation), *map(ctypes.c_long, args)))
    if result == -1 and check and ctypes.get_errno() not in NO_KEYS:
        number = ctypes.get_errno()
        raise OSError(number, f"keyctl {operation}: {os.strerror(number)}")
    return result


def _empty(directory: str, device: int) -> bool:
    """Delete everything under ``directory`` that lies on ``device`` (its owner may open
    any of it up first); a mount point (the worktree, when it lies under ``/tmp``) and the
    directories leading to it stay, never entered. Whether anything stayed."""
    kept = False
    with os.scandir(directory) as entries:
        found = list(entries)
    for entry in found:
        info = entry.stat(follow_symlinks=False)
        if info.st_dev != device:
            kept = True
        elif entry.is_dir(follow_symlinks=False):
            os.chmod(entry.path, 0o700)
            if _empty(entry.path, device):
                kept = True
                os.chmod(entry.path, 0o755)  # noqa: S103 - as bubblewrap made it
                for name in os.listxattr(entry.path, follow_symlinks=False):
                    os.removexattr(entry.path, name, follow_symlinks=False)
            else:
                os.rmdir(entry.path)
        else:
            os.unlink(entry.path)
    return kept


def _ipc_ids(kind: str) -> list[int]:
    try:
        with open(f"/proc/sysvipc/{kind}") as table:
            rows = table.read().splitlines()[1:]
    except FileNotFoundError:
        return []
    return [int(row.split()[1]) for row in rows if row.strip()]


class _Relay:
    """Connections to ``127.0.0.1:PROXY_PORT`` in the sandbox, each copied both ways to a
    new connection to the runner's egress proxy (a unix socket mounted in): the network
    namespace stays empty, and the proxy decides where a connection may go."""

    def __init__(self, proxy: str) -> None:
        self.proxy = proxy
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", PROXY_PORT))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.peer: dict[int, socket.socket] = {}  # fd -> the socket its bytes go to
        self.sockets: dict[int, socket.socket] = {}
        self.pending: dict[int, bytes] = {}  # fd -> bytes waiting to be written to it
        self.ended: set[int] = set()  # fds that have said all they will say

    def readers(self) -> list[int]:
        """The listener, and every socket whose peer has nothing waiting (backpressure)."""
        return [self.listener.fileno()] + [
            fd
            for fd, peer in self.peer.items()
            if fd not in self.ended and not self.pending.get(peer.fileno())
        ]

    def writers(self) -> list[int]:
        return [fd for fd, data in self.pending.items() if data]

    def serve(self, readable: list[int], writable: list[int]) -> None:
        for fd in writable:
            if fd in self.sockets:
                self._write(fd)
        for fd in readable:
            if fd == self.listener.fileno():
                self._accept()
            elif fd in self.sockets:
                self._read(fd)

    def _accept(self) -> None:
        try:
            inside, _ = self.listener.accept()
        except OSError:
            return
        outside = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            outside.connect(self.proxy)
        except OSError:
            inside.close()
            outside.close()
            return
        for one, other in ((inside, outside), (outside, inside)):
            one.setblocking(False)
            self.sockets[one.fileno()] = one
            self.peer[one.fileno()] = other

    def _read(self, fd: int) -> None:
        try:
            data = self.sockets[fd].recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        peer = self.peer[fd].fileno()
        if data:
            self.pending[peer] = self.pending.get(peer, b"") + data
            self._write(peer)
        else:
            self.ended.add(fd)
            self._settle(fd)

    def _write(self, fd: int) -> None:
        data = self.pending.get(fd, b"")
        try:
            sent = self.sockets[fd].send(data) if data else 0
        except BlockingIOError:
            return
        except OSError:
            self._close(fd)
            return
        self.pending[fd] = data[sent:]
        if not self.pending[fd]:
            self._settle(self.peer[fd].fileno())

    def _settle(self, fd: int) -> None:
        """Pass on an end of input once what came before it is written; close the pair
        once both sides have ended."""
        if fd not in self.sockets:
            return
        peer = self.peer[fd].fileno()
        if fd in self.ended and not self.pending.get(peer):
            with contextlib.suppress(OSError):
                self.sockets[peer].shutdown(socket.SHUT_WR)
            if peer in self.ended and not self.pending.get(fd):
                self._close(fd)

    def _close(self, fd: int) -> None:
        if fd not in self.sockets:
            return
        peer = self.peer[fd].fileno()
        for one in (fd, peer):
            connection = self.sockets.pop(one, None)
            self.peer.pop(one, None)
            self.pending.pop(one, None)
            self.ended.discard(one)
            if connection is not None:
                connection.close()

    def drop(self) -> None:
        for fd in list(self.sockets):
            self._close(fd)


if __name__ == "__main__":
    # CONTROL_FD [--landlock RULESET_FD] [EGRESS_SOCKET]
    arguments = sys.argv[1:]
    ruleset = None
    if arguments[1:2] == ["--landlock"]:
        ruleset = int(arguments[2])
        del arguments[1:3]
    main(int(arguments[0]), arguments[1] if len(arguments) > 1 else None, ruleset)
