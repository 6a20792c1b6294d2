"""A real OpenID Connect provider for the tests: ``oidc-provider-mock`` (authlib's
authorization server in a Flask app) on a free port of this machine, with PKCE enforced
(the package leaves it out, so RFC 7636's extension from authlib is added), nonces
required, a way to rotate its signing key, and on demand the device grant (RFC 8628) and
token introspection (RFC 7662) from authlib.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, ClassVar

import flask
import httpx
import oidc_provider_mock
import werkzeug.serving
from authlib import jose
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc8628 import (
    DeviceAuthorizationEndpoint,
    DeviceCodeGrant,
    DeviceCredentialDict,
)
from joserfc.jwk import KeySet
from oidc_provider_mock._storage import Client, ClientAllowAny

from aether.infra import free_port
from aether_runtime import tls


def _sign_with_key_id(extension: Any) -> None:
    """Put the key id in the ID token's header, as every real provider does (the package
    signs with a bare key, which leaves it out), through authlib's own hooks for the
    key, algorithm, claims and header: the package answers authlib's deprecated
    ``get_jwt_config``, which is asked here once per token instead."""
    if not hasattr(extension, "get_jwt_config"):
        return
    config = extension.get_jwt_config

    def key_id() -> str:
        jwk = flask.g.oidc_provider_mock_storage.jwk
        return str(jose.KeySet((jwk,)).as_dict()["keys"][0]["kid"])

    def private_key(client: Any) -> KeySet:
        return KeySet.import_key_set({"keys": [{**config(None, client)["key"], "kid": key_id()}]})

    def algorithm(client: Any) -> str:
        return str(config(None, client)["alg"])

    def claims(client: Any) -> dict[str, Any]:
        found = config(None, client)
        return {"iss": found["iss"], "exp": int(time.time()) + found["exp"]}

    def header(client: Any) -> dict[str, str]:
        return {"alg": algorithm(client), "kid": key_id()}

    extension.resolve_client_private_key = private_key
    extension.get_client_algorithm = algorithm
    extension.get_client_claims = claims
    extension.get_encode_header = header


class Provider:
    """An identity provider at ``self.issuer`` whose users are ``users``."""

    def __init__(
        self,
        users: Sequence[oidc_provider_mock.User] = (),
        *,
        token_max_age: timedelta = timedelta(minutes=10),
        refresh_tokens: bool = False,
        device_grant: bool = False,
        introspection: str = "",
    ) -> None:
        """``introspection``: the client authentication its introspection endpoint takes
        (``client_secret_basic`` or ``client_secret_post``; "": no endpoint)."""
        self.app = oidc_provider_mock.app(
            require_nonce=True,
            user_claims=users,
            access_token_max_age=token_max_age,
            issue_refresh_token=refresh_tokens,
        )
        # The provider's authorization server and storage live on flask.g, set per
        # request: run the request hooks once to reach them.
        with self.app.test_request_context():
            self.app.preprocess_request()
            server: Any = flask.g._authlib_authorization_server
            self.storage: Any = flask.g.oidc_provider_mock_storage
        challenges: dict[str, tuple[str | None, str | None]] = {}

        class Pkce(CodeChallenge):  # type: ignore[misc]
            def get_authorization_code_challenge(self, code: Any) -> str | None:
                return challenges.get(code.code, (None, None))[0]

            def get_authorization_code_challenge_method(self, code: Any) -> str | None:
                return challenges.get(code.code, (None, None))[1]

        for grant, extensions in server._authorization_grants:
            for extension in extensions:
                _sign_with_key_id(extension)
            extensions.append(Pkce(required=True))
            # Public clients (a browser app, no secret) too: PKCE is what binds their code.
            grant.TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "none"]
        # A refresh answers a new ID token too, as Keycloak, Okta or Auth0 do (authlib's
        # refresh grant alone gives only an access token): the code grant's OpenID
        # extension signs it.
        openid = next(
            extension
            for _, extensions in server._authorization_grants
            for extension in extensions
            if hasattr(extension, "process_token")
        )

        def with_id_token(created: Any) -> None:
            created.register_hook("after_create_token_response", openid.process_token)

        for index, (grant, extensions) in enumerate(server._token_grants):
            if grant.GRANT_TYPE == "refresh_token":
                grant.TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "none"]
                server._token_grants[index] = (grant, [*(extensions or []), with_id_token])
        self.approved: dict[str, str] = {}  # user code -> the user who approved it
        # What the discovery document says besides the package's own fields (a path is
        # the issuer's).
        self.discovery: dict[str, Any] = {}
        discovery = self.app.view_functions["oidc-provider-mock.openid_config"]

        def openid_config() -> Any:
            answer = discovery()
            found = dict(answer if isinstance(answer, dict) else answer.get_json())
            extra = {
                name: f"{self.issuer}{value}" if str(value).startswith("/") else value
                for name, value in self.discovery.items()
            }
            return flask.jsonify({**found, **extra})

        self.app.view_functions["oidc-provider-mock.openid_config"] = openid_config
        if device_grant:
            self._add_device_grant(server, with_id_token)
        # Which client each access token was issued to, the audiences the provider puts
        # in the tokens of a client, and how many times the introspection endpoint was
        # asked (the gateway's cache is counted by it).
        self.issued_to: dict[str, str] = {}
        self.audiences: dict[str, list[str]] = {}
        self.introspections = 0
        store_access_token = self.storage.store_access_token

        def remember_client(token: Any) -> None:
            basic = flask.request.authorization
            client = basic.username if basic and basic.username else None
            self.issued_to[token.token] = client or flask.request.values.get("client_id", "")
            store_access_token(token)

        self.storage.store_access_token = remember_client
        if introspection:
            self._add_introspection(server, introspection)
        store = self.storage.store_authorization_code

        def remember_challenge(code: Any) -> None:
            values = flask.request.values
            challenges[code.code] = (
                values.get("code_challenge"),
                values.get("code_challenge_method"),
            )
            store(code)

        self.storage.store_authorization_code = remember_challenge
        self.port = free_port()
        self.server = werkzeug.serving.make_server("127.0.0.1", self.port, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.issuer = f"http://127.0.0.1:{self.port}"

    def _add_device_grant(self, server: Any, with_id_token: Any) -> None:
        """RFC 8628 with authlib's endpoint and grant: the package offers neither."""
        credentials: dict[str, dict[str, Any]] = {}
        provider = self

        class Endpoint(DeviceAuthorizationEndpoint):  # type: ignore[misc]
            CLIENT_AUTH_METHODS: ClassVar[list[str]] = ["none", "client_secret_basic"]
            INTERVAL = 1

            def get_verification_uri(self) -> str:
                return f"{provider.issuer}/device"

            def save_device_credential(self, client_id: str, scope: str, data: Any) -> None:
                credentials[data["device_code"]] = {
                    **data,
                    "client_id": client_id,
                    "scope": scope,
                    "expires_at": time.time() + data["expires_in"],
                }

        class Grant(DeviceCodeGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["none", "client_secret_basic"]

            def query_device_credential(self, device_code: str) -> Any:
                found = credentials.get(device_code)
                return DeviceCredentialDict(found) if found else None

            def query_user_grant(self, user_code: str) -> Any:
                sub = provider.approved.get(user_code)
                return None if sub is None else (provider.storage.get_user(sub), True)

            def should_slow_down(self, credential: Any) -> bool:
                return False

        if DeviceCodeGrant.GRANT_TYPE not in Client.GRANT_TYPES_SUPPORTED:
            Client.GRANT_TYPES_SUPPORTED = (
                *Client.GRANT_TYPES_SUPPORTED,
                DeviceCodeGrant.GRANT_TYPE,
            )
        server.register_endpoint(Endpoint)
        server._token_grants.append((Grant, [with_id_token]))

        def device_authorization() -> Any:
            return server.create_endpoint_response(Endpoint.ENDPOINT_NAME)

        def token() -> Any:  # the package's own view knows only its two grants
            return server.create_token_response()

        self.discovery["device_authorization_endpoint"] = "/oauth2/device"
        self.app.add_url_rule("/oauth2/device", "device", device_authorization, methods=["POST"])
        self.app.view_functions["oidc-provider-mock.issue_token"] = token

    def _add_introspection(self, server: Any, auth_method: str) -> None:
        """RFC 7662 with authlib's endpoint: only clients registered with a secret
        (``register_confidential_client``) may ask, and only with ``auth_method``. The
        answer carries the user's claims (their roles), as Keycloak's does."""
        provider = self

        class Endpoint(IntrospectionEndpoint):  # type: ignore[misc]
            CLIENT_AUTH_METHODS: ClassVar[list[str]] = [auth_method]

            def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
                return provider.storage.get_access_token(token_string)

            def check_permission(self, token: Any, client: Any, request: Any) -> bool:
                return provider.storage.get_client(client.id) is not None

            def introspect_token(self, token: Any) -> dict[str, Any]:
                client = provider.issued_to.get(token.token, "")
                found = {
                    **token.get_user().claims,
                    "active": True,
                    "iss": provider.issuer,
                    "sub": token.user_id,
                    "client_id": client,
                    "scope": token.scope,
                    "token_type": "Bearer",
                    "exp": int(token.expires_at.timestamp()),
                }
                if client in provider.audiences:
                    found["aud"] = provider.audiences[client]
                return found

        server.register_endpoint(Endpoint)

        def introspect() -> Any:
            provider.introspections += 1
            return server.create_endpoint_response(Endpoint.ENDPOINT_NAME)

        self.app.add_url_rule("/oauth2/introspect", "introspect", introspect, methods=["POST"])
        self.discovery["introspection_endpoint"] = "/oauth2/introspect"
        self.discovery["introspection_endpoint_auth_methods_supported"] = [auth_method]

    def revoke(self, sub: str) -> None:
        """The provider forgets every access token of ``sub`` (as a sign-out would)."""
        for token in self.storage.access_tokens():
            if token.user_id == sub:
                self.storage.remove_access_token(token.token)

    def approve(self, user_code: str, sub: str) -> None:
        """``sub`` enters ``user_code`` on the verification page and approves it."""
        self.approved[user_code] = sub

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)

    @property
    def key(self) -> Any:
        """The provider's current signing key (authlib's JWK, private part included)."""
        return self.storage.jwk

    def register_confidential_client(
        self, client_id: str, secret: str, *, auth_method: str = "client_secret_basic"
    ) -> None:
        """A client that must authenticate with ``secret`` (HTTP basic, or
        ``auth_method``) at the token and introspection endpoints; any other client id
        is taken as a public client."""
        self.storage.store_client(
            Client(
                id=client_id,
                secret=secret,
                redirect_uris=ClientAllowAny(),
                allowed_scopes=Client.SCOPES_SUPPORTED,
                token_endpoint_auth_method=auth_method,
            )
        )

    def rotate_key(self) -> None:
        """Sign with a new key from now on; the JWKS then publishes only the new one."""
        self.storage.jwk = jose.RSAKey.generate_key(is_private=True)

    async def authorize(
        self,
        *,
        sub: str,
        client_id: str,
        redirect_uri: str,
        nonce: str,
        challenge: str,
    ) -> str:
        """Sign ``sub`` in on the provider's own page (as a browser would post its form)
        and return the code it sends back."""
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid profile email",
            "state": "s",
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        async with httpx.AsyncClient(verify=tls.shared()) as http:
            response = await http.post(
                f"{self.issuer}/oauth2/authorize", params=params, data={"sub": sub}
            )
        assert response.status_code == 302, response.text
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(response.headers["location"]).query)
        return query["code"][0]

    async def token(
        self, code: str, *, client_id: str, redirect_uri: str, verifier: str
    ) -> dict[str, Any]:
        """The token endpoint's answer for ``code`` (as a client of its own would get)."""
        async with httpx.AsyncClient(verify=tls.shared()) as http:
            response = await http.post(
                f"{self.issuer}/oauth2/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "client_id": client_id,
                    "redirect_uri": redirect_uri,
                    "code_verifier": verifier,
                },
            )
        answer: dict[str, Any] = response.json()
        return answer
