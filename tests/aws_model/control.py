"""The /_smartscale/ control endpoints (docs/interfaces.md, "Test world control endpoints").

Every handler runs under asg_model.LOCK and answers JSON; a bad request is a 400 with
{"error": "..."} naming what is wrong.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Callable

import boto3
import botocore.session
from moto.moto_api._internal.models import moto_api_backend
from werkzeug.wrappers import Request, Response

import asg_model as model
import ddb_model
import prices_model
from rules import RuleBook

_REGIONS = set(boto3.session.Session().get_available_regions("ec2"))
_AUTOSCALING = botocore.session.get_session().get_service_model("autoscaling")


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _json(status: int, body) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _body(request: Request, allowed: dict[str, type | tuple]) -> dict:
    """The JSON object body, checked against {key: allowed types}; absent keys are None."""
    text = request.get_data(as_text=True)
    try:
        body = json.loads(text) if text.strip() else {}
    except ValueError:
        raise BadRequest(400, "body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(400, f"unknown field(s) {', '.join(unknown)}; expected some of {', '.join(allowed)}")
    for key, kinds in allowed.items():
        value = body.get(key)
        if value is not None and (isinstance(value, bool) and bool not in _tuple(kinds) or not isinstance(value, kinds)):
            raise BadRequest(400, f"\"{key}\" must be {_kind_name(kinds)} or null, got {json.dumps(value)}")
    return {key: body.get(key) for key in allowed}


def _tuple(kinds) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _kind_name(kinds) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
    return " or ".join(names.get(k, k.__name__) for k in _tuple(kinds))


def _count(value) -> int | None:
    if value is not None and value < 1:
        raise BadRequest(400, "\"count\" must be a positive integer, or null for until cleared")
    return value


def _region(value: str | None) -> str | None:
    if value is not None and value not in _REGIONS:
        raise BadRequest(400, f"unknown region {value!r}")
    return value


def _required(body: dict, key: str) -> str:
    if not body.get(key):
        raise BadRequest(400, f"\"{key}\" is required")
    return body[key]


# ---------------------------------------------------------------- handlers

def health(request: Request) -> Response:
    return _json(200, {"ok": True})


def clock(request: Request) -> Response:
    return _json(200, model.clock())


def advance(request: Request) -> Response:
    try:
        body = json.loads(request.get_data(as_text=True) or "null")
    except ValueError:
        raise BadRequest(400, "body must be JSON like {\"seconds\": 300}") from None
    seconds = body.get("seconds") if isinstance(body, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        raise BadRequest(400, "\"seconds\" must be a non-negative number")
    model.advance(float(seconds))
    ddb_model.sweep(model.now())
    return _json(200, model.clock())


def instances(request: Request) -> Response:
    return _json(200, model.instances())


def instance(request: Request, instance_id: str) -> Response:
    found = model.instance(instance_id)
    if found is None:
        raise BadRequest(404, f"unknown instance {instance_id}")
    return _json(200, found)


def rebalance_recommendation(request: Request, instance_id: str) -> Response:
    model.instances()  # registers instances moto attached by itself
    try:
        return _json(200, model.recommend_rebalance(instance_id))
    except KeyError:
        raise BadRequest(404, f"unknown instance {instance_id}") from None
    except ValueError as err:
        raise BadRequest(409, str(err)) from None


def add_launch_failure(request: Request) -> Response:
    body = _body(request, {"instance_type": str, "zone": str, "market": str, "group": str, "region": str,
                           "code": str, "count": int, "message": str})
    code = body["code"] or "InsufficientInstanceCapacity"
    if code not in model.LAUNCH_FAILURE_CODES and not body["message"]:
        raise BadRequest(400, f"code {code!r} needs a \"message\"; codes with AWS's wording built in: "
                              f"{', '.join(model.LAUNCH_FAILURE_CODES)}")
    if body["market"] not in (None, "spot", "on-demand"):
        raise BadRequest(400, "\"market\" must be \"spot\", \"on-demand\" or null")
    region = _region(body["region"])
    if body["zone"] and region and not body["zone"].startswith(region):
        raise BadRequest(400, f"zone {body['zone']} is not in region {region}")
    match = {key: body[key] for key in ("instance_type", "zone", "market", "group", "region")}
    rule = model.LAUNCH_FAILURES.add(code, _count(body["count"]), match, body["message"])
    return _json(200, rule.to_json())


def add_autoscaling_fault(request: Request) -> Response:
    body = _body(request, {"action": str, "code": str, "count": int, "group": str, "region": str, "message": str})
    action = _required(body, "action")
    if action not in _AUTOSCALING.operation_names:
        raise BadRequest(400, f"unknown Auto Scaling action {action!r}")
    code = body["code"] or "ScalingActivityInProgress"
    allowed = [s.metadata.get("error", {}).get("code", s.name) for s in _AUTOSCALING.operation_model(action).error_shapes]
    allowed.append("Throttling")  # every Query API action may be throttled
    if code not in allowed:
        raise BadRequest(400, f"{action} does not return {code}; it returns {', '.join(allowed)}")
    if code not in model.DEFAULT_FAULT_MESSAGES and not body["message"]:
        raise BadRequest(400, f"code {code!r} needs a \"message\"")
    match = {"action": action, "group": body["group"], "region": _region(body["region"])}
    rule = model.AUTOSCALING_FAULTS.add(code, _count(body["count"]), match, body["message"])
    return _json(200, rule.to_json())


def add_dynamodb_fault(request: Request) -> Response:
    body = _body(request, {"operation": str, "code": str, "count": int, "table": str, "region": str, "message": str})
    operation, code = _required(body, "operation"), _required(body, "code")
    try:
        ddb_model.check_fault(operation, code)
    except ValueError as err:
        raise BadRequest(400, str(err)) from None
    match = {"operation": operation, "table": body["table"], "region": _region(body["region"])}
    rule = ddb_model.FAULTS.add(code, _count(body["count"]), match, body["message"])
    return _json(200, rule.to_json())


def _rule_routes(book: Callable[[], RuleBook], add) -> dict:
    return {
        "POST": add,
        "GET": lambda request: _json(200, book().to_json()),
        "DELETE": lambda request: _json(200, {"cleared": book().clear()}),
    }


def _remove_rule(book: Callable[[], RuleBook]):
    def handler(request: Request, rule_id: str) -> Response:
        if not book().remove(rule_id):
            raise BadRequest(404, f"no rule {rule_id}")
        return _json(200, {"cleared": 1})
    return handler


def ttl_get(request: Request) -> Response:
    return _json(200, ddb_model.ttl_settings())


def ttl_set(request: Request) -> Response:
    body = _body(request, {"delay_seconds": (int, float)})
    delay = body["delay_seconds"]
    if delay is None or not math.isfinite(delay) or delay < 0:
        raise BadRequest(400, "\"delay_seconds\" must be a non-negative number")
    return _json(200, ddb_model.set_ttl_delay(delay))


def next_ip_add(request: Request) -> Response:
    body = _body(request, {"ip": str, "group": str, "zone": str, "region": str})
    ip = _required(body, "ip")
    if (body["group"] is None) == (body["zone"] is None):
        raise BadRequest(400, "give exactly one of \"group\" and \"zone\"")
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        raise BadRequest(400, f"\"ip\" must be an IPv4 address, got {ip!r}") from None
    try:
        entry = model.set_next_ip(ip, body["group"], body["zone"], _region(body["region"]))
    except ValueError as err:
        raise BadRequest(409 if "in use" in str(err) else 400, str(err)) from None
    return _json(200, entry.to_json())


def next_ip_list(request: Request) -> Response:
    return _json(200, [e.to_json() for e in model.NEXT_IPS])


def next_ip_clear(request: Request) -> Response:
    n = len(model.NEXT_IPS)
    model.NEXT_IPS.clear()
    return _json(200, {"cleared": n})


def _price(value, where: str):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or value <= 0):
        raise BadRequest(400, f"{where} must be a positive number (USD per hour), or null to remove it")
    return value


def _price_map(value, where: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise BadRequest(400, f"{where} must be an object of instance type -> price")
    return {k: _price(v, f"{where}[{k!r}]") for k, v in value.items()}


def _price_region(region: str | None) -> str:
    if not region:
        raise BadRequest(400, "\"region\" is required")
    return _region(region)


def prices_get(request: Request) -> Response:
    return _json(200, prices_model.prices_json(_price_region(request.args.get("region"))))


def prices_put(request: Request) -> Response:
    body = _body(request, {"region": str, "on_demand": dict, "spot": dict, "product_description": str})
    region = _price_region(body["region"])
    product = body["product_description"] or prices_model.LINUX
    if product not in prices_model.PRODUCT_DESCRIPTIONS:
        choices = ", ".join(prices_model.PRODUCT_DESCRIPTIONS)
        raise BadRequest(400, f"\"product_description\" must be one of {choices}")
    on_demand = _price_map(body["on_demand"] or {}, "\"on_demand\"")
    zones = {z.name for z in prices_model.zones(region)}
    spot = {}
    for zone, prices in (body["spot"] or {}).items():
        if zone not in zones:
            raise BadRequest(400, f"zone {zone!r} is not an Availability Zone of {region}: {', '.join(sorted(zones))}")
        spot[zone] = _price_map(prices, f"\"spot\"[{zone!r}]")
    prices_model.set_prices(region, on_demand, spot, product)
    return _json(200, prices_model.prices_json(region))


def prices_reset(request: Request) -> Response:
    return _json(200, {"reset": prices_model.reset_changed()})


def reset(request: Request) -> Response:
    moto_api_backend.reset()
    wipe()
    return _json(200, {"ok": True})


def wipe() -> None:
    model.wipe()
    ddb_model.wipe()
    prices_model.reset()  # after the clock went back to wall time


# ---------------------------------------------------------------- routing

ROUTES: dict[str, dict[str, Callable]] = {
    "/_smartscale/health": {"GET": health},
    "/_smartscale/clock": {"GET": clock},
    "/_smartscale/clock/advance": {"POST": advance},
    "/_smartscale/instances": {"GET": instances},
    "/_smartscale/launch-failures": _rule_routes(lambda: model.LAUNCH_FAILURES, add_launch_failure),
    "/_smartscale/autoscaling-faults": _rule_routes(lambda: model.AUTOSCALING_FAULTS, add_autoscaling_fault),
    "/_smartscale/dynamodb-faults": _rule_routes(lambda: ddb_model.FAULTS, add_dynamodb_fault),
    "/_smartscale/dynamodb-ttl": {"GET": ttl_get, "POST": ttl_set},
    "/_smartscale/next-private-ip": {"GET": next_ip_list, "POST": next_ip_add, "DELETE": next_ip_clear},
    "/_smartscale/prices": {"GET": prices_get, "PUT": prices_put, "DELETE": prices_reset},
    "/_smartscale/reset": {"POST": reset},
}
# /_smartscale/<collection>/<id>[/<verb>]
ITEM_ROUTES: dict[tuple[str, str], dict[str, Callable]] = {
    ("instances", ""): {"GET": instance},
    ("instances", "rebalance-recommendation"): {"POST": rebalance_recommendation},
    ("launch-failures", ""): {"DELETE": _remove_rule(lambda: model.LAUNCH_FAILURES)},
    ("autoscaling-faults", ""): {"DELETE": _remove_rule(lambda: model.AUTOSCALING_FAULTS)},
    ("dynamodb-faults", ""): {"DELETE": _remove_rule(lambda: ddb_model.FAULTS)},
}


def _route(path: str) -> tuple[dict[str, Callable], tuple]:
    if path in ROUTES:
        return ROUTES[path], ()
    parts = path.split("/")[2:]  # ["", "_smartscale", collection, id, verb?]
    if len(parts) in (2, 3):
        key = (parts[0], parts[2] if len(parts) == 3 else "")
        if key in ITEM_ROUTES and parts[1]:
            return ITEM_ROUTES[key], (parts[1],)
    raise BadRequest(404, f"unknown control endpoint {path}")


def handle(request: Request) -> Response:
    """Answer one control request; the caller holds model.LOCK."""
    path = request.path.rstrip("/")
    try:
        methods, args = _route(path)
        handler = methods.get(request.method)
        if handler is None:
            raise BadRequest(405, f"{request.path} expects {' or '.join(methods)}")
        return handler(request, *args)
    except BadRequest as err:
        return _json(err.status, {"error": str(err)})
