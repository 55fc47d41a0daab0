"""Prices: the Price List Query API's GetProducts ("AWS Billing and Cost Management API Reference",
GetProducts and Filter) and EC2 DescribeSpotPriceHistory (EC2 API Reference), served from the
prices set with /_smartscale/prices (defaults otherwise)."""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime, timezone

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

# The filters that pick the one Linux on-demand product of an instance type in a region.
LINUX = {"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}


def pricing(world, region: str = "us-east-1"):
    return boto3.client("pricing", region_name=region, endpoint_url=world.url, aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=Config(retries={"total_max_attempts": 1}))


def ec2(world, region: str):
    return boto3.client("ec2", region_name=region, endpoint_url=world.url, aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=Config(retries={"total_max_attempts": 1}))


def term_match(**fields) -> list[dict]:
    return [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in fields.items()]


def products(client, service: str = "AmazonEC2", **fields) -> list[dict]:
    resp = client.get_products(ServiceCode=service, Filters=term_match(**fields), FormatVersion="aws_v1")
    assert resp["FormatVersion"] == "aws_v1"
    assert all(isinstance(p, str) for p in resp["PriceList"])  # "Type: Array of strings"
    return [json.loads(p) for p in resp["PriceList"]]


def on_demand(doc: dict) -> float:
    (term,) = doc["terms"]["OnDemand"].values()
    (dimension,) = term["priceDimensions"].values()
    assert dimension["unit"] == "Hrs"
    return float(dimension["pricePerUnit"]["USD"])


def set_prices(world, **body) -> dict:
    status, answer = world.http("PUT", "/_smartscale/prices", {"region": world.region, **body})
    assert status == 200, answer
    return answer


def error_of(call, *args, **kwargs) -> dict:
    with pytest.raises(ClientError) as info:
        call(*args, **kwargs)
    return info.value.response


def model_now(world) -> float:
    return world.http("GET", "/_smartscale/clock")[1]["now"]


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


def history(client, **params) -> list[tuple[str, str, str, str]]:
    """(zone, instance type, product description, price) of every record, in the order served."""
    records = client.describe_spot_price_history(**params)["SpotPriceHistory"]
    return [(r["AvailabilityZone"], r["InstanceType"], r["ProductDescription"], r["SpotPrice"]) for r in records]


# ---------------------------------------------------------------- GetProducts

def test_the_linux_product_has_the_configured_on_demand_price(world):
    # "Returns a list of all products that match the filter criteria." PriceList: "The list of
    # products that match your filters. The list contains both the product metadata and the price
    # information. Type: Array of strings".
    set_prices(world, on_demand={"m5.large": 0.2})
    client = pricing(world)
    (doc,) = products(client, instanceType="m5.large", regionCode=world.region, **LINUX)
    assert on_demand(doc) == 0.2
    attrs = doc["product"]["attributes"]
    assert doc["product"]["productFamily"] == "Compute Instance" and doc["serviceCode"] == "AmazonEC2"
    assert {k: attrs[k] for k in ("instanceType", "regionCode", *LINUX)} == {
        "instanceType": "m5.large", "regionCode": world.region, **LINUX}
    assert attrs["licenseModel"] == "No License required" and attrs["vcpu"] == "2" and attrs["memory"] == "8 GiB"
    (key,) = doc["terms"]["OnDemand"]
    assert key == f"{doc['product']['sku']}.JRTCKXETXF"
    assert doc["version"] and doc["publicationDate"].endswith("Z")
    # location (the Region's name in the price list) picks the same product as regionCode.
    assert products(client, instanceType="m5.large", location=attrs["location"], **LINUX) == [doc]
    # Another region keeps its own (default) price.
    (default,) = products(client, instanceType="m5.large", regionCode="us-east-1", **LINUX)
    assert on_demand(default) == 0.096


@pytest.mark.parametrize("dropped", sorted(LINUX))
def test_every_filter_is_needed_to_get_the_linux_price(world, dropped):
    # Filters: "only products that match all filters are returned." Each decoy differs from the
    # Linux product in one attribute (Windows, Dedicated, capacity reservations, SQL Std) and price,
    # and comes first: a client that drops a filter and takes the first product gets a wrong price.
    client = pricing(world)
    kept = {k: v for k, v in LINUX.items() if k != dropped}
    found = products(client, instanceType="m5.large", regionCode="us-east-1", **kept)
    assert len(found) > 1
    assert all(on_demand(p) != 0.096 for p in found[:-1])
    assert found[0]["product"]["attributes"][dropped] != LINUX[dropped]
    linux = [p for p in found if p["product"]["attributes"][dropped] == LINUX[dropped]]
    assert len(linux) == 1 and on_demand(linux[0]) == 0.096
    assert len({p["product"]["sku"] for p in found}) == len(found)


def test_decoys_are_the_products_a_careless_filter_picks(world):
    client = pricing(world)
    found = products(client, instanceType="m5.large", regionCode="us-east-1")
    shapes = {(a["operatingSystem"], a["tenancy"], a["preInstalledSw"], a["capacitystatus"])
              for a in (p["product"]["attributes"] for p in found)}
    assert shapes == {
        ("Linux", "Shared", "NA", "Used"), ("Windows", "Shared", "NA", "Used"), ("Linux", "Dedicated", "NA", "Used"),
        ("Linux", "Shared", "NA", "AllocatedCapacityReservation"),
        ("Linux", "Shared", "NA", "UnusedCapacityReservation"),
        ("Linux", "Shared", "SQL Std", "Used"),
    }
    assert len({on_demand(p) for p in found}) == len(found)  # every decoy has its own price


def test_reserved_terms_are_not_the_on_demand_price(world):
    # A product lists its OnDemand and Reserved terms; only OnDemand is the on-demand price.
    (doc,) = products(pricing(world), instanceType="m5.large", regionCode="us-east-1", **LINUX)
    assert set(doc["terms"]) == {"OnDemand", "Reserved"}
    assert next(iter(doc["terms"])) == "Reserved"  # a client must not take the first term
    hourly = {float(d["pricePerUnit"]["USD"]) for t in doc["terms"]["Reserved"].values()
              for d in t["priceDimensions"].values() if d["unit"] == "Hrs"}
    assert hourly and 0.096 not in hourly
    options = {t["termAttributes"]["PurchaseOption"] for t in doc["terms"]["Reserved"].values()}
    assert options == {"No Upfront", "All Upfront"}


def test_field_names_match_in_any_case(world):
    # Field: "Valid values include: ServiceCode, and all attribute names" — while the products
    # carry the attribute as "servicecode": field names are matched whatever their case.
    client = pricing(world)
    exact = products(client, instanceType="t3.micro", regionCode="us-east-1", **LINUX)
    assert len(exact) == 1
    assert products(client, ServiceCode="AmazonEC2", INSTANCETYPE="t3.micro", RegionCode="us-east-1",
                    OperatingSystem="Linux", Tenancy="Shared", PreInstalledSW="NA", CapacityStatus="Used") == exact
    assert products(client, productFamily="Compute Instance", instanceType="t3.micro", regionCode="us-east-1",
                    **LINUX) == exact
    # Values are compared exactly (the model's choice; AWS documents no case rule for values).
    assert products(client, instanceType="t3.micro", regionCode="us-east-1", **{**LINUX, "tenancy": "shared"}) == []
    # Other filter types of the API: EQUALS, CONTAINS, ANY_OF, NONE_OF.
    resp = client.get_products(ServiceCode="AmazonEC2", Filters=[
        *term_match(instanceType="t3.micro", regionCode="us-east-1", tenancy="Shared", capacitystatus="Used"),
        {"Type": "ANY_OF", "Field": "operatingSystem", "Value": "Linux, Windows"},
        {"Type": "NONE_OF", "Field": "preInstalledSw", "Value": "SQL Std"},
        {"Type": "CONTAINS", "Field": "location", "Value": "Virginia"},
    ])
    assert sorted(json.loads(p)["product"]["attributes"]["operatingSystem"] for p in resp["PriceList"]) == [
        "Linux", "Windows"]


def test_unknown_instance_type_region_or_service_is_empty(world):
    client = pricing(world)
    assert products(client, instanceType="m5.huge", regionCode="us-east-1", **LINUX) == []
    assert products(client, instanceType="m5.large", regionCode="xx-nowhere-1", **LINUX) == []
    assert products(client, instanceType="m5.large", noSuchAttribute="x") == []
    assert products(client, "AmazonS3", regionCode="us-east-1") == []  # only AmazonEC2 is served
    # A type the test world prices shows up; removing its price (null) removes its products.
    set_prices(world, on_demand={"x9.test": 1.5})
    (doc,) = products(client, instanceType="x9.test", regionCode=world.region, **LINUX)
    assert on_demand(doc) == 1.5 and doc["product"]["attributes"]["vcpu"] == "NA"
    set_prices(world, on_demand={"x9.test": None, "m5.large": None})
    assert products(client, instanceType="m5.large", regionCode=world.region) == []


def test_pages_of_max_results_with_next_token(world):
    # MaxResults: "The maximum number of results to return in the response. Valid Range: Minimum
    # value of 1. Maximum value of 100." NextToken: "The pagination token that indicates the next
    # set of results to retrieve."
    client = pricing(world)
    filters = term_match(regionCode="us-east-1")
    first = client.get_products(ServiceCode="AmazonEC2", Filters=filters)
    assert len(first["PriceList"]) == 100 and first["NextToken"]  # the default page is 100
    pages, token = [], None
    while True:
        resp = client.get_products(ServiceCode="AmazonEC2", Filters=filters, MaxResults=7,
                                   **({"NextToken": token} if token else {}))
        assert len(resp["PriceList"]) <= 7
        pages.append(resp["PriceList"])
        token = resp.get("NextToken")
        if not token:
            break
    everything = [p for page in pages for p in page]
    assert all(len(page) == 7 for page in pages[:-1]) and everything[:100] == first["PriceList"]
    skus = [json.loads(p)["product"]["sku"] for p in everything]
    priced = world.http("GET", "/_smartscale/prices?region=us-east-1")[1]["on_demand"]
    assert len(skus) == len(set(skus)) == 6 * len(priced)
    paged = [p for page in client.get_paginator("get_products").paginate(ServiceCode="AmazonEC2", Filters=filters)
             for p in page["PriceList"]]
    assert paged == everything


def test_get_products_errors_in_the_api_shape(world):
    client = pricing(world)
    # InvalidNextTokenException: "The pagination token is invalid. Try again without a pagination
    # token." HTTP Status Code: 400. A token only pages the query it came from.
    err = error_of(client.get_products, ServiceCode="AmazonEC2", NextToken="not-a-token")
    assert err["Error"]["Code"] == "InvalidNextTokenException" and err["ResponseMetadata"]["HTTPStatusCode"] == 400
    token = client.get_products(ServiceCode="AmazonEC2", Filters=term_match(regionCode="us-east-1"))["NextToken"]
    err = error_of(client.get_products, ServiceCode="AmazonEC2", Filters=term_match(regionCode="eu-west-1"),
                   NextToken=token)
    assert err["Error"]["Code"] == "InvalidNextTokenException"
    err = error_of(client.get_products, ServiceCode="AmazonEC2", MaxResults=101)
    assert err["Error"]["Code"] == "ValidationException" and "less than or equal to 100" in err["Error"]["Message"]
    err = error_of(client.get_products, ServiceCode="AmazonEC2", FormatVersion="aws_v2")
    assert err["Error"]["Code"] == "InvalidParameterException"
    # ServiceCode is required (boto3 checks that itself): a raw request without it gets what AWS
    # answers (aws/aws-sdk-js#3329).
    status, headers, body = world.raw("pricing", b"{}", {
        "X-Amz-Target": "AWSPriceListService.GetProducts", "Content-Type": "application/x-amz-json-1.1",
        "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/pricing/aws4_request, "
                         "SignedHeaders=host, Signature=0"})
    assert status == 400 and headers["Content-Type"] == "application/x-amz-json-1.1"
    assert json.loads(body) == {"__type": "InvalidParameterException",
                                "Message": "Input Parameters are invalid. serviceCode cannot be null or empty"}


def test_only_the_price_list_regions_answer(world):
    # "You can use the following endpoints for the Price List Query API: api.pricing.us-east-1,
    # api.pricing.eu-central-1, api.pricing.ap-south-1 (.amazonaws.com)". The model sees no host
    # names: a request signed for another region is refused (403 InvalidSignatureException),
    # standing in for an endpoint that does not exist.
    for region in ("us-east-1", "eu-central-1", "ap-south-1"):
        assert len(products(pricing(world, region), instanceType="m5.large", regionCode="us-east-1", **LINUX)) == 1
    err = error_of(pricing(world, "us-west-2").get_products, ServiceCode="AmazonEC2")
    assert err["Error"]["Code"] == "InvalidSignatureException"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403 and "us-west-2" in err["Error"]["Message"]


# ---------------------------------------------------------------- DescribeSpotPriceHistory

def test_default_spot_prices_newest_first_per_zone(world):
    # "describes the price history for the specified Availability Zone with the most recent set of
    # prices listed first" (EC2 API Reference, DescribeSpotPriceHistory).
    client = ec2(world, "us-east-1")
    records = client.describe_spot_price_history(InstanceTypes=["m5.large"])["SpotPriceHistory"]
    stamps = [r["Timestamp"] for r in records]
    assert stamps == sorted(stamps, reverse=True)
    zones = {r["AvailabilityZone"] for r in records}
    assert len(zones) >= 3 and all(z.startswith("us-east-1") for z in zones)
    for zone in zones:
        newest, older = [float(r["SpotPrice"]) for r in records if r["AvailabilityZone"] == zone]
        assert 0.3 * 0.096 <= newest <= 0.4 * 0.096 and older > newest  # ~35 % of on-demand
    assert {r["ProductDescription"] for r in records} == {"Linux/UNIX"}
    assert all(r["AvailabilityZoneId"].startswith("use1-az") for r in records)
    assert moto_lies_no_more(records)


def moto_lies_no_more(records) -> bool:
    # moto's own answer: SpotPrice "0.00001" at 2006-01-02 for everything.
    return all(r["SpotPrice"] != "0.00001" and r["Timestamp"].year > 2006 for r in records)


def test_start_time_includes_the_price_in_effect_then(world):
    # "When you specify a start and end time, the operation returns the prices of the instance
    # types within that time range. It also returns the last price change before the start time,
    # which is the effective price as of the start time." EndTime: "up to the current date".
    zone = world.zones(1)[0]
    client = ec2(world, world.region)
    kind = {"InstanceTypes": ["m5.4xlarge"]}  # no default history
    stamps = []
    for price in (0.03, 0.04, 0.05):
        answer = set_prices(world, spot={zone: {"m5.4xlarge": price}})
        (newest,) = [r for r in answer["spot_history"] if r["instance_type"] == "m5.4xlarge"][:1]
        stamps.append(int(datetime.strptime(newest["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()))
        world.advance(600)
    t0, t1, t2 = stamps
    row = lambda price: (zone, "m5.4xlarge", "Linux/UNIX", f"{price:.6f}")  # noqa: E731
    # A range between changes: the changes in it, and the price in effect at its start.
    assert history(client, StartTime=at(t0 + 300), EndTime=at(t1 + 300), **kind) == [row(0.04), row(0.03)]
    # A start time and no end time: up to now.
    assert history(client, StartTime=at(t0 + 300), **kind) == [row(0.05), row(0.04), row(0.03)]
    # A start time at a change: that change is the price in effect, nothing older.
    assert history(client, StartTime=at(t1), **kind) == [row(0.05), row(0.04)]
    # Start time now: the current price only (one record per zone, type and product).
    assert history(client, StartTime=at(model_now(world)), **kind) == [row(0.05)]
    # An end time before the first change: nothing was in effect.
    assert history(client, StartTime=at(t0 - 900), EndTime=at(t0 - 300), **kind) == []
    # No times: the whole history; an end time in the future is the current date.
    assert history(client, **kind) == [row(0.05), row(0.04), row(0.03)]
    assert history(client, EndTime=at(model_now(world) + 86400), **kind) == [row(0.05), row(0.04), row(0.03)]
    # The timestamps are the model clock's, to the second.
    records = client.describe_spot_price_history(**kind)["SpotPriceHistory"]
    assert [int(r["Timestamp"].timestamp()) for r in records] == [t2, t1, t0]


def test_a_changed_spot_price_shows_up(world):
    zone = world.zones(1)[0]
    client = ec2(world, world.region)
    now = lambda: at(model_now(world))  # noqa: E731
    defaults = world.http("GET", f"/_smartscale/prices?region={world.region}")[1]
    kind = "c5.large" if "c5.large" in defaults["spot"][zone] else sorted(defaults["spot"][zone])[0]
    before = history(client, StartTime=now(), InstanceTypes=[kind], AvailabilityZone=zone)
    assert before == [(zone, kind, "Linux/UNIX", f"{defaults['spot'][zone][kind]:.6f}")]
    answer = set_prices(world, spot={zone: {kind: 0.0123}})
    assert answer["spot"][zone][kind] == 0.0123
    assert history(client, StartTime=now(), InstanceTypes=[kind], AvailabilityZone=zone) == [
        (zone, kind, "Linux/UNIX", "0.012300")]
    set_prices(world, spot={zone: {kind: 0.0124}})
    newest = history(client, InstanceTypes=[kind], AvailabilityZone=zone)
    assert newest[0][3] == "0.012400"
    # The history lists changes: the same price again adds no record.
    set_prices(world, spot={zone: {kind: 0.0124}})
    assert history(client, InstanceTypes=[kind], AvailabilityZone=zone) == newest
    status, read = world.http("GET", f"/_smartscale/prices?region={world.region}")
    assert status == 200 and read["spot"][zone][kind] == 0.0124
    first = read["spot_history"][0]
    assert first == {"availability_zone": zone, "instance_type": kind, "product_description": "Linux/UNIX",
                     "timestamp": first["timestamp"], "spot_price": 0.0124}


def test_only_linux_unix_unless_another_product_is_configured(world):
    # ProductDescriptions: "Filters the results by the specified basic product descriptions."
    zone = world.zones(1)[0]
    client = ec2(world, world.region)
    for product in ("Windows", "Linux/UNIX (Amazon VPC)", "SUSE Linux"):
        assert history(client, ProductDescriptions=[product], InstanceTypes=["m5.large"]) == []
    linux = history(client, ProductDescriptions=["Linux/UNIX"], InstanceTypes=["m5.large"],
                    StartTime=at(model_now(world)))
    assert linux and {r[2] for r in linux} == {"Linux/UNIX"}
    set_prices(world, product_description="Windows", spot={zone: {"m5.large": 0.09}})
    windows = history(client, ProductDescriptions=["Windows"], InstanceTypes=["m5.large"])
    assert windows == [(zone, "m5.large", "Windows", "0.090000")]
    both = history(client, InstanceTypes=["m5.large"], StartTime=at(model_now(world)), AvailabilityZone=zone)
    assert {r[2] for r in both} == {"Linux/UNIX", "Windows"}
    filtered = history(client, Filters=[{"Name": "product-description", "Values": ["Win*"]}],
                       InstanceTypes=["m5.large"])
    assert filtered == windows


def test_spot_filters_zone_and_type(world):
    # Filters: availability-zone, instance-type, product-description; AvailabilityZone and
    # AvailabilityZoneId: "Filters the results by the specified Availability Zone."
    client = ec2(world, world.region)
    zone_a, zone_b = world.zones(2)
    set_prices(world, spot={zone_a: {"x1.a": 0.5, "x1.b": 0.6}, zone_b: {"x1.a": 0.7}})
    types = {"Filters": [{"Name": "instance-type", "Values": ["x1.*"]}]}
    assert sorted(history(client, **types)) == [
        (zone_a, "x1.a", "Linux/UNIX", "0.500000"), (zone_a, "x1.b", "Linux/UNIX", "0.600000"),
        (zone_b, "x1.a", "Linux/UNIX", "0.700000")]
    assert history(client, AvailabilityZone=zone_b, **types) == [(zone_b, "x1.a", "Linux/UNIX", "0.700000")]
    by_filter = history(client, Filters=[{"Name": "availability-zone", "Values": [zone_b]},
                                         {"Name": "instance-type", "Values": ["x1.a"]}])
    assert by_filter == [(zone_b, "x1.a", "Linux/UNIX", "0.700000")]
    zone_id = world.ec2.describe_availability_zones(ZoneNames=[zone_a])["AvailabilityZones"][0]["ZoneId"]
    assert sorted(history(client, AvailabilityZoneId=zone_id, **types)) == [
        (zone_a, "x1.a", "Linux/UNIX", "0.500000"), (zone_a, "x1.b", "Linux/UNIX", "0.600000")]
    assert history(client, InstanceTypes=["x1.b"], AvailabilityZone=zone_b) == []


def test_spot_pages_with_next_token(world):
    # NextToken: "The token to include in another request to get the next page of items. This
    # value is an empty string ("") or null when there are no more items to return."
    client = ec2(world, "us-east-1")
    query = {"StartTime": at(model_now(world))}  # the current prices of every type and zone
    everything = client.describe_spot_price_history(**query)
    assert len(everything["SpotPriceHistory"]) > 50 and not everything.get("NextToken")
    records, token = [], None
    while True:
        resp = client.describe_spot_price_history(MaxResults=50, **query, **({"NextToken": token} if token else {}))
        assert len(resp["SpotPriceHistory"]) <= 50
        records += resp["SpotPriceHistory"]
        token = resp.get("NextToken")
        if not token:
            break
    assert records == everything["SpotPriceHistory"]
    pages = list(client.get_paginator("describe_spot_price_history").paginate(
        InstanceTypes=["m5.large", "t3.micro"], PaginationConfig={"PageSize": 3}))
    assert len(pages) > 1 and all(len(page["SpotPriceHistory"]) <= 3 for page in pages)
    assert [r for page in pages for r in page["SpotPriceHistory"]] == client.describe_spot_price_history(
        InstanceTypes=["m5.large", "t3.micro"])["SpotPriceHistory"]


def test_spot_errors_in_ec2_shape(world):
    client = ec2(world, world.region)
    err = error_of(client.describe_spot_price_history, NextToken="bogus")
    assert err["Error"]["Code"] == "InvalidPaginationToken"
    err = error_of(client.describe_spot_price_history, Filters=[{"Name": "flavour", "Values": ["x"]}])
    assert err["Error"]["Code"] == "InvalidParameterValue" and "flavour" in err["Error"]["Message"]
    # "Either AvailabilityZone or AvailabilityZoneId can be specified, but not both"
    zone = world.zones(1)[0]
    err = error_of(client.describe_spot_price_history, AvailabilityZone=zone, AvailabilityZoneId="x-az1")
    assert err["Error"]["Code"] == "InvalidParameterCombination"
    now = model_now(world)
    err = error_of(client.describe_spot_price_history, StartTime=at(now), EndTime=at(now - 60))
    assert err["Error"]["Code"] == "InvalidParameterValue"


# ---------------------------------------------------------------- control endpoint

def test_prices_control_endpoint_checks_its_input(world):
    zone = world.zones(1)[0]
    for body, fragment in [
        ({"on_demand": {"m5.large": 0.1}}, "\"region\" is required"),
        ({"region": "mars-1", "on_demand": {}}, "unknown region"),
        ({"region": world.region, "on_demand": {"m5.large": -1}}, "positive number"),
        ({"region": world.region, "on_demand": {"m5.large": "cheap"}}, "positive number"),
        ({"region": world.region, "spot": {"nowhere-1z": {"m5.large": 0.1}}}, "not an Availability Zone"),
        ({"region": world.region, "spot": {zone: 0.1}}, "instance type -> price"),
        ({"region": world.region, "product_description": "BeOS"}, "product_description"),
        ({"region": world.region, "prices": {}}, "unknown field"),
    ]:
        status, answer = world.http("PUT", "/_smartscale/prices", body)
        assert status == 400 and fragment in answer["error"], (body, answer)
    assert world.http("GET", "/_smartscale/prices")[0] == 400
    status, read = world.http("GET", "/_smartscale/prices?region=us-east-1")
    assert status == 200 and read["on_demand"]["m5.large"] == 0.096 and read["on_demand"]["t3.micro"] == 0.0104
    assert read["spot"]["us-east-1a"]["m5.large"] == round(0.096 * 0.34, 6)


def test_reset_restores_the_default_prices(world):
    zone = world.zones(1)[0]
    set_prices(world, on_demand={"m5.large": 9.0}, spot={zone: {"m5.large": 8.0}})
    client, spot = pricing(world), ec2(world, world.region)
    assert on_demand(products(client, instanceType="m5.large", regionCode=world.region, **LINUX)[0]) == 9.0
    # DELETE /_smartscale/prices restores the regions changed since their reset (the fixture does it).
    assert world.http("DELETE", "/_smartscale/prices") == (200, {"reset": [world.region]})
    assert on_demand(products(client, instanceType="m5.large", regionCode=world.region, **LINUX)[0]) == 0.096
    set_prices(world, on_demand={"m5.large": 9.0}, spot={zone: {"m5.large": 8.0}})
    # moto's reset wipes the model, prices included.
    reset = urllib.request.Request(world.url + "/moto-api/reset", method="POST")
    with urllib.request.urlopen(reset, timeout=120) as resp:
        assert resp.status == 200
    assert on_demand(products(client, instanceType="m5.large", regionCode=world.region, **LINUX)[0]) == 0.096
    current = history(spot, InstanceTypes=["m5.large"], AvailabilityZone=zone, StartTime=at(model_now(world)))
    assert len(current) == 1 and float(current[0][3]) < 0.096 * 0.4
    assert world.http("DELETE", "/_smartscale/prices") == (200, {"reset": []})
