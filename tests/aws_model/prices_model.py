"""Prices: the AWS Price List Query API (GetProducts) and EC2 DescribeSpotPriceHistory.

moto has no Price List service and answers DescribeSpotPriceHistory with SpotPrice
"0.00001", a 2006 timestamp, and no regard for ProductDescriptions or the time range.
This module serves configured prices instead (control endpoint /_smartscale/prices):

- GetProducts (JSON 1.1, X-Amz-Target AWSPriceListService.GetProducts) for ServiceCode
  AmazonEC2: per configured on-demand price, the Linux/Shared/NA/Used product AND decoys
  that differ from it in one attribute each (Windows, Dedicated, two capacity
  reservation statuses, SQL Std), each with another price, listed before it; the right
  product also carries Reserved terms. Every PriceList element is a JSON string.
- DescribeSpotPriceHistory: a price history per (region, zone, instance type, product
  description), newest first, with the price in effect at StartTime.

Defaults (reset() and every wipe): DEFAULT_ON_DEMAND (us-east-1 Linux list prices) in every
region where moto offers the type, spot at SPOT_FACTORS of it per zone with two history
points. Runs under asg_model.LOCK (the server takes it around every EC2 and pricing request).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import uuid
from datetime import datetime, timezone
from fnmatch import fnmatchcase

import boto3
import botocore.session
from botocore.utils import parse_timestamp
from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.availability_zones_and_regions import RegionsAndZonesBackend
from moto.ec2.models.instance_types import INSTANCE_TYPE_OFFERINGS, INSTANCE_TYPES
from moto.ec2.responses.spot_instances import SpotInstances

import asg_model as model

# ---------------------------------------------------------------- defaults

# us-east-1 Linux on-demand list prices (USD per hour); the model uses them in every region.
DEFAULT_ON_DEMAND = {
    "t3.nano": 0.0052, "t3.micro": 0.0104, "t3.small": 0.0208, "t3.medium": 0.0416, "t3.large": 0.0832,
    "t3.xlarge": 0.1664, "t3.2xlarge": 0.3328,
    "t3a.nano": 0.0047, "t3a.micro": 0.0094, "t3a.small": 0.0188, "t3a.medium": 0.0376, "t3a.large": 0.0752,
    "t3a.xlarge": 0.1504, "t3a.2xlarge": 0.3008,
    "t4g.micro": 0.0084, "t4g.small": 0.0168, "t4g.medium": 0.0336, "t4g.large": 0.0672,
    "m5.large": 0.096, "m5.xlarge": 0.192, "m5.2xlarge": 0.384, "m5a.large": 0.086,
    "m6i.large": 0.096, "m6i.xlarge": 0.192, "m6a.large": 0.0864, "m6g.large": 0.077,
    "m7g.large": 0.0816, "m7g.xlarge": 0.1632, "m7i.large": 0.1008,
    "c5.large": 0.085, "c5.xlarge": 0.17, "c6i.large": 0.085, "c6g.large": 0.068, "c7g.large": 0.0725,
    "r5.large": 0.126, "r5.xlarge": 0.252, "r6i.large": 0.126, "r6g.large": 0.1008,
}
# Spot = on-demand x factor, by the zone's position in its region (a, b, c, ...).
SPOT_FACTORS = (0.34, 0.35, 0.36, 0.37, 0.33, 0.38)
# The default history: 1.1 x the price from 25 h before the reset, the price from 1 h before.
DEFAULT_SPOT_HISTORY = ((25 * 3600, 1.1), (3600, 1.0))
LINUX = "Linux/UNIX"
# DescribeSpotPriceHistory's documented product descriptions (Filters, product-description).
PRODUCT_DESCRIPTIONS = (
    "Linux/UNIX", "Red Hat Enterprise Linux", "SUSE Linux", "Windows", "Linux/UNIX (Amazon VPC)",
    "Red Hat Enterprise Linux (Amazon VPC)", "SUSE Linux (Amazon VPC)", "Windows (Amazon VPC)",
)
# "You can use the following endpoints for the Price List Query API" (AWS Billing User Guide).
PRICING_REGIONS = ("us-east-1", "eu-central-1", "ap-south-1")
REGIONS = tuple(boto3.session.Session().get_available_regions("ec2"))

_on_demand: dict[str, dict[str, float]] = {}
# (region, zone, instance type, product description) -> [(epoch seconds, price)], oldest first
_spot: dict[tuple[str, str, str, str], list[tuple[float, float]]] = {}
_published: dict[str, float] = {}  # region -> when its prices were last set (version, publicationDate)
_changed: set[str] = set()  # regions changed through the control endpoint since their reset


def zones(region: str) -> list:
    return [z for z in RegionsAndZonesBackend.zones.get(region, []) if z.zone_type == "availability-zone"]


def _offered(region: str) -> dict[str, set[str]] | None:
    """instance type -> zones moto offers it in; None where moto has no offering list."""
    offerings = INSTANCE_TYPE_OFFERINGS["availability-zone"].get(region) or []
    if not offerings:
        return None
    out: dict[str, set[str]] = {}
    for o in offerings:
        out.setdefault(o["InstanceType"], set()).add(o["Location"])
    return out


def _second(t: float) -> float:
    # Whole seconds: EC2 shows spot timestamps to the second (".000Z"), and a timestamp read
    # back from a response must name the same point when sent as StartTime.
    return float(math.floor(t))


def reset(regions=None) -> None:
    """Default prices for `regions` (all when None)."""
    now = model.now()
    for region in REGIONS if regions is None else regions:
        offered = _offered(region)
        _on_demand[region] = {t: p for t, p in DEFAULT_ON_DEMAND.items() if offered is None or t in offered}
        for key in [k for k in _spot if k[0] == region]:
            del _spot[key]
        for i, zone in enumerate(zones(region)):
            factor = SPOT_FACTORS[i % len(SPOT_FACTORS)]
            for itype, price in _on_demand[region].items():
                if offered is not None and zone.name not in offered.get(itype, ()):
                    continue
                _spot[(region, zone.name, itype, LINUX)] = [
                    (_second(now - ago), round(price * factor * scale, 6)) for ago, scale in DEFAULT_SPOT_HISTORY
                ]
        _published[region] = now
        _changed.discard(region)


def reset_changed() -> list[str]:
    """Restore the defaults of the regions changed since their reset; which they were."""
    changed = sorted(_changed)
    reset(changed)
    return changed


# ---------------------------------------------------------------- control endpoint

def set_prices(region: str, on_demand: dict, spot: dict, product: str) -> None:
    """Already validated: on_demand {type: price|None}, spot {zone: {type: price|None}}."""
    now = _second(model.now())
    for itype, price in on_demand.items():
        if price is None:
            _on_demand[region].pop(itype, None)
        else:
            _on_demand[region][itype] = float(price)
    for zone, prices in spot.items():
        for itype, price in prices.items():
            key = (region, zone, itype, product)
            if price is None:
                _spot.pop(key, None)
                continue
            history = _spot.setdefault(key, [])
            if history and history[-1][0] >= now:  # same instant: the new price replaces it
                history[-1] = (history[-1][0], float(price))
            elif not history or history[-1][1] != float(price):  # the history lists changes
                history.append((now, float(price)))
    _published[region] = model.now()
    _changed.add(region)


def prices_json(region: str) -> dict:
    current = {}
    records = []
    for (r, zone, itype, product), history in _spot.items():
        if r != region or not history:
            continue
        if product == LINUX:
            current.setdefault(zone, {})[itype] = history[-1][1]
        records += [{"availability_zone": zone, "instance_type": itype, "product_description": product,
                     "timestamp": _iso(t), "spot_price": p} for t, p in history]
    records.sort(key=lambda rec: rec["timestamp"], reverse=True)
    return {"region": region, "on_demand": dict(sorted(_on_demand[region].items())),
            "spot": {z: dict(sorted(v.items())) for z, v in sorted(current.items())}, "spot_history": records}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ---------------------------------------------------------------- Price List Query API: products

# Pricing's location names: the Region names, with "EU (...)" for Europe.
_loader = botocore.session.get_session().get_component("data_loader")
LOCATIONS = {
    region: info["description"].replace("Europe (", "EU (")
    for partition in _loader.load_data("endpoints")["partitions"] if partition["partition"] == "aws"
    for region, info in partition["regions"].items()
}
# usagetype prefixes (us-east-1 has none); other regions get a derived one.
_USAGE_PREFIX = {
    "us-east-1": "", "us-east-2": "USE2-", "us-west-1": "USW1-", "us-west-2": "USW2-", "ca-central-1": "CAN1-",
    "eu-west-1": "EU-", "eu-west-2": "EUW2-", "eu-west-3": "EUW3-", "eu-central-1": "EUC1-", "eu-north-1": "EUN1-",
    "eu-south-1": "EUS1-", "ap-northeast-1": "APN1-", "ap-northeast-2": "APN2-", "ap-northeast-3": "APN3-",
    "ap-southeast-1": "APS1-", "ap-southeast-2": "APS2-", "ap-south-1": "APS3-", "sa-east-1": "SAE1-",
    "af-south-1": "AFS1-", "ap-east-1": "APE1-", "me-south-1": "MES1-",
}
ON_DEMAND_TERM = "JRTCKXETXF"
HOURLY_RATE = "6YS6EN2CT7"
UPFRONT_RATE = "2TG2D8R56U"
# (offer term code, purchase option, hourly share of on-demand, upfront share of a year on demand)
RESERVED_TERMS = (("4NA7Y494T4", "No Upfront", 0.63, 0.0), ("6QCMYABX3D", "All Upfront", 0.0, 0.59))
_FAMILIES = {"t": "General purpose", "m": "General purpose", "c": "Compute optimized", "r": "Memory optimized",
             "x": "Memory optimized", "i": "Storage optimized", "g": "GPU instance", "p": "GPU instance"}


def _variants(price: float, vcpu: int) -> list[tuple[str, dict, float, str, bool]]:
    """(name, attributes that differ from the Linux product, price, description words, has Reserved terms).

    The decoys come first, so a client that drops a filter and takes the first product is wrong."""
    return [
        ("windows", {"operatingSystem": "Windows", "operation": "RunInstances:0002"},
         price + 0.046 * vcpu, "On Demand Windows", True),
        ("dedicated", {"tenancy": "Dedicated", "usage": "DedicatedUsage"}, price * 1.1, "Dedicated Linux", True),
        ("allocated-cr", {"capacitystatus": "AllocatedCapacityReservation", "usage": "Reservation"},
         price * 1.25, "Reservation Linux", False),
        ("unused-cr", {"capacitystatus": "UnusedCapacityReservation", "usage": "UnusedBox"},
         price * 1.5, "Unused Reservation Linux", False),
        ("sql-std", {"preInstalledSw": "SQL Std", "operation": "RunInstances:0004"},
         price + 0.12 * vcpu, "On Demand Linux with SQL Std", True),
        ("linux", {}, price, "On Demand Linux", True),
    ]


def _sku(region: str, itype: str, variant: str) -> str:
    digest = hashlib.sha256(f"{region}|{itype}|{variant}".encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def _usd(value: float) -> dict:
    return {"USD": f"{value:.10f}"}


def _dimension(sku: str, term: str, rate: str, unit: str, value: float, description: str) -> tuple[str, dict]:
    code = f"{sku}.{term}.{rate}"
    return code, {"unit": unit, "endRange": "Inf", "description": description, "appliesTo": [], "rateCode": code,
                  "beginRange": "0", "pricePerUnit": _usd(value)}


def _memory(mib: int | None) -> str:
    if not mib:
        return "NA"
    gib = mib / 1024
    return f"{gib:g} GiB"


def _products(region: str) -> list[dict]:
    """Every product of the region, as (attributes, builder) pairs in the order served."""
    out = []
    for itype, price in sorted(_on_demand[region].items()):
        info = INSTANCE_TYPES.get(itype, {})
        vcpu = info.get("VCpuInfo", {}).get("DefaultVCpus") or 0
        arch = info.get("ProcessorInfo", {}).get("SupportedArchitectures") or ["x86_64"]
        area, direction, number = region.split("-")
        prefix = _USAGE_PREFIX.get(region, f"{area.upper()}{direction[0].upper()}{number}-")
        base = {
            "instanceType": itype, "regionCode": region, "location": LOCATIONS.get(region, region),
            "locationType": "AWS Region", "servicecode": "AmazonEC2", "servicename": "Amazon Elastic Compute Cloud",
            "operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used",
            "licenseModel": "No License required", "marketoption": "OnDemand", "operation": "RunInstances",
            "vcpu": str(vcpu) if vcpu else "NA", "memory": _memory(info.get("MemoryInfo", {}).get("SizeInMiB")),
            "instanceFamily": _FAMILIES.get(itype[0], "General purpose"), "currentGeneration": "Yes",
            "processorArchitecture": "64-bit", "storage": "EBS only",
            "physicalProcessor": "AWS Graviton" if "arm64" in arch else "Intel Xeon Family",
        }
        for name, diff, variant_price, words, reserved in _variants(price, vcpu):
            attrs = dict(base, **{k: v for k, v in diff.items() if k != "usage"})
            attrs["usagetype"] = f"{prefix}{diff.get('usage', 'BoxUsage')}:{itype}"
            out.append({"region": region, "itype": itype, "variant": name, "attributes": attrs,
                        "price": variant_price, "words": words, "reserved": reserved})
    return out


def _document(p: dict) -> str:
    sku = _sku(p["region"], p["itype"], p["variant"])
    published = datetime.fromtimestamp(_published[p["region"]], tz=timezone.utc)
    effective = published.strftime("%Y-%m-%dT%H:%M:%SZ")
    itype, price = p["itype"], p["price"]
    code, dim = _dimension(sku, ON_DEMAND_TERM, HOURLY_RATE, "Hrs", price,
                           f"${price:.4f} per {p['words']} {itype} Instance Hour")
    terms: dict = {}
    if p["reserved"]:  # listed first: a client must pick "OnDemand", not the first term
        reserved = {}
        for term, option, hourly, upfront in RESERVED_TERMS:
            dims = dict([_dimension(sku, term, HOURLY_RATE, "Hrs", price * hourly,
                                    f"{p['words'].replace('On Demand ', '')} {itype} reserved instance applied")])
            if upfront:
                dims.update([_dimension(sku, term, UPFRONT_RATE, "Quantity", round(price * upfront * 8760),
                                        "Upfront Fee")])
            reserved[f"{sku}.{term}"] = {
                "priceDimensions": dims, "sku": sku, "effectiveDate": effective, "offerTermCode": term,
                "termAttributes": {"LeaseContractLength": "1yr", "OfferingClass": "standard",
                                   "PurchaseOption": option},
            }
        terms["Reserved"] = reserved
    terms["OnDemand"] = {f"{sku}.{ON_DEMAND_TERM}": {
        "priceDimensions": {code: dim}, "sku": sku, "effectiveDate": effective, "offerTermCode": ON_DEMAND_TERM,
        "termAttributes": {},
    }}
    doc = {
        "product": {"productFamily": "Compute Instance", "attributes": p["attributes"], "sku": sku},
        "serviceCode": "AmazonEC2", "terms": terms,
        "version": published.strftime("%Y%m%d%H%M%S"), "publicationDate": effective,
    }
    return json.dumps(doc)


# ---------------------------------------------------------------- Price List Query API: GetProducts

FILTER_TYPES = ("TERM_MATCH", "EQUALS", "CONTAINS", "ANY_OF", "NONE_OF")
MAX_RESULTS = 100
_CREDENTIAL = re.compile(r"Credential=[^/]+/[^/]+/([^/]+)/")
_SERVICE_CODE = re.compile(r"^[a-zA-Z0-9]+$")


class PricingError(Exception):
    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _validation(value, where: str, constraint: str) -> PricingError:
    shown = "null" if value is None else f"'{value}'"
    return PricingError("ValidationException", f"1 validation error detected: Value {shown} at '{where}' "
                                               f"failed to satisfy constraint: {constraint}")


def _matches(product: dict, field: str, kind: str, value: str) -> bool:
    name = field.lower()  # field names match whatever their case ("ServiceCode" is the attribute servicecode)
    if name == "productfamily":
        actual = "Compute Instance"
    else:
        actual = next((v for k, v in product["attributes"].items() if k.lower() == name), None)
    if actual is None:
        return False  # a product without the attribute matches no filter on it
    if kind in ("TERM_MATCH", "EQUALS"):
        return actual == value
    if kind == "CONTAINS":
        return value in actual
    values = [v.strip() for v in value.split(",")]
    return (actual in values) == (kind == "ANY_OF")


def _filters(body: dict) -> list[tuple[str, str, str]]:
    filters = body.get("Filters")
    if filters is None:
        return []
    if not isinstance(filters, list):
        raise PricingError("SerializationException", "Unexpected value for Filters: expected a list")
    if len(filters) > 50:
        raise _validation(None, "filters", "Member must have length less than or equal to 50")
    out = []
    for i, f in enumerate(filters, 1):
        if not isinstance(f, dict):
            raise PricingError("SerializationException", f"Unexpected value for Filters[{i - 1}]: expected an object")
        for member in ("Type", "Field", "Value"):
            if not isinstance(f.get(member), str):
                raise _validation(f.get(member), f"filters.{i}.member.{member[0].lower()}{member[1:]}",
                                  "Member must not be null")
        if f["Type"] not in FILTER_TYPES:
            raise _validation(f["Type"], f"filters.{i}.member.type",
                              f"Member must satisfy enum value set: [{', '.join(FILTER_TYPES)}]")
        out.append((f["Type"], f["Field"], f["Value"]))
    return out


def _token(offset: int, query: str) -> str:
    # Shaped like AWS's ("<base64>:<base64>"), opaque to clients, bound to the query it pages.
    head = base64.b64encode(hashlib.md5(query.encode()).digest()).decode()
    tail = base64.b64encode(json.dumps({"offset": offset}).encode()).decode()
    return f"{head}:{tail}"


def _offset(token: str, query: str) -> int:
    invalid = PricingError("InvalidNextTokenException",
                           "The pagination token is invalid. Try again without a pagination token.")
    try:
        head, tail = token.split(":", 1)
        offset = json.loads(base64.b64decode(tail, validate=True))["offset"]
    except (ValueError, KeyError, TypeError):
        raise invalid from None
    if head != _token(0, query).split(":", 1)[0] or not isinstance(offset, int) or offset < 0:
        raise invalid
    return offset


def get_products(body: dict) -> dict:
    service = body.get("ServiceCode")
    if not service:  # what AWS answers (aws/aws-sdk-js#3329)
        raise PricingError("InvalidParameterException",
                           "Input Parameters are invalid. serviceCode cannot be null or empty")
    if not isinstance(service, str) or not _SERVICE_CODE.match(service):
        raise PricingError("InvalidParameterException", "ServiceCode can only contain a-z, A-Z, 0-9")
    version = body.get("FormatVersion", "aws_v1")
    if version != "aws_v1":
        raise PricingError("InvalidParameterException",
                           f"Input Parameters are invalid. Invalid format version: {version}")
    size = body.get("MaxResults", MAX_RESULTS)
    if isinstance(size, bool) or not isinstance(size, int):
        raise PricingError("SerializationException", "Unexpected value for MaxResults: expected an integer")
    if size < 1:
        raise _validation(size, "maxResults", "Member must have value greater than or equal to 1")
    if size > MAX_RESULTS:
        raise _validation(size, "maxResults", f"Member must have value less than or equal to {MAX_RESULTS}")
    filters = _filters(body)
    query = json.dumps([service, sorted(filters), version])
    start = _offset(body["NextToken"], query) if body.get("NextToken") else 0
    products = []
    if service == "AmazonEC2":
        # Skip regions a regionCode/location filter rules out before building their products.
        by_region = [(k, f, v) for k, f, v in filters if f.lower() in ("regioncode", "location")]
        for region in REGIONS:
            probe = {"attributes": {"regionCode": region, "location": LOCATIONS.get(region, region)}}
            if all(_matches(probe, f, k, v) for k, f, v in by_region):
                products += [p for p in _products(region) if all(_matches(p, f, k, v) for k, f, v in filters)]
    page = products[start:start + size]
    out = {"FormatVersion": version, "PriceList": [_document(p) for p in page]}
    if start + size < len(products):
        out["NextToken"] = _token(start + size, query)
    return out


def pricing(environ) -> tuple[int, list[tuple[str, str]], bytes]:
    """Answer one Price List Query API request: (status, headers, body)."""
    operation = environ.get("HTTP_X_AMZ_TARGET", "").split(".", 1)[-1]
    raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    try:
        found = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        region = found.group(1) if found else None
        if region is not None and region not in PRICING_REGIONS:
            # AWS has no api.pricing.<region> endpoint here (the SDK's request would not resolve);
            # the model answers what a Price List endpoint says to a credential scoped elsewhere.
            raise PricingError("InvalidSignatureException",
                               f"Credential should be scoped to a valid region, not '{region}'. ", 403)
        if operation != "GetProducts":
            raise PricingError("UnknownOperationException", f"The model serves GetProducts only, not {operation}")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise PricingError("SerializationException", "Request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise PricingError("SerializationException", "Request body must be a JSON object")
        status, payload = 200, get_products(body)
    except PricingError as err:
        status, payload = err.status, {"__type": err.code, "Message": err.message}
    data = json.dumps(payload).encode()
    headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", str(uuid.uuid4())),
               ("Content-Length", str(len(data)))]
    if status != 200:
        headers.append(("x-amzn-ErrorType", payload["__type"]))
    return status, headers, data


# ---------------------------------------------------------------- EC2 DescribeSpotPriceHistory

SPOT_MAX_RESULTS = 1000
_SPOT_FILTERS = ("availability-zone", "availability-zone-id", "instance-type", "product-description",
                 "spot-price", "timestamp")


def _epoch(value) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        stamp = value
    else:
        try:
            stamp = parse_timestamp(value)
        except (ValueError, TypeError):
            raise EC2ClientError("InvalidParameterValue", f"Value ({value}) for parameter time is invalid.") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def _window(history: list[tuple[float, float]], start: float | None, end: float) -> list[tuple[float, float]]:
    """The points in effect at some moment of [start, end]: the one in effect at start, then the changes."""
    if start is None:
        return [p for p in history if p[0] <= end]
    at_start = [p for p in history if p[0] <= start][-1:]
    return at_start + [p for p in history if start < p[0] <= end]


def spot_price_history(region: str, params: dict) -> tuple[list[dict], str | None]:
    filters = params["filters"]
    unknown = sorted(set(filters) - set(_SPOT_FILTERS))
    if unknown:
        raise EC2ClientError("InvalidParameterValue", f"The filter '{unknown[0]}' is invalid")
    if params["zone"] and params["zone_id"]:
        raise EC2ClientError("InvalidParameterCombination",
                             "Either AvailabilityZone or AvailabilityZoneId can be specified, but not both")
    size = params["max_results"]
    if size is not None and not 1 <= size <= SPOT_MAX_RESULTS:
        raise EC2ClientError("InvalidParameterValue",
                             f"Value ( {size} ) for parameter maxResults is invalid. "
                             f"Expecting a value between 1 and {SPOT_MAX_RESULTS}.")
    start, end = _epoch(params["start"]), _epoch(params["end"])
    if start is not None and end is not None and start > end:
        raise EC2ClientError("InvalidParameterValue", "The start time must be before the end time.")
    end = model.now() if end is None else min(end, model.now())  # "up to the current date"
    ids = {z.name: z.zone_id for z in zones(region)}

    def wanted(name: str, actual: str) -> bool:  # a filter's values are alternatives, with wildcards
        return name not in filters or any(fnmatchcase(actual, v) for v in filters[name])

    def chosen(param: str, actual: str) -> bool:
        return not params[param] or actual in (params[param] if isinstance(params[param], list) else [params[param]])

    records = []
    for (r, zone, itype, product), history in _spot.items():
        zone_id = ids.get(zone, "")
        if r != region or not (chosen("zone", zone) and chosen("zone_id", zone_id) and chosen("types", itype)
                               and chosen("products", product)):
            continue
        if not (wanted("availability-zone", zone) and wanted("availability-zone-id", zone_id)
                and wanted("instance-type", itype) and wanted("product-description", product)):
            continue
        for t, price in _window(history, start, end):
            stamp = datetime.fromtimestamp(t, tz=timezone.utc)
            if wanted("spot-price", f"{price:.6f}") and wanted("timestamp", stamp.strftime("%Y-%m-%dT%H:%M:%SZ")):
                records.append({"AvailabilityZone": zone, "AvailabilityZoneId": zone_id, "InstanceType": itype,
                                "ProductDescription": product, "SpotPrice": f"{price:.6f}", "Timestamp": stamp})
    # Newest first; ties in a stable order.
    records.sort(key=lambda rec: (-rec["Timestamp"].timestamp(), rec["AvailabilityZone"], rec["InstanceType"],
                                  rec["ProductDescription"]))
    query = json.dumps([region, sorted((k, sorted(v)) for k, v in filters.items()), params["types"],
                        params["products"], params["zone"], params["zone_id"], params["start"], params["end"]],
                       default=str)
    offset = 0
    if params["token"]:
        try:
            offset = _offset(params["token"], query)
        except PricingError:
            raise EC2ClientError("InvalidPaginationToken",
                                 "The specified pagination token is not valid or is expired.") from None
    size = size or SPOT_MAX_RESULTS
    page = records[offset:offset + size]
    token = _token(offset + size, query) if offset + size < len(records) else None
    return page, token


def _resp_describe_spot_price_history(self) -> ActionResult:
    params = {
        "types": list(self._get_param("InstanceTypes", []) or []),
        "products": list(self._get_param("ProductDescriptions", []) or []),
        "filters": self._filters_from_querystring(),
        "zone": self._get_param("AvailabilityZone"),
        "zone_id": self._get_param("AvailabilityZoneId"),
        "start": self._get_param("StartTime"),
        "end": self._get_param("EndTime"),
        "max_results": self._get_int_param("MaxResults"),
        "token": self._get_param("NextToken"),
    }
    self.error_on_dryrun()
    page, token = spot_price_history(self.region, params)
    result = {"SpotPriceHistory": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def install() -> None:
    """Patch moto's DescribeSpotPriceHistory and set the default prices."""
    SpotInstances.describe_spot_price_history = _resp_describe_spot_price_history
    reset()
