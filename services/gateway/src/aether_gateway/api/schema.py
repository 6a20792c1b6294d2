"""The OpenAPI document says what the API refuses, so clients (and fuzzers) know: the
strings of request bodies (``StrictStructSchema``) and the query and path parameters of
every route (``document_refusals``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

# Litestar's own plugin for msgspec structs, extended; it is not exported publicly.
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.enums import ParamType
from litestar.openapi.spec import OpenAPI, OpenAPIType, Operation, Parameter, Schema

from aether_gateway.api.inputs import CLEAN_PARAMETER, STORABLE

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.typing import FieldDefinition

_BOUNDS = {
    "gt": "exclusive_minimum",
    "ge": "minimum",
    "lt": "exclusive_maximum",
    "le": "maximum",
}


class StrictStructSchema(StructSchemaPlugin):
    """A request body (a struct that refuses unknown fields) says all the decoder checks:
    ``additionalProperties: false``; no NUL in any string (``inputs.unstorable``),
    unless the string's own pattern already excludes it; the pattern of a map's string
    values; and the bounds of an optional number (Litestar drops them from
    ``float | None``)."""

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields:
            schema.additional_properties = False
            for field in info.fields:
                prop = (schema.properties or {}).get(field.encode_name)
                if isinstance(prop, Schema):
                    _state_checks(prop, _without_none(field.type))
        return schema


def _without_none(kind: msgspec.inspect.Type) -> msgspec.inspect.Type:
    if isinstance(kind, msgspec.inspect.UnionType):
        rest = [t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(rest) == 1:
            return rest[0]
    return kind


def _state_checks(prop: Schema, kind: msgspec.inspect.Type) -> None:
    if isinstance(kind, msgspec.inspect.StrType):
        prop.pattern = prop.pattern or kind.pattern or STORABLE
    elif isinstance(kind, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        for bound, attribute in _BOUNDS.items():
            value: Any = getattr(kind, bound)
            if value is not None and getattr(prop, attribute) is None:
                setattr(prop, attribute, value)
    elif isinstance(kind, msgspec.inspect.DictType):
        if isinstance(kind.key_type, msgspec.inspect.StrType):
            prop.property_names = Schema(pattern=kind.key_type.pattern or STORABLE)
        elif isinstance(kind.key_type, msgspec.inspect.LiteralType):
            prop.property_names = Schema(enum=list(kind.key_type.values))
        values = prop.additional_properties
        if isinstance(values, Schema):
            _state_checks(values, _without_none(kind.value_type))


# What every query parameter and path parameter of the document says it refuses.
REFUSED_IN_PARAMETERS = (
    "Refused (400) when it holds a control character (U+0000–U+001F, U+007F–U+009F) or"
    " a lone surrogate, or is not UTF-8 once percent-decoded."
)


def document_refusals(document: OpenAPI) -> None:
    """Say in ``document`` what ``inputs.InputGuard`` refuses on every route: each query
    and path parameter's strings get ``CLEAN_PARAMETER`` as their pattern (unless they
    have a stricter one) and its description the sentence above. Litestar builds the
    parameters from the handlers' signatures, which cannot carry a pattern of the
    guard's, so they are completed here once the document is built."""
    for item in (document.paths or {}).values():
        for method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
            operation = getattr(item, method, None)
            if not isinstance(operation, Operation):
                continue
            for parameter in operation.parameters or []:
                if not isinstance(parameter, Parameter) or parameter.param_in not in (
                    ParamType.QUERY,
                    ParamType.PATH,
                ):
                    continue
                if isinstance(parameter.schema, Schema):
                    _clean_strings(parameter.schema)
                said = (parameter.description or "").rstrip()
                if REFUSED_IN_PARAMETERS not in said:
                    joined = f"{said.rstrip('.')}. " if said else ""
                    parameter.description = joined + REFUSED_IN_PARAMETERS


def _clean_strings(schema: Schema) -> None:
    """Give each string ``schema`` may be (itself, its items, its alternatives) the
    guard's pattern."""
    if schema.type == OpenAPIType.STRING and schema.pattern is None and schema.enum is None:
        schema.pattern = CLEAN_PARAMETER
    for part in [schema.items, *(schema.one_of or []), *(schema.any_of or [])]:
        if isinstance(part, Schema):
            _clean_strings(part)
