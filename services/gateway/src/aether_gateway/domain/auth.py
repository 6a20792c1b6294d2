"""Who may do what: the scopes of a caller, pure.

Scopes are ordered: ``admin`` may do everything ``write`` may, and ``write`` everything
``read`` may. A token names the scopes it was given; the highest one decides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Final, Literal

import msgspec

Scope = Literal["read", "write", "admin"]
SCOPES: Final[tuple[Scope, ...]] = ("read", "write", "admin")
_RANK: Final[dict[str, int]] = {scope: rank for rank, scope in enumerate(SCOPES)}

# API tokens carry this prefix, so they are told apart from OIDC tokens (JWTs) at a
# glance, and secret scanners can recognise a leaked one.
TOKEN_PREFIX: Final = "aet_"  # noqa: S105 (a prefix, not a secret)


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The caller of one request."""

    id: str
    name: str
    scopes: frozenset[str]
    kind: Literal["token", "bootstrap", "oidc"]
    # From when the token it was named by is refused (seconds since the epoch), where
    # that is known: ``refused_from`` of an API token's expiry, or of an OIDC token's
    # ``exp`` and the clock-skew leeway. An event stream it opened ends then.
    refused_from: float | None = None

    def allows(self, needed: Scope) -> bool:
        return any(_RANK.get(scope, -1) >= _RANK[needed] for scope in self.scopes)


def refused_from(expires_at: float, leeway: float = 0.0) -> float:
    """The instant a token that expires at ``expires_at`` is first refused, ``leeway``
    the clock skew allowed between its issuer and the gateway (OIDC's; none for the
    gateway's own API tokens). The one rule for both a request's check and the end of
    an event stream the token opened, so a stream ends just as the token would stop
    being let in."""
    return expires_at + leeway


def has_expired(expires_at: float, now: float, leeway: float = 0.0) -> bool:
    """Whether a token that expires at ``expires_at`` is refused at ``now``."""
    return now >= refused_from(expires_at, leeway)


def token_hash(token: str) -> str:
    """How a token is stored. API tokens are 256 random bits, so a plain SHA-256 cannot be
    reversed or guessed; a slow password hash would only slow every request down."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_scopes(values: list[str] | str, prefix: str = "") -> frozenset[str]:
    """The Aether scopes among ``values`` (an OIDC ``scope`` string or a list of roles),
    each spelt ``<prefix><scope>``; anything else is ignored."""
    items = values.split() if isinstance(values, str) else values
    found = set()
    for item in items:
        if not isinstance(item, str) or not item.startswith(prefix):
            continue
        name = item[len(prefix) :]
        if name in _RANK:
            found.add(name)
    return frozenset(found)


def claim_at(claims: Mapping[str, object], name: str) -> object:
    """The claim called ``name``: the top-level claim of that exact name when there is one
    (namespaced claims such as ``https://example.test/roles`` contain dots), else the
    dotted path into nested objects (Keycloak's ``realm_access.roles``)."""
    if name in claims:
        return claims[name]
    found: object = claims
    for part in name.split("."):
        if not isinstance(found, Mapping) or part not in found:
            return None
        found = found[part]
    return found


def role_names(value: object) -> frozenset[str]:
    """The role names in a claim: a list of strings, or one string of names separated by
    spaces or commas. Anything else names none."""
    if isinstance(value, str):
        return frozenset(value.replace(",", " ").split())
    if isinstance(value, list | tuple):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


def scopes_for_roles(
    roles: frozenset[str], mapping: Mapping[Scope, Iterable[str]]
) -> frozenset[str]:
    """The Aether scopes that ``roles`` are given by ``mapping`` (scope -> the identity
    provider's roles that grant it): admin for an admin role, ``write`` for an operator
    role, ``read`` for a read-only one."""
    return frozenset(scope for scope, granting in mapping.items() if roles & set(granting))
