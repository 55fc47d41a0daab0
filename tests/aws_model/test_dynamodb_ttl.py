"""DynamoDB TTL on the model clock, as "How it works: DynamoDB Time to Live" describes it."""

from __future__ import annotations

from conftest import wait_for

TICK = 1.0  # the server's ticker runs every 0.2 s


def ttl_table(world, streams: bool = False) -> None:
    extra = {"StreamSpecification": {"StreamEnabled": True, "StreamViewType": "OLD_IMAGE"}} if streams else {}
    world.ddb.create_table(TableName="leases", BillingMode="PAY_PER_REQUEST",
                           KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                           AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}], **extra)
    world.ddb.update_time_to_live(TableName="leases",
                                  TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"})


def model_now(world) -> float:
    return world.http("GET", "/_smartscale/clock")[1]["now"]


def put(world, key: str, **attrs) -> None:
    world.ddb.put_item(TableName="leases", Item={"k": {"S": key}, **attrs})


def keys(world) -> set[str]:
    return {i["k"]["S"] for i in world.ddb.scan(TableName="leases")["Items"]}


def test_expired_number_items_are_deleted_and_others_never(world):
    ttl_table(world)
    now = model_now(world)
    put(world, "expired", expires={"N": str(int(now) - 10)})
    put(world, "future", expires={"N": str(int(now) + 3600)})
    put(world, "fractional", expires={"N": f"{now - 5:.3f}"})
    put(world, "string", expires={"S": str(int(now) - 10)})  # not a Number: ignored by TTL
    put(world, "absent")
    put(world, "ancient", expires={"N": str(int(now) - 6 * 365 * 86400)})  # five years or more: never deleted
    wait_for(lambda: "expired" not in keys(world), TICK + 4, "the ticker to delete the expired item")
    assert keys(world) == {"future", "string", "absent", "ancient"}
    world.advance(3601)
    assert keys(world) == {"string", "absent", "ancient"}
    world.advance(10 * 365 * 86400)
    assert keys(world) == {"string", "absent", "ancient"}


def test_expired_items_stay_readable_until_deleted(world):
    # "Items that have expired, but haven't yet been deleted by TTL, still appear in reads,
    # queries, and scans." ... "successful updates to change or remove the expiration
    # attribute will be honored."
    assert world.http("POST", "/_smartscale/dynamodb-ttl", {"delay_seconds": 3600}) == (200, {"delay_seconds": 3600.0})
    ttl_table(world)
    now = model_now(world)
    put(world, "kept", expires={"N": str(int(now) + 60)})
    put(world, "renewed", expires={"N": str(int(now) + 60)})
    world.advance(120)  # both expired, neither deleted yet
    assert world.ddb.get_item(TableName="leases", Key={"k": {"S": "kept"}})["Item"]["k"] == {"S": "kept"}
    got = world.ddb.query(TableName="leases", KeyConditionExpression="k = :k",
                          ExpressionAttributeValues={":k": {"S": "kept"}})
    assert got["Count"] == 1
    assert keys(world) == {"kept", "renewed"}
    world.ddb.update_item(TableName="leases", Key={"k": {"S": "renewed"}}, UpdateExpression="SET expires = :e",
                          ExpressionAttributeValues={":e": {"N": str(int(model_now(world)) + 86400)}})
    world.advance(3600)
    assert keys(world) == {"renewed"}


def test_ttl_only_after_it_is_enabled(world):
    world.ddb.create_table(TableName="leases", BillingMode="PAY_PER_REQUEST",
                           KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                           AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}])
    put(world, "old", expires={"N": "1000"})
    world.advance(1)
    assert keys(world) == {"old"}
    world.ddb.update_time_to_live(TableName="leases",
                                  TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"})
    described = world.ddb.describe_time_to_live(TableName="leases")["TimeToLiveDescription"]
    assert described == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires"}
    put(world, "recent", expires={"N": str(int(model_now(world)) - 1)})
    world.advance(1)
    # 1000 is more than five years ago: TTL leaves it alone.
    assert keys(world) == {"old"}
    world.ddb.update_time_to_live(TableName="leases",
                                  TimeToLiveSpecification={"Enabled": False, "AttributeName": "expires"})
    put(world, "after", expires={"N": str(int(model_now(world)) - 1)})
    world.advance(1)
    assert keys(world) == {"old", "after"}


def test_ttl_deletions_are_service_deletes_in_the_stream(world):
    # "A delete operation for each item enters the DynamoDB Stream, but is tagged as a system delete."
    ttl_table(world, streams=True)
    put(world, "gone", expires={"N": str(int(model_now(world)) + 30)})
    world.advance(31)
    assert keys(world) == set()
    streams = world.client("dynamodbstreams")
    arn = world.ddb.describe_table(TableName="leases")["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    records = streams.get_records(ShardIterator=iterator)["Records"]
    assert [r["eventName"] for r in records] == ["INSERT", "REMOVE"]
    assert records[1]["userIdentity"] == {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}
    assert "userIdentity" not in records[0]


def test_ttl_delay_validation(world):
    for bad in ({}, {"delay_seconds": -1}, {"delay_seconds": "1"}, {"delay": 1}):
        status, body = world.http("POST", "/_smartscale/dynamodb-ttl", bad)
        assert status == 400 and body["error"], bad
    assert world.http("GET", "/_smartscale/dynamodb-ttl") == (200, {"delay_seconds": 0.0})
