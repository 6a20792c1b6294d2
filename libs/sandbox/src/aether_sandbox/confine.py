"""Inside a bubblewrap sandbox: apply a Landlock ruleset, then start the program.

Passed as source (``python -I -S -c <this file> MODE RULESET... -- PROGRAM...``: standard
library only, and only ``os``, ``sys`` and ``ctypes``, so that it adds little more than
the interpreter's own start). ``landlock.py`` builds the arguments from the sandbox's
layout for the kernel's Landlock ABI; this file only hands them to the kernel.

``MODE``: ``exec`` restricts this process (no new privileges, then
``landlock_restrict_self``) and execs the program, which carries the restriction to
everything it starts; ``pass`` builds the ruleset without restricting itself and execs
the program with the ruleset's descriptor in place of the argument ``{landlock-fd}``:
the kept sandbox's init, which restricts each command it forks. Then ``LC_CTYPE``'s
value for the program (``-`` for none: the interpreter may have set one for itself),
the handled file-system rights, the handled network rights, the scopes, and the rules:
``p RIGHTS PATH`` (rights beneath a path; a path that cannot be opened in the sandbox
is left out) and ``l 0 lo``: the sandbox's network namespace must hold no interface but
loopback.

Whatever goes wrong, the program is not started (exit code 126, the reason on stderr):
never without the restriction the runner asked for.
"""

import ctypes
import os
import sys

CREATE_RULESET, ADD_RULE, RESTRICT_SELF = 444, 445, 446  # x86_64 and aarch64 alike
RULE_PATH_BENEATH = 1
# The rights that apply to a file that is not a directory: EXECUTE, WRITE_FILE,
# READ_FILE, TRUNCATE and IOCTL_DEV (the kernel refuses a rule on one with any other).
FILE_RIGHTS = 1 | 2 | 4 | 1 << 14 | 1 << 15
PR_SET_NO_NEW_PRIVS = 38
FD_PLACEHOLDER = "{landlock-fd}"
_libc = ctypes.CDLL(None, use_errno=True)


def _call(number: int, *args: int | bytes | None) -> int:
    """syscall(2) with every argument as a C long (or a pointer); ``OSError`` on -1."""
    values = [arg if isinstance(arg, bytes) or arg is None else ctypes.c_long(arg) for arg in args]
    result = int(_libc.syscall(ctypes.c_long(number), *values))
    if result == -1:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return result


def _u64(value: int) -> bytes:
    return int(value).to_bytes(8, "little")


def build(words: list[str]) -> int:
    """The ruleset ``words`` describe (see the module), as a descriptor."""
    handled_fs, handled_net, scoped = int(words[0]), int(words[1]), int(words[2])
    attr = _u64(handled_fs)
    if handled_net or scoped:
        attr += _u64(handled_net)
    if scoped:
        attr += _u64(scoped)
    ruleset = _call(CREATE_RULESET, attr, len(attr), 0)
    os.set_inheritable(ruleset, False)
    index = 3
    while index < len(words):
        kind, rights, target = words[index], int(words[index + 1]), words[index + 2]
        index += 3
        if kind == "p":
            try:
                parent = os.open(target, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                # Not shown in this sandbox (a bind of a path that may be absent), or not
                # to be reached: a rule left out only ever allows less.
                continue
            try:
                if os.fstat(parent).st_mode & 0o170000 != 0o040000:
                    rights &= FILE_RIGHTS
                # struct landlock_path_beneath_attr (packed): __u64 access; __s32 fd.
                rule = _u64(rights) + parent.to_bytes(4, "little", signed=True)
                _call(ADD_RULE, ruleset, RULE_PATH_BENEATH, rule, 0)
            finally:
                os.close(parent)
        elif kind == "l":
            only_loopback(target)
        else:
            raise ValueError(f"no such rule: {kind}")
    return ruleset


def only_loopback(name: str) -> None:
    """Refuse (``ValueError``) a network namespace holding any interface but ``name``:
    one left shared with the host by mistake."""
    with open("/proc/self/net/dev") as listing:
        names = [line.split(":", 1)[0].strip() for line in listing.readlines()[2:]]
    others = [each for each in names if each and each != name]
    if others:
        raise ValueError(
            f"the sandbox's network is not its own (it has {', '.join(sorted(others))} "
            f"besides {name})"
        )


def restrict(ruleset: int) -> None:
    """Restrict this thread (and what it execs and forks) to ``ruleset``, for good."""
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    _call(RESTRICT_SELF, ruleset, 0)


def main(argv: list[str]) -> None:
    end = argv.index("--")
    mode, ctype, words, program = argv[0], argv[1], argv[2:end], argv[end + 1 :]
    try:
        ruleset = build(words)
        if mode == "exec":
            restrict(ruleset)
            os.close(ruleset)
        else:
            os.set_inheritable(ruleset, True)
            program = [str(ruleset) if arg == FD_PLACEHOLDER else arg for arg in program]
    except (OSError, ValueError, IndexError) as error:
        sys.stderr.write(f"aether sandbox: not started: {error}\n")
        sys.stderr.flush()
        os._exit(126)
    if ctype == "-":
        os.environ.pop("LC_CTYPE", None)
    else:
        os.environ["LC_CTYPE"] = ctype
    try:
        os.execvp(program[0], program)  # noqa: S606 - the sandbox's program, without a shell
    except OSError as error:
        # As bubblewrap words it (callers recognise a program missing in the sandbox by it).
        sys.stderr.write(f"bwrap: execvp {program[0]}: {os.strerror(error.errno or 0)}\n")
        sys.stderr.flush()
        os._exit(1)
