"""Typed settings read from the environment: the one way every service declares them.

A settings class is a frozen ``msgspec.Struct`` deriving from ``EnvSettings``; each
setting is one field, declared once with its variable's name, its type and its default::

    class RuntimeSettings(EnvSettings, frozen=True, kw_only=True):
        loop_stall_seconds: NonNegative = setting("AETHER_LOOP_STALL_SECONDS", 60.0)

``from_env`` converts each variable to its field's type with msgspec (an unset or blank
variable keeps the default) and names the variable when a value does not convert. A type
annotated with ``Env(...)`` says how its text is read when that is not msgspec's plain
conversion: a list split on commas, a value that may be ``none``, a secret that may come
from a file. A field declared without a variable (a nested part, such as ``runtime``) is
given by the class's own ``from_env``.
"""

from __future__ import annotations

import os
import ssl
import sys
import typing
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NoReturn, Self, TypeVar

import msgspec

from aether_events.streams import TELEMETRY_MAX_AGE_SECONDS, TELEMETRY_MAX_BYTES, StreamSettings

ENV = Mapping[str, str]


class SettingsError(ValueError):
    """A setting a service cannot start with; the message names the variable."""


@dataclass(frozen=True)
class Env:
    """How a variable's text becomes its field's value, when not by plain conversion.

    ``parse`` turns the text into a value (then checked against the field's type);
    ``file`` names a second variable holding the path of a file whose first line is the
    value (a mounted secret), read when the variable itself is unset; ``keep_empty``
    makes a blank value a value rather than "unset".
    """

    parse: Callable[[str], object] | None = None
    file: str | None = None
    keep_empty: bool = False


def setting(name: str, default: Any = msgspec.NODEFAULT, *, factory: Any = None) -> Any:
    """A field read from the variable ``name``, with its default (or a default ``factory``)."""
    if factory is not None:
        return msgspec.field(name=name, default_factory=factory)
    return msgspec.field(name=name, default=default)


# --- readers for the shapes of text settings take ----------------------------------


def flag(raw: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` (any case)."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected one of 1, true, yes, on, 0, false, no, off")


def names(raw: str) -> tuple[str, ...]:
    """Names separated by commas or white space."""
    return tuple(raw.replace(",", " ").split())


def path_list(raw: str) -> tuple[str, ...]:
    """Paths separated by ``:`` (``os.pathsep``), each with ``~`` expanded."""
    return tuple(os.path.normpath(os.path.expanduser(p)) for p in raw.split(os.pathsep) if p)


def lines(raw: str) -> tuple[str, ...]:
    """One value a line (for values that may hold commas, such as patterns)."""
    return tuple(line.strip() for line in raw.splitlines() if line.strip())


def directory(raw: str) -> Path:
    """A directory, ``~`` expanded and made absolute."""
    return Path(raw.strip()).expanduser().resolve()


def none_or(
    parse: Callable[[str], Any], *, words: Iterable[str] = ("none",)
) -> Callable[[str], Any]:
    """``parse``, except that one of ``words`` (any case) means ``None``."""
    nones = frozenset(words)

    def read(raw: str) -> Any:
        return None if raw.strip().lower() in nones else parse(raw.strip())

    return read


def url(*schemes: str, several: bool = False) -> Callable[[str], str]:
    """A URL with one of ``schemes`` (the first is assumed when it names none, as the
    NATS client does) and a host; ``several``: comma-separated URLs."""

    def read(raw: str) -> str:
        for part in raw.split(",") if several else [raw]:
            part = part.strip()
            if several and "://" not in part:
                part = f"{schemes[0]}://{part}"
            parsed = urllib.parse.urlsplit(part)
            if parsed.scheme.lower() not in schemes or not parsed.hostname:
                *others, last = (f"{scheme}://" for scheme in schemes)
                wanted = f"{', '.join(others)} or {last}" if others else last
                raise ValueError(f"expected a {wanted} URL with a host")
            parsed.port  # noqa: B018 - ValueError on a port that is not a number
        return raw.strip()

    return read


Names = Annotated[tuple[str, ...], Env(parse=names)]
Flag = Annotated[bool, Env(parse=flag)]
HttpUrl = Annotated[str, Env(parse=url("http", "https"))]
# Bounds a value must keep: msgspec checks them as it converts the variable's text, so a
# negative count or a zero timeout stops the service at start instead of misbehaving.
Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
# 0: a free port the system chooses.
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]

# The exit status of a service refused for its settings (``EX_CONFIG`` of sysexits.h).
EXIT_CONFIG = 78
T = TypeVar("T")


def settings_or_exit(read: Callable[[], T], service: str) -> T:
    """The settings ``read`` makes; when a variable's value is unusable, one line on
    standard error saying which and what is wanted, and exit ``EXIT_CONFIG``: a bad
    setting is the operator's to fix, not a crash to report with a traceback."""
    try:
        settings = read()
        runtime = getattr(settings, "runtime", None)
        if isinstance(runtime, RuntimeSettings):
            # Whether the service may hold the event id secret, or must (decision 0031).
            from aether_runtime.event_ids import key_for  # it imports this module

            key_for(service, runtime)
        return settings
    except ValueError as error:  # SettingsError, and the checks of the settings' parts
        refuse(service, str(error))


def refuse(service: str, reason: str) -> NoReturn:
    """Stop ``service`` at start for a setting it cannot run with."""
    sys.stderr.write(f"{service}: cannot start: {reason}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_CONFIG)


# --- the base ----------------------------------------------------------------------


class EnvSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Settings declared with ``setting`` fields and read by ``from_env``."""

    @classmethod
    def declared(cls) -> dict[str, str]:
        """Each variable this class reads (its own fields'), to the field it fills."""
        declared: dict[str, str] = {}
        for field in msgspec.structs.fields(cls):
            if field.encode_name != field.name:
                declared[field.encode_name] = field.name
                marker = _marker(cls, field.name)
                if marker is not None and marker.file is not None:
                    declared[marker.file] = field.name
        return declared

    @classmethod
    def value_of(cls, name: str, env: ENV | None = None) -> Any:
        """One field's value as ``from_env`` reads it (its default when unset), without
        reading or checking the others."""
        env = os.environ if env is None else env
        for field in msgspec.structs.fields(cls):
            if field.name == name and field.encode_name != name:
                raw = _raw(env, field.encode_name, _marker(cls, name) or Env())
                if raw is None:
                    return (
                        field.default_factory()
                        if field.default is msgspec.NODEFAULT
                        else field.default
                    )
                return _convert(field.encode_name, raw, field.type, _marker(cls, name) or Env())
        raise KeyError(f"{cls.__name__} reads no variable into {name!r}")

    @classmethod
    def load(
        cls,
        env: ENV | None = None,
        *,
        defaults: Mapping[str, Any] | None = None,
        **given: Any,
    ) -> Self:
        """The settings from ``env`` (default: the process environment).

        ``defaults`` replaces declared defaults by field name (a service's own port);
        ``given`` fills the fields read from no variable (nested parts).
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            if field.encode_name == field.name or field.name in given:
                continue
            marker = _marker(cls, field.name) or Env()
            raw = _raw(env, field.encode_name, marker)
            if raw is not None:
                values[field.name] = _convert(field.encode_name, raw, field.type, marker)
            elif defaults is not None and field.name in defaults:
                values[field.name] = defaults[field.name]
        return cls(**values, **given)

    @classmethod
    def from_env(cls, env: ENV | None = None) -> Self:
        """The settings from the environment (a class with nested parts overrides this)."""
        return cls.load(env)


def _raw(env: ENV, name: str, marker: Env) -> str | None:
    """The text of ``name``: ``None`` when unset or blank (unless blank is a value), else
    the file ``marker.file`` names when there is one."""
    raw = env.get(name)
    if raw is not None and not raw.strip() and not marker.keep_empty:
        raw = None
    if raw is None and marker.file is not None and env.get(marker.file, "").strip():
        raw = _first_line(env[marker.file], marker.file)
    return raw


def _marker(cls: type[EnvSettings], name: str) -> Env | None:
    hint = _hints(cls).get(name)
    # The marker of ``Annotated[T, Env(...)]``, alone or in a union (``... | None``).
    for part in (hint, *typing.get_args(hint)):
        for meta in getattr(part, "__metadata__", ()):
            if isinstance(meta, Env):
                return meta
    return None


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls, include_extras=True)
    return _HINTS[cls]


def _convert(name: str, raw: str, kind: Any, marker: Env) -> Any:
    try:
        value: Any = marker.parse(raw) if marker.parse is not None else raw.strip()
        if kind is bool or kind == bool | None:
            value = flag(value) if isinstance(value, str) else value
        return msgspec.convert(value, kind, strict=False, dec_hook=_dec_hook)
    except (ValueError, TypeError, OSError, msgspec.MsgspecError) as error:
        reason = str(error).split(" - at ")[0].replace(", got `str`", "")
        plain = typing.get_args(kind)[0] if typing.get_origin(kind) is Annotated else kind
        if typing.get_origin(plain) is Literal:
            *others, last = map(str, typing.get_args(plain))
            reason = f"expected {', '.join(others)} or {last}" if others else f"expected {last}"
        raise SettingsError(f"{name}={raw!r} is not valid: {reason}") from error


def _dec_hook(kind: Any, value: Any) -> Any:
    if isinstance(kind, type) and isinstance(value, kind):
        return value
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError


def _first_line(path: str, name: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise SettingsError(f"{name}={path!r} cannot be read: {error.strerror}") from error


# --- what every service reads --------------------------------------------------------


class RuntimeSettings(EnvSettings, frozen=True, kw_only=True):
    """NATS, HTTP and logging: the settings every service reads."""

    nats_url: Annotated[str, Env(parse=url("nats", "tls", "ws", "wss", several=True))] = setting(
        "NATS_URL", "nats://127.0.0.1:4222"
    )
    host: str = setting("AETHER_HTTP_HOST", "127.0.0.1")
    port: Port = setting("PORT", 8000)
    # JetStream keeps at most five replicas of a stream.
    stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = setting("AETHER_STREAM_REPLICAS", 1)
    # The telemetry stream's retention (``aether_events.streams``): how long it keeps a
    # message, so how long a gateway may be away before transcript entries published
    # meanwhile are lost, and the most it holds (per server), past which the oldest go.
    # Read by the service that declares the streams (the scheduler; every service where
    # the bus has no users); a change is applied to the existing stream at its start.
    telemetry_max_age_seconds: Annotated[float, msgspec.Meta(ge=300)] = setting(
        "AETHER_TELEMETRY_MAX_AGE_SECONDS", TELEMETRY_MAX_AGE_SECONDS
    )
    telemetry_max_bytes: Annotated[int, msgspec.Meta(ge=16 * 1024**2)] = setting(
        "AETHER_TELEMETRY_MAX_BYTES", TELEMETRY_MAX_BYTES
    )
    # This process is the only one of its service, started again only once it exited
    # (``aether up`` sets it for each of its services): a start then hands back at once
    # what the service's durables hold for a process that is gone.
    one_process: bool = setting("AETHER_ONE_PROCESS", False)
    # How long a runner's entry in the registry of live runners lasts unrenewed (the
    # scheduler makes the bucket so; each runner writes its entry every third of it), so
    # how soon a runner that died stops counting (``runners``).
    runner_entry_seconds: Annotated[float, msgspec.Meta(ge=1, le=3600)] = setting(
        "AETHER_RUNNER_ENTRY_SECONDS", 30.0
    )
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"], Env(parse=str.upper)
    ] = setting("LOG_LEVEL", "INFO")
    # A process whose event loop has not turned for this long ends itself, for its
    # supervisor to start it again (``watchdog``); 0 turns the watchdog off.
    loop_stall_seconds: NonNegative = setting("AETHER_LOOP_STALL_SECONDS", 60.0)
    # The service's NATS user and password (empty: connect without credentials, as to a
    # server that asks for none, such as the tests' own). The password may come from a
    # file (a mounted Secret) named by NATS_PASSWORD_FILE.
    nats_user: str = setting("NATS_USER", "")
    nats_password: Annotated[str, Env(file="NATS_PASSWORD_FILE")] = setting("NATS_PASSWORD", "")
    # TLS to the bus (a ``tls://`` URL, or any of these set): the CA bundle the server's
    # certificate must chain to (else the system's trust store), and a certificate and key
    # for a server that asks its clients for one.
    nats_tls_ca: str = setting("NATS_TLS_CA", "")
    nats_tls_cert: str = setting("NATS_TLS_CERT", "")
    nats_tls_key: str = setting("NATS_TLS_KEY", "")
    # The deployment's secret the services' event ids are keyed with (decision 0031; see
    # ``aether_runtime.event_ids``): every service that publishes events holds the same
    # one; no agent runner may.
    event_id_secret: Annotated[str, Env(file="AETHER_EVENT_ID_SECRET_FILE")] = setting(
        "AETHER_EVENT_ID_SECRET", ""
    )

    @classmethod
    def for_service(cls, default_port: int, env: ENV | None = None) -> RuntimeSettings:
        """The settings of a service listening on ``default_port`` unless ``PORT`` says."""
        return cls.load(env, defaults={"port": default_port})

    def stream_settings(self) -> StreamSettings:
        """The streams as this service declares them (``aether_events.ensure_streams``)."""
        return StreamSettings(
            replicas=self.stream_replicas,
            telemetry_max_age_seconds=self.telemetry_max_age_seconds,
            telemetry_max_bytes=self.telemetry_max_bytes,
        )

    def nats_tls(self) -> ssl.SSLContext | None:
        """The TLS context of every connection to the bus (the service's and its
        attempts'), or ``None`` for plain connections; ``SettingsError`` when a file it
        names cannot be loaded. The server's certificate is checked against its name."""
        servers = [url.strip() for url in self.nats_url.split(",")]
        wanted = any(url.startswith("tls://") for url in servers)
        if not (wanted or self.nats_tls_ca or self.nats_tls_cert):
            return None
        try:
            context = ssl.create_default_context(cafile=self.nats_tls_ca or None)
            if self.nats_tls_cert:
                context.load_cert_chain(self.nats_tls_cert, self.nats_tls_key or None)
        except (OSError, ssl.SSLError) as error:
            raise SettingsError(f"the bus's TLS settings cannot be loaded: {error}") from error
        return context

    @property
    def nats_credentials(self) -> dict[str, str]:
        """The credentials to hand to ``nats.connect`` (none when no user is set)."""
        if not self.nats_user:
            return {}
        return {"user": self.nats_user, "password": self.nats_password}


class ServiceSettings(EnvSettings, frozen=True, kw_only=True):
    """A service's settings: its own fields, and ``runtime`` with its default port."""

    DEFAULT_PORT: ClassVar[int] = 8000

    runtime: RuntimeSettings

    @classmethod
    def from_env(cls, env: ENV | None = None) -> Self:
        return cls.load(env, runtime=RuntimeSettings.for_service(cls.DEFAULT_PORT, env))
