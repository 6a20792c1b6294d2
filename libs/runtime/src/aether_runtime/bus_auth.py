"""NATS users and permissions, derived from the roles table.

``permissions(role)`` turns one service's role into NATS publish and subscribe
allow/deny lists; ``render_authorization`` writes the ``authorization`` block of a
nats-server configuration with one user per service (plus an optional administrator).
``aether up`` writes it with generated passwords; docker compose and Kubernetes use the
same block with each password read from the server's environment (``$NATS_PASSWORD_…``),
checked in and compared with this rendering by the tests, so the three never differ.

What a service may do:

* publish the events of its role, on ``aether.mission.*.<type>`` or
  ``aether.telemetry.*.<type>``, and nothing else of Aether's subjects;
* read the two streams (stream info, stored messages, ephemeral consumers named by the
  service, whose names are not known in advance);
* create, update and pull from its own durable consumers and acknowledge their messages:
  never pull from, acknowledge for, or reconfigure another service's durable;
* create or update the streams only if its role declares them, never delete or purge one;
  that role also creates the bucket of the live runners (``runners``), which the roles
  that read it (the gateway) may only read; no static user writes an entry there: each
  runner writes its own with a credential of its own (``attempt_auth``);
* receive replies only on its own inbox prefix, so no service reads another's replies;
  publish there too, so its processes can ask one another what they hold after a bus
  restart (see ``reconnect``): only they read it;
* the role that authorizes attempts (the scheduler) also receives the server's
  authorization requests and answers them (``attempt_auth``); every user of the block is
  an ``auth_users`` of the callout, so only attempt users are asked about;
* that role also has a user in the system account (``system_users``) that may only ask a
  server to close a client connection (``$SYS.REQ.SERVER.<id>.KICK``) and the servers to
  list the global account's connections (``$SYS.REQ.ACCOUNT.$G.CONNZ``): the scheduler
  cuts an ended attempt's connection at once, a predecessor's grants included
  (``attempt_connections.ConnectionCutter``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

import nkeys

from aether_events import TELEMETRY_TYPES, tag_of
from aether_events.subjects import MISSION_PREFIX, TELEMETRY_PREFIX
from aether_runtime.roles import DECLARED_BUCKETS, ROLES, STREAMS, Role

API = "$JS.API"
ADVISORY_MAX_DELIVERIES = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
ADMIN_USER = "aether"
# Where the server asks the authorizer about attempt users, and where it wants the answer.
AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
AUTH_REPLIES = "$SYS._INBOX.>"
# Where a connection holding an attempt's credential asks for the key of that attempt's
# event ids (``aether.attempt_key.<mission>.<task token>.<attempt>``, its credential
# naming its own alone), and the attempts' inboxes the answers go to.
ATTEMPT_KEY_PREFIX = "aether.attempt_key"
ATTEMPT_KEY_REQUESTS = f"{ATTEMPT_KEY_PREFIX}.>"
ATTEMPT_INBOXES = "_INBOX.attempt.>"
# The server's environment variable holding the attempt issuer's public key (compose, k8s).
ISSUER_ENV = "NATS_ATTEMPT_ISSUER"
# The account of every static user and attempt credential (the server's default one).
GLOBAL_ACCOUNT = "$G"
# The system account, and the two things its user may ask of the servers: to close a
# client connection (an ended attempt's), and to list the global account's connections
# (each server its own; the attempt connections a restarted scheduler did not grant
# itself: ``attempt_connections.ConnectionCutter``).
SYSTEM_ACCOUNT = "SYS"
KICK_REQUESTS = "$SYS.REQ.SERVER.*.KICK"
CONNECTION_LIST_SUBJECT = f"$SYS.REQ.ACCOUNT.{GLOBAL_ACCOUNT}.CONNZ"


@dataclass(frozen=True)
class Permissions:
    publish_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_allow: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()

    def as_config(self) -> dict[str, dict[str, list[str]]]:
        publish: dict[str, list[str]] = {"allow": list(self.publish_allow)}
        if self.publish_deny:
            publish["deny"] = list(self.publish_deny)
        subscribe: dict[str, list[str]] = {"allow": list(self.subscribe_allow)}
        if self.subscribe_deny:
            subscribe["deny"] = list(self.subscribe_deny)
        return {"publish": publish, "subscribe": subscribe}


@dataclass(frozen=True)
class Secret:
    """A password as the configuration holds it: a literal, or the name of an environment
    variable of the NATS server (``$NAME`` in the file)."""

    literal: str | None = None
    env: str | None = None

    def render(self) -> str:
        if self.env is not None:
            return f"${self.env}"
        assert self.literal is not None
        return json.dumps(self.literal)


@dataclass(frozen=True)
class User:
    name: str
    password: Secret
    permissions: Permissions | None = None  # None: everything (the administrator)


def event_subjects(role: Role) -> list[str]:
    """The subjects of the events ``role`` publishes, any mission."""
    subjects = []
    for cls in role.publishes:
        prefix = TELEMETRY_PREFIX if cls in TELEMETRY_TYPES else MISSION_PREFIX
        subjects.append(f"{prefix}.*.{tag_of(cls)}")
    return sorted(subjects)


def permissions(role: Role, roles: Mapping[str, Role] | None = None) -> Permissions:
    """What ``role`` may publish and subscribe to (see the module's docstring)."""
    everyone = ROLES if roles is None else roles
    allow = [*event_subjects(role), f"{API}.INFO", f"{API}.STREAM.NAMES"]
    for stream in STREAMS:
        allow += [
            f"{API}.STREAM.INFO.{stream}",
            f"{API}.STREAM.MSG.GET.{stream}",
            f"{API}.DIRECT.GET.{stream}",
            f"{API}.DIRECT.GET.{stream}.>",
            # Ephemeral consumers (named by the client) and the service's own durables;
            # another service's durables are denied below. Never the subject that names
            # no consumer: the server takes the name from the body there, a durable's too
            # (so nats-py's ordered consumers are out: see ``follow``).
            f"{API}.CONSUMER.CREATE.{stream}.*",
            f"{API}.CONSUMER.CREATE.{stream}.*.>",
            f"{API}.CONSUMER.INFO.{stream}.*",
            f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
            # Flow control of ordered consumers.
            f"$JS.FC.{stream}.>",
        ]
        if role.declares_streams:
            allow += [f"{API}.STREAM.CREATE.{stream}", f"{API}.STREAM.UPDATE.{stream}"]
    if role.declares_streams:
        for bucket in DECLARED_BUCKETS:
            kv_stream = f"KV_{bucket}"
            allow += [
                f"{API}.STREAM.INFO.{kv_stream}",
                f"{API}.STREAM.CREATE.{kv_stream}",
                f"{API}.STREAM.UPDATE.{kv_stream}",
            ]
    for bucket in role.reads_buckets:
        kv_stream = f"KV_{bucket}"
        allow += [
            f"{API}.STREAM.INFO.{kv_stream}",
            f"{API}.DIRECT.GET.{kv_stream}",
            f"{API}.DIRECT.GET.{kv_stream}.>",
        ]
    for stream, durable in role.durables:
        allow.append(f"$JS.ACK.{stream}.{durable}.>")
    for bucket in role.kv_buckets:
        kv_stream = f"KV_{bucket}"
        allow += [
            f"$KV.{bucket}.>",
            f"{API}.STREAM.INFO.{kv_stream}",
            f"{API}.STREAM.CREATE.{kv_stream}",
            f"{API}.STREAM.MSG.GET.{kv_stream}",
            f"{API}.DIRECT.GET.{kv_stream}",
            f"{API}.DIRECT.GET.{kv_stream}.>",
        ]
    deny = []
    own = set(role.durables)
    for other in everyone.values():
        for stream, durable in other.durables:
            if (stream, durable) in own:
                continue
            deny += [
                f"{API}.CONSUMER.CREATE.{stream}.{durable}",
                f"{API}.CONSUMER.CREATE.{stream}.{durable}.>",
                f"{API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
            ]
    allow.append(f"{role.inbox_prefix}.>")
    subscribe = [f"{role.inbox_prefix}.>"]
    if role.authorizes_attempts:
        # The server's authorization requests for attempt users, and its reply subjects;
        # the attempts' requests for their event keys, and their inboxes.
        subscribe += [AUTH_SUBJECT, ATTEMPT_KEY_REQUESTS]
        allow += [AUTH_REPLIES, ATTEMPT_INBOXES]
    subscribe += [
        f"{ADVISORY_MAX_DELIVERIES}.{stream}.{durable}" for stream, durable in role.durables
    ]
    return Permissions(
        publish_allow=tuple(dict.fromkeys(allow)),
        publish_deny=tuple(dict.fromkeys(deny)),
        subscribe_allow=tuple(subscribe),
    )


def system_user_name(role: Role) -> str:
    """The name of ``role``'s user in the system account."""
    return f"{role.service}-system"


def system_permissions(role: Role) -> Permissions:
    """What the system account's user of ``role`` (one that authorizes attempts) may do:
    ask a server to close a client connection, ask the servers which connections the
    global account has (not the system account's, nor any other's), and read the answers
    on its own inbox."""
    inbox = f"_INBOX.{system_user_name(role)}.>"
    return Permissions(
        publish_allow=(KICK_REQUESTS, CONNECTION_LIST_SUBJECT), subscribe_allow=(inbox,)
    )


def system_users(passwords: Mapping[str, Secret]) -> list[User]:
    """One user of the system account per role that authorizes attempts (the scheduler):
    it cuts the connection of an attempt that ended."""
    return [
        User(
            name=system_user_name(role),
            password=passwords[system_user_name(role)],
            permissions=system_permissions(role),
        )
        for role in ROLES.values()
        if role.authorizes_attempts
    ]


def system_user_names() -> list[str]:
    """The names ``system_users`` makes (whose passwords the configuration needs)."""
    return [system_user_name(role) for role in ROLES.values() if role.authorizes_attempts]


def service_users(passwords: Mapping[str, Secret]) -> list[User]:
    """One user per service of the roles table, named after it."""
    return [
        User(name=name, password=passwords[name], permissions=permissions(role))
        for name, role in ROLES.items()
    ]


def password_env(service: str) -> str:
    """The NATS server's environment variable holding ``service``'s password (compose,
    Kubernetes)."""
    return "NATS_PASSWORD_" + service.upper().replace("-", "_")


@dataclass(frozen=True)
class Callout:
    """The ``auth_callout`` of the configuration: users not listed in it are handed to an
    authorizer (``aether_runtime.attempt_auth``) whose answers ``issuer`` (an account
    public nkey, or ``$NAME`` of the server's environment) signs."""

    issuer: Secret


def _render_users(users: list[User], indent: str) -> list[str]:
    lines = []
    for user in users:
        lines.append("    {")
        lines.append(f"      user: {json.dumps(user.name)}")
        lines.append(f"      password: {user.password.render()}")
        if user.permissions is not None:
            config = user.permissions.as_config()
            lines.append("      permissions: {")
            for direction in ("publish", "subscribe"):
                lines.append(f"        {direction}: {{")
                for kind, subjects in config[direction].items():
                    lines.append(f"          {kind}: [")
                    lines += [f"            {json.dumps(subject)}" for subject in subjects]
                    lines.append("          ]")
                lines.append("        }")
            lines.append("      }")
        lines.append("    }")
    return [indent + line for line in lines]


def render_authorization(
    users: list[User], callout: Callout | None = None, system: list[User] | None = None
) -> str:
    """The ``authorization`` block of a nats-server configuration for ``users``; with
    ``callout``, every other user name is asked of the authorizer (``users`` are its
    ``auth_users``: they log in as before, without it); with ``system``, those users make
    up the system account (``SYSTEM_ACCOUNT``), auth users of the callout too."""
    lines = ["authorization {", "  users = [", *_render_users(users, ""), "  ]"]
    system = system or []
    if callout is not None:
        lines.append("  auth_callout {")
        lines.append(f"    issuer: {callout.issuer.render()}")
        lines.append("    auth_users: [")
        lines += [f"      {json.dumps(user.name)}" for user in [*users, *system]]
        lines.append("    ]")
        lines.append("  }")
    lines.append("}")
    if system:
        lines += ["accounts {", f"  {SYSTEM_ACCOUNT}: {{", "    users = ["]
        lines += _render_users(system, "  ")
        lines += ["    ]", "  }", "}", f"system_account: {SYSTEM_ACCOUNT}"]
    return "\n".join(lines) + "\n"


def static_authorization() -> str:
    """The block docker compose and Kubernetes use: every password from the server's
    environment, an administrator included (``NATS_PASSWORD_ADMIN``)."""
    users = [User(name=ADMIN_USER, password=Secret(env="NATS_PASSWORD_ADMIN"))]
    users += service_users({name: Secret(env=password_env(name)) for name in ROLES})
    system = system_users({name: Secret(env=password_env(name)) for name in system_user_names()})
    return STATIC_HEADER + render_authorization(users, Callout(Secret(env=ISSUER_ENV)), system)


STATIC_HEADER = """\
# NATS users and permissions of the Aether services, one user per service with the
# permissions of its role; each password comes from the server's environment, and so
# does the public key of the attempt credentials' issuer (NATS_ATTEMPT_ISSUER). The
# system account holds one user, the scheduler's, that may only close a connection and
# list the global account's connections.
# Generated from aether_runtime.roles: do not edit. After changing the roles, run
#   uv run python -m aether_runtime.bus_auth > deploy/nats/auth.conf
# and copy it into k8s/base/nats.yaml (the tests compare both with the table).
"""


def new_issuer_seed() -> str:
    """A new account nkey seed (``SA…``) for signing attempt credentials."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT)).decode()


def issuer_public_key(seed: str) -> str:
    """The public key (``A…``) of an issuer seed: what the server's ``auth_callout`` names."""
    return bytes(nkeys.from_seed(seed.encode()).public_key).decode()


if __name__ == "__main__":
    print(static_authorization(), end="")
