"""Where a mission's repository is: a local path or a remote URL, checked before use.

The text comes from whoever submitted the mission, so it is read strictly. A local
repository is an absolute path (inside the configured roots, when there are any); a
remote one is an ``https``, ``http``, ``ssh`` or ``git`` URL, or ``user@host:path``. The
broker hands neither to a shell or to the git binary, but a URL still reaches an ``ssh``
process, a remote's path and the logs, so anything that could be read as an option
(a leading ``-``), a second line, a shell expansion or a way out of a directory is
refused with the reason.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

REMOTE_SCHEMES = ("https", "http", "ssh", "git")

_SCP_LIKE = re.compile(r"^(?P<user>[^@/\s]+)@(?P<host>[^:/\s]+):(?P<path>.+)$")
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])$")
_USER = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")
_BAD_PATH_CHARACTER = re.compile(r"[^A-Za-z0-9._~/%+@=,-]")
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class InvalidRepository(ValueError):
    """A repository reference the broker will not use, with the reason for people."""


@dataclass(frozen=True)
class LocalSource:
    """A repository on this machine, by its absolute path."""

    path: str


@dataclass(frozen=True)
class RemoteSource:
    """A repository elsewhere, cloned into the broker's data directory.

    ``url`` is what git clients are given; ``display`` is the URL without credentials,
    for logs and reasons; ``directory`` is the clone's name under the data directory
    (the same for every spelling of the URL's credentials).
    """

    url: str
    display: str
    directory: str


def _problem_in_text(text: str) -> str | None:
    if not text.strip():
        return "no repository was given"
    if text != text.strip():
        return "it starts or ends with white space"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return "it contains a control character (a new line, a tab, …)"
    if text.startswith("-"):
        return "it starts with '-' (it could be read as an option)"
    return None


def parse_repository(text: str, roots: tuple[str, ...] = ()) -> LocalSource | RemoteSource:
    """Read a mission's repository reference, or raise ``InvalidRepository`` (whose
    message never shows a password the reference carried)."""
    try:
        return _parse(text, roots)
    except InvalidRepository as error:
        raise InvalidRepository(redact(str(error))) from None


def _parse(text: str, roots: tuple[str, ...]) -> LocalSource | RemoteSource:
    problem = _problem_in_text(text)
    if problem is not None:
        raise InvalidRepository(f"repository {text!r} is not usable: {problem}")
    if text.startswith("file://"):
        return _local(text.removeprefix("file://"), text, roots)
    scheme = _SCHEME.match(text)
    if scheme is not None:
        if scheme["scheme"].lower() not in REMOTE_SCHEMES:
            raise InvalidRepository(
                f"repository {text!r}: the scheme {scheme['scheme']!r} is not supported "
                f"(use {', '.join(REMOTE_SCHEMES)} or a local path)"
            )
        return _remote_url(text)
    scp = _SCP_LIKE.match(text)
    if scp is not None and not text.startswith("/"):
        return _remote_scp(text, scp["user"], scp["host"], scp["path"])
    return _local(text, text, roots)


def _local(path: str, text: str, roots: tuple[str, ...]) -> LocalSource:
    if not os.path.isabs(path):
        raise InvalidRepository(
            f"repository {text!r} is not an absolute path (give the full path of a local "
            "repository, or a URL)"
        )
    if ".." in path.split("/"):
        raise InvalidRepository(f"repository {text!r} has a '..' component")
    normal = os.path.normpath(path)
    if roots and not any(
        normal == root or normal.startswith(root.rstrip("/") + "/") for root in roots
    ):
        raise InvalidRepository(
            f"repository {text!r} is outside the directories this broker may write to "
            f"({', '.join(roots)})"
        )
    return LocalSource(path=normal)


def _check_path(text: str, path: str) -> None:
    if not path.strip("/"):
        raise InvalidRepository(f"repository {text!r} has no path")
    if ".." in path.split("/"):
        raise InvalidRepository(f"repository {text!r} has a '..' component in its path")
    bad = _BAD_PATH_CHARACTER.search(path)
    if bad is not None:
        raise InvalidRepository(
            f"repository {text!r} contains {bad.group()!r}, which is not allowed in a "
            "repository URL"
        )


def _check_host(text: str, host: str | None, user: str | None) -> str:
    if not host:
        raise InvalidRepository(f"repository {text!r} has no host")
    if host.startswith("-") or not _HOST.match(host):
        raise InvalidRepository(f"repository {text!r} has an invalid host {host!r}")
    if user is not None and not _USER.match(user):
        raise InvalidRepository(f"repository {text!r} has an invalid user name")
    return host


def _remote_url(text: str) -> RemoteSource:
    try:
        parts: SplitResult = urlsplit(text)
        port = parts.port
    except ValueError as error:
        raise InvalidRepository(f"repository {text!r} is not a valid URL: {error}") from None
    if parts.query or parts.fragment:
        raise InvalidRepository(f"repository {text!r} has a query or a fragment")
    scheme = parts.scheme.lower()
    # A password is a token for http(s) and only there; ssh and git take none.
    if parts.password is not None and scheme not in ("https", "http"):
        raise InvalidRepository(f"repository {text!r} carries a password in a {scheme} URL")
    user = parts.username if scheme in ("ssh", "git") else None
    host = _check_host(text, parts.hostname, user)
    _check_path(text, parts.path)
    netloc = host if port is None else f"{host}:{port}"
    if parts.username is not None and scheme in ("ssh", "git"):
        netloc = f"{parts.username}@{netloc}"
    display = f"{scheme}://{netloc}{parts.path}"
    return RemoteSource(url=text, display=display, directory=_directory(display))


def _remote_scp(text: str, user: str, host: str, path: str) -> RemoteSource:
    _check_host(text, host, user)
    _check_path(text, path)
    display = f"{user}@{host}:{path}"
    return RemoteSource(url=text, display=display, directory=_directory(display))


def _directory(display: str) -> str:
    """A directory name for a clone: readable, and unique per URL."""
    base = posixpath.basename(display.rstrip("/")).removesuffix(".git") or "repository"
    digest = hashlib.sha256(display.encode()).hexdigest()[:12]
    return f"{_NAME.sub('-', base)[:40]}-{digest}"


def redact(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ``***``."""
    return re.sub(
        r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):[^@/\s]*@",
        r"\g<scheme>\g<user>:***@",
        text,
    )
