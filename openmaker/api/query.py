"""The AWS query protocol (STS, IAM): form-encoded POSTs in, XML out, both from the botocore model.

A request is `Action=<Operation>&Version=<api version>` plus its members, flattened as
botocore's query serializer flattens them (`Names.member.1`, `Tags.member.2.Key`,
`Map.entry.1.key`). The answer is `<OperationResponse><OperationResult>…` with the output
shape's members, or an `ErrorResponse`; no operation is described here by hand.
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape

from openmaker.shapes.errors import ServiceError, ValidationException
from openmaker.shapes.model import operation_model, service_model
from openmaker.shapes.validate import validate_input

Handler = Callable[[dict[str, Any]], dict[str, Any]]
CONTENT_TYPE = "text/xml"
# More form fields than any STS or IAM request holds; parse_qsl refuses a body with more.
MAX_FIELDS = 10_000


@dataclass(frozen=True)
class QueryService:
    name: str  # the botocore service name
    signing_name: str
    handlers: dict[str, Handler]


class QueryError(ServiceError):
    """An error with the code a query service answers (`ValidationError`, `NoSuchEntity`, ...)."""

    def __init__(self, code: str, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


# The JSON services' codes for what the query services name otherwise (signature checks,
# validation, unknown operations), with AWS's HTTP status for each.
_QUERY_CODES: dict[str, tuple[str, int]] = {
    "MissingAuthenticationTokenException": ("MissingAuthenticationToken", 403),
    "IncompleteSignatureException": ("IncompleteSignature", 400),
    "UnrecognizedClientException": ("InvalidClientTokenId", 403),
    "InvalidSignatureException": ("SignatureDoesNotMatch", 403),
    "ValidationException": ("ValidationError", 400),
    "UnknownOperationException": ("InvalidAction", 400),
}


def modeled_error(service: str, shape: str, message: str) -> QueryError:
    """The error the model declares as `shape` (e.g. iam's `NoSuchEntityException`), with the
    code and HTTP status it states."""
    declared = service_model(service).shape_for(shape).metadata.get("error", {})
    return QueryError(declared.get("code", shape), message, declared.get("httpStatusCode", 400))


def is_query_request(content_type: str, target: str | None) -> bool:
    """botocore sends query requests form-encoded and without `X-Amz-Target`."""
    media = content_type.split(";", 1)[0].strip().lower()
    return target is None and media == "application/x-www-form-urlencoded"


def call(service: QueryService, body: bytes, request_id: str) -> bytes:
    """The XML answer to one request, or a ServiceError."""
    form = _form(body)
    action = form.pop("Action", "")
    version = form.pop("Version", "")
    api_version = service_model(service.name).api_version
    handler = service.handlers.get(action)
    if handler is None or version != api_version:
        if action in service_model(service.name).operation_names and version == api_version:
            message = f"openmaker does not implement {service.name} operation {action}"
        else:
            message = f"Could not find operation {action or '(no Action)'} for version {version}"
        raise QueryError("InvalidAction", message)
    model = operation_model(action, service.name)
    params = _read(model.input_shape, form, "") if model.input_shape is not None else {}
    try:
        validate_input(action, params, service.name)
    except ValidationException as exc:
        raise QueryError("ValidationError", exc.message) from None
    result = handler(params)
    return _response(model, result, request_id)


def error_body(service: QueryService | None, error: ServiceError, request_id: str) -> bytes:
    code, _ = _QUERY_CODES.get(error.code, (error.code, error.http_status))
    root = ET.Element("ErrorResponse", _namespace(service))
    detail = ET.SubElement(root, "Error")
    ET.SubElement(detail, "Type").text = "Sender" if error.http_status < 500 else "Receiver"
    ET.SubElement(detail, "Code").text = code
    ET.SubElement(detail, "Message").text = error.message
    ET.SubElement(root, "RequestId").text = request_id
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)


def error_status(error: ServiceError) -> int:
    return _QUERY_CODES.get(error.code, (error.code, error.http_status))[1]


def _namespace(service: QueryService | None) -> dict[str, str]:
    if service is None:
        return {}
    namespace = service_model(service.name).metadata.get("xmlNamespace")
    return {"xmlns": namespace} if namespace else {}


def _form(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=True,
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise QueryError(
            "MalformedQueryString", f"The request body is not a form-encoded query: {exc}"
        ) from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise QueryError("MalformedQueryString", f"The parameter {name} is given twice")
        form[name] = value
    return form


class _Index:
    """Which dotted prefixes the form holds, so that each member is found in one look-up."""

    def __init__(self, form: Mapping[str, str]) -> None:
        self.form = form
        self.prefixes: set[str] = set()
        for key in form:
            parts = key.split(".")
            for end in range(1, len(parts) + 1):
                self.prefixes.add(".".join(parts[:end]))


_ABSENT = object()


def _read(shape: StructureShape, form: Mapping[str, str], prefix: str) -> dict[str, Any]:
    value = _value(shape, _Index(form), prefix)
    return value if isinstance(value, dict) else {}


def _value(shape: Shape, index: _Index, key: str) -> Any:
    if isinstance(shape, StructureShape):
        members = {}
        for name, member in shape.members.items():
            wire = member.serialization.get("name", name)
            item = _value(member, index, f"{key}.{wire}" if key else wire)
            if item is not _ABSENT:
                members[name] = item
        # A structure is there when any of its members is, or when something is sent under it
        # (members the model does not know: validation names what is missing).
        return members if members or not key or key in index.prefixes else _ABSENT
    if key not in index.prefixes:
        return _ABSENT
    if isinstance(shape, ListShape):
        if index.form.get(key) == "":  # botocore's empty list
            return []
        if shape.serialization.get("flattened"):
            base = key
        else:
            base = f"{key}.{shape.member.serialization.get('name', 'member')}"
        return _items(index, base, lambda at: _value(shape.member, index, at))
    if isinstance(shape, MapShape):
        base = key if shape.serialization.get("flattened") else f"{key}.entry"
        key_name = shape.key.serialization.get("name", "key")
        value_name = shape.value.serialization.get("name", "value")
        entries = _items(
            index,
            base,
            lambda at: (
                _value(shape.key, index, f"{at}.{key_name}"),
                _value(shape.value, index, f"{at}.{value_name}"),
            ),
        )
        return {k: v for k, v in entries if k is not _ABSENT}
    if key not in index.form:
        return _ABSENT
    return _scalar(shape.type_name, index.form[key])


def _items(index: _Index, base: str, read: Callable[[str], Any]) -> list[Any]:
    """Elements `base.1`, `base.2`, … up to the first one missing."""
    items = []
    position = 1
    while f"{base}.{position}" in index.prefixes:
        items.append(read(f"{base}.{position}"))
        position += 1
    return items


def _scalar(kind: str, text: str) -> Any:
    """The value of its kind, or the text as sent for validation to name."""
    try:
        if kind in ("integer", "long"):
            return int(text)
        if kind in ("float", "double"):
            return float(text)
        if kind == "boolean":
            return {"true": True, "false": False}.get(text, text)
        if kind == "timestamp":
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
        if kind == "blob":
            return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return text
    return text


def _response(model: OperationModel, result: Mapping[str, Any], request_id: str) -> bytes:
    namespace = model.metadata.get("xmlNamespace")
    root = ET.Element(f"{model.name}Response", {"xmlns": namespace} if namespace else {})
    output = model.output_shape
    if output is not None:
        wrapper = output.serialization.get("resultWrapper", f"{model.name}Result")
        _write(ET.SubElement(root, wrapper), output, result)
    metadata = ET.SubElement(root, "ResponseMetadata")
    ET.SubElement(metadata, "RequestId").text = request_id
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)


def _write(element: ET.Element, shape: Shape, value: Any) -> None:
    """`value` into `element` (already named), as the query protocol lays out `shape`."""
    if isinstance(shape, StructureShape):
        for name, member in shape.members.items():
            item = value.get(name)
            if item is None:
                continue
            wire = member.serialization.get("name", name)
            if isinstance(member, ListShape) and member.serialization.get("flattened"):
                for entry in item:
                    _write(ET.SubElement(element, wire), member.member, entry)
            else:
                _write(ET.SubElement(element, wire), member, item)
    elif isinstance(shape, ListShape):
        name = shape.member.serialization.get("name", "member")
        for entry in value:
            _write(ET.SubElement(element, name), shape.member, entry)
    elif isinstance(shape, MapShape):
        key_name = shape.key.serialization.get("name", "key")
        value_name = shape.value.serialization.get("name", "value")
        for key, item in value.items():
            entry = ET.SubElement(element, "entry")
            _write(ET.SubElement(entry, key_name), shape.key, key)
            _write(ET.SubElement(entry, value_name), shape.value, item)
    else:
        element.text = _text(shape.type_name, value)


def _text(kind: str, value: Any) -> str:
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "timestamp" and isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind == "blob" and isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)
