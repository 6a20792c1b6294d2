"""Input the API refuses before any route acts on it, for every route at once.

- Query parameters and path segments: text that is not UTF-8, or that holds a control
  character or a surrogate. None of them is free text, and PostgreSQL cannot store NUL.
- JSON bodies: decoded strictly against the route's body type (a number given as a
  string is refused, as an unknown field is; an integer may be written ``127.0``, as JSON
  Schema's ``integer`` allows), and refused when a string holds NUL or an
  unpaired surrogate, which PostgreSQL cannot store, so nothing it could not fold is
  ever published. Deep nesting and bytes that are not UTF-8 are refused too.

Each refusal is a 400 in the API's error format, naming the field.
"""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec
from litestar import Request
from litestar.enums import ScopeType
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

# C0 controls, DEL and C1 controls; and UTF-16 surrogates (unpaired, in a Python str).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
_AT = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")

# What the OpenAPI document says of the strings bodies hold (``schema``), as regexes
# that Python and the ECMA-262 regexes of JSON Schema validators read alike: no NUL nor
# unpaired surrogate in any string, and free text that is not blank. A surrogate is let
# through only as the first half of a pair followed by its second: what an ECMA-262
# regex sees of a character beyond U+FFFF without the ``u`` flag (two code units); with
# it, and in Python, such a character is one, outside the surrogates' range, and only a
# lone surrogate is left in it. Whitespace is Python's ``str.isspace`` set, listed
# character by character (``\s`` differs between the two); each pattern's alternatives
# start with different characters, so it cannot backtrack more than once per character.
_SPACE = (
    r"\t\n\u000b\u000c\r\u001c-\u001f \u0085\u00a0"
    r"\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
)
_PAIR = r"[\ud800-\udbff][\udc00-\udfff]"
_STORABLE_CHARACTER = rf"(?:[^\u0000\ud800-\udfff]|{_PAIR})"
STORABLE = rf"^{_STORABLE_CHARACTER}*$"
NOT_BLANK = rf"^[{_SPACE}]*(?:[^\u0000\ud800-\udfff{_SPACE}]|{_PAIR}){_STORABLE_CHARACTER}*$"
# What a query parameter or a path may hold, said in the OpenAPI document: no control
# character (C0, DEL, C1) and no lone surrogate (``_CONTROL``, what ``InputGuard``
# refuses; a character beyond U+FFFF is let through, as a pair above).
CLEAN_PARAMETER = rf"^(?:[^\u0000-\u001f\u007f-\u009f\ud800-\udfff]|{_PAIR})*$"
# A body's string refused by its pattern: what the refusal says instead of the regex.
_PATTERN_MEANS = {
    NOT_BLANK: "must not be blank (nor contain NUL characters or unpaired surrogates)"
}


def _refusal(source: str, key: str, message: str) -> ValidationException:
    return ValidationException(
        detail=f"{key}: {message}", extra=[{"key": key, "message": message, "source": source}]
    )


def _decoded(raw: bytes, source: str, key: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _refusal(source, key, "is not valid UTF-8") from None


def _check_text(text: str, source: str, key: str) -> None:
    found = _CONTROL.search(text)
    if found is not None:
        raise _refusal(
            source, key, f"must not contain control characters (found U+{ord(found[0]):04X})"
        )


def check_query_string(query: bytes) -> None:
    """Refuse a query string whose names or values are not UTF-8 or hold control
    characters (whether percent-encoded or not)."""
    for part in query.split(b"&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition(b"=")
        name = _decoded(unquote_to_bytes(raw_name.replace(b"+", b" ")), "query", "query")
        _check_text(name, "query", "query")
        value = _decoded(unquote_to_bytes(raw_value.replace(b"+", b" ")), "query", name)
        _check_text(value, "query", name)


def check_path(raw_path: bytes) -> None:
    """Refuse a path that, percent-decoded, is not UTF-8 or holds control characters."""
    path = _decoded(unquote_to_bytes(raw_path), "path", "path")
    _check_text(path, "path", "path")


class InputGuard(ASGIMiddleware):
    """Refuses query strings and paths that no route can take (see the module)."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        check_query_string(scope.get("query_string", b""))
        raw_path = scope.get("raw_path")
        if raw_path:
            check_path(raw_path)
        else:
            _check_text(str(scope.get("path", "")), "path", "path")
        await next_app(scope, receive, send)


# --- bodies ----------------------------------------------------------------------------


@functools.cache
def _strict_decoder(body_type: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(body_type, strict=True)


def _decoder(handler: HTTPRouteHandler) -> msgspec.json.Decoder[Any] | None:
    """The strict decoder of the route's body type, or None when it takes no body."""
    data = handler.parsed_fn_signature.parameters.get("data")
    return _strict_decoder(data.annotation) if data is not None else None


def unstorable(value: Any, path: str = "") -> str | None:
    """The path of the first string in ``value`` (keys included) holding NUL or an
    unpaired surrogate, or None."""
    if isinstance(value, str):
        return path or "body" if _UNSTORABLE.search(value) else None
    if isinstance(value, msgspec.Struct):
        fields = value.__struct_fields__
        items: Any = ((name, getattr(value, name)) for name in fields)
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple | set | frozenset):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and _UNSTORABLE.search(key):
            return f"{path or 'body'} (a key)"
        where = f"{path}.{key}" if path else str(key)
        found = unstorable(item, where)
        if found is not None:
            return found
    return None


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """``body`` decoded strictly, except that a number with no fraction (``127.0``) is
    taken where an integer is expected: JSON Schema's ``integer`` (which the API's
    document declares) is any number whose fractional part is zero, and some encoders
    write every number with one. A number given as a string is still refused."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as error:
        if "Expected `int`, got `float`" not in str(error):
            raise
        return decoder.decode(
            msgspec.json.encode(_integral_floats_as_ints(msgspec.json.decode(body)))
        )


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    return value


# msgspec's bounds (``Expected `str` of length <= 20000``, ``Expected `int` >= 1``) as
# the refusal says them.
_LENGTH = re.compile(r"^Expected `(?P<kind>str|array|object)` of length (?P<op>[<>]=) (?P<n>\d+)$")
_BOUND = re.compile(r"^Expected `(?:int|float)` (?P<op>[<>]=?) (?P<n>-?[\d.e+-]+)$")
_UNITS = {"str": ("character", "characters"), "array": ("item", "items"), "object": ("key", "keys")}
_BOUND_SAYS = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}


def _number(text: str) -> str:
    """``20000`` (or ``20000.0``) as ``20,000``; a fraction as given."""
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{int(value):,}" if value.is_integer() else text


def _said_plainly(message: str) -> str:
    """msgspec's refusal of a value, as a sentence's end after the field's name."""
    for pattern, meaning in _PATTERN_MEANS.items():
        if message == f"Expected `str` matching regex {pattern!r}":
            return meaning
    length = _LENGTH.match(message)
    if length is not None:
        count = int(length["n"])
        one, many = _UNITS[length["kind"]]
        if length["op"] == ">=" and count == 1:
            return "must not be empty"
        most = "at most" if length["op"] == "<=" else "at least"
        return f"must have {most} {_number(length['n'])} {one if count == 1 else many}"
    bound = _BOUND.match(message)
    if bound is not None:
        return f"must be {_BOUND_SAYS[bound['op']]} {_number(bound['n'])}"
    return message


async def strict_body(request: Request[Any, Any, Any]) -> None:
    """A before-request hook: check the JSON body of routes that take one, strictly."""
    handler = request.route_handler
    if not isinstance(handler, HTTPRouteHandler):
        return
    decoder = _decoder(handler)
    if decoder is None:
        return
    body = await request.body()
    if not body:
        data = handler.parsed_fn_signature.parameters["data"]
        if not (data.has_default or data.is_optional):
            raise _refusal("body", "body", "a JSON body is required")
        return
    try:
        value = _decode(decoder, body)
    except msgspec.ValidationError as error:
        message = str(error)
        at = _AT.search(message)
        key = (at["path"] or "body") if at else "body"
        raise _refusal("body", key, _said_plainly(_AT.sub("", message))) from None
    except msgspec.DecodeError as error:
        raise _refusal("body", "body", f"is not valid JSON ({error})") from None
    except UnicodeDecodeError:
        raise _refusal("body", "body", "is not valid UTF-8") from None
    except RecursionError:
        raise _refusal("body", "body", "is nested too deeply") from None
    where = unstorable(value)
    if where is not None:
        raise _refusal("body", where, "must not contain NUL characters or unpaired surrogates")
