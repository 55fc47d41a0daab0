"""DynamoDB additions to moto: TTL deletion on the model clock, and injected faults.

TTL, as DynamoDB documents it: once `UpdateTimeToLive` enabled an attribute, an item whose
attribute is a Number (epoch seconds) older than now, but not five years older or more,
is expired and deleted by a background process "typically within 48 hours". Expired
items stay readable until then; items whose attribute is not a Number are never deleted.
The model deletes on its ticker once `expiry + delay` has passed (delay 0 by default,
settable), records the deletion in the table's stream as a service (system) delete, and
never filters reads.

Faults: the next N calls of an operation (optionally of one table or region) answer with
an error in DynamoDB's JSON shape instead of reaching moto.

Runs under asg_model.LOCK, which the server holds around every DynamoDB request.
"""

from __future__ import annotations

import io
import json
import re
import uuid
import zlib

import botocore.session
from moto.dynamodb.models import dynamodb_backends

from rules import RuleBook

FIVE_YEARS = 5 * 365 * 86400
PREFIX = "com.amazonaws.dynamodb.v20120810#"
FAULTS = RuleBook("dynamodb-fault")
_settings = {"delay_seconds": 0.0}

# code -> (__type, HTTP status, default message). ThrottlingException keeps the namespace
# DynamoDB answers it with (its message shape is AvailabilityErrorMessage in the API model).
ERRORS = {
    "TransactionCanceledException": (PREFIX + "TransactionCanceledException", 400, None),
    "TransactionConflictException": (PREFIX + "TransactionConflictException", 400, "Transaction is ongoing for the item"),
    "ProvisionedThroughputExceededException": (
        PREFIX + "ProvisionedThroughputExceededException",
        400,
        "The level of configured provisioned throughput for the table was exceeded. "
        "Consider increasing your provisioning level with the UpdateTable API.",
    ),
    "ThrottlingException": (
        "com.amazon.coral.availability#ThrottlingException", 400, "Rate of requests exceeds the allowed throughput."
    ),
    "RequestLimitExceeded": (
        PREFIX + "RequestLimitExceeded",
        400,
        "Throughput exceeds the current throughput limit for your account. "
        "Please contact AWS Support at https://aws.amazon.com/support request a limit increase",
    ),
    "InternalServerError": (PREFIX + "InternalServerError", 500, "Internal server error"),  # a fault: 500
}
_CREDENTIAL = re.compile(r"Credential=[^/]+/[^/]+/([^/]+)/")


def wipe() -> None:
    FAULTS.clear()
    _settings["delay_seconds"] = 0.0


def ttl_settings() -> dict:
    return dict(_settings)


def set_ttl_delay(seconds: float) -> dict:
    _settings["delay_seconds"] = float(seconds)
    return ttl_settings()


# ---------------------------------------------------------------- TTL

def _tables():
    for account in list(dict.values(dynamodb_backends)):
        for backend in list(dict.values(account)):
            yield from list(backend.tables.values())


def _expiry(item, attribute: str) -> float | None:
    """The item's TTL in epoch seconds, or None where DynamoDB's TTL ignores the item."""
    value = item.attrs.get(attribute)
    if value is None or value.type != "N":
        return None
    try:
        return float(value.value)
    except ValueError:
        return None


def _system_delete(table) -> None:
    # A TTL deletion enters the stream tagged as a service delete, not a user one.
    shard = table.stream_shard
    if shard is not None and shard.items and shard.items[-1].record.get("eventName") == "REMOVE":
        shard.items[-1].record["userIdentity"] = {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}


def sweep(t: float) -> int:
    """Delete the items whose TTL passed `delay_seconds` ago; how many were deleted."""
    deleted = 0
    for table in _tables():
        if table.ttl.get("TimeToLiveStatus") != "ENABLED" or not table.ttl.get("AttributeName"):
            continue
        for item in table.all_items():
            expiry = _expiry(item, table.ttl["AttributeName"])
            if expiry is None or t - expiry >= FIVE_YEARS or t <= expiry + _settings["delay_seconds"]:
                continue
            table.delete_item(item.hash_key, item.range_key)
            _system_delete(table)
            deleted += 1
    return deleted


# ---------------------------------------------------------------- faults

_model = botocore.session.get_session().get_service_model("dynamodb")


def check_fault(operation: str, code: str) -> None:
    """ValueError unless DynamoDB can answer `operation` with `code`."""
    if operation not in _model.operation_names:
        raise ValueError(f"unknown DynamoDB operation {operation!r}")
    if code not in ERRORS:
        raise ValueError(f"unsupported code {code!r}; one of {', '.join(ERRORS)}")
    allowed = [shape.name for shape in _model.operation_model(operation).error_shapes]
    if code not in allowed:
        raise ValueError(f"DynamoDB {operation} does not return {code}; it returns {', '.join(allowed)}")


def _tables_of(operation: str, body: dict) -> list[str]:
    if operation in ("TransactWriteItems", "TransactGetItems"):
        return [next(iter(item.values())).get("TableName") for item in body.get("TransactItems") or []]
    if operation in ("BatchWriteItem", "BatchGetItem"):
        return list((body.get("RequestItems") or {}).keys())
    return [body.get("TableName")]


def _body(rule, operation: str, request: dict, tables: list[str]) -> dict:
    error_type, _, message = ERRORS[rule.code]
    if rule.code != "TransactionCanceledException":
        return {"__type": error_type, "message": rule.message or message}
    # One reason per item, in order; the item of the rule's table (else the first) conflicts.
    items = request.get("TransactItems") or [{}]
    hit = tables.index(rule.match["table"]) if rule.match.get("table") in tables else 0
    reasons = [
        {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"} if i == hit else {"Code": "None"}
        for i in range(len(items))
    ]
    codes = ", ".join(r["Code"] for r in reasons)
    text = rule.message or f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]"
    return {"__type": error_type, "CancellationReasons": reasons, "Message": text}


def intercept(environ: dict):
    """An injected fault's (status, headers, body) for this DynamoDB request, or None.

    Reads the request body and puts it back for moto."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if not target.startswith("DynamoDB_20120810.") or not FAULTS.rules:
        return None
    operation = target.split(".", 1)[1]
    raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(raw)
    try:
        request = json.loads(raw or b"{}")
    except ValueError:
        return None  # moto answers malformed JSON itself
    found = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    region = found.group(1) if found else None
    tables = _tables_of(operation, request)
    contexts = [{"operation": operation, "region": region, "table": t} for t in tables or [None]]
    rule = next((r for r in FAULTS.rules if any(r.matches(c) for c in contexts)), None)
    if rule is None:
        return None
    FAULTS.fire(rule)
    body = json.dumps(_body(rule, operation, request, tables)).encode()
    headers = [
        ("Content-Type", "application/x-amz-json-1.0"),
        ("x-amzn-RequestId", uuid.uuid4().hex.upper()),
        ("x-amz-crc32", str(zlib.crc32(body) & 0xFFFFFFFF)),
        ("Content-Length", str(len(body))),
    ]
    return ERRORS[rule.code][1], headers, body
