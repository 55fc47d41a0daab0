"""ScalingActivityInProgress (documented conditions and injected) and injected DynamoDB
faults, in the wire shapes AWS uses."""

from __future__ import annotations

import json
import re

import pytest
from botocore.exceptions import ClientError


def error_of(call, *args, **kwargs) -> dict:
    with pytest.raises(ClientError) as info:
        call(*args, **kwargs)
    return info.value.response


def inject(world, path: str, **rule) -> dict:
    status, body = world.http("POST", path, rule)
    assert status == 200, body
    return body


def query(action: str, **params) -> bytes:
    pairs = {"Action": action, "Version": "2011-01-01", **params}
    return "&".join(f"{k}={v}" for k, v in pairs.items()).encode()


def table(world, name: str = "state") -> None:
    world.ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                           KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                           AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}])


def ddb_raw(world, operation: str, body: dict):
    return world.raw("dynamodb", json.dumps(body).encode(), {
        "X-Amz-Target": f"DynamoDB_20120810.{operation}", "Content-Type": "application/x-amz-json-1.0"})


# ------------------------------------------------------------------ ScalingActivityInProgress

def test_injected_scaling_activity_in_progress_for_the_next_calls(world):
    world.create_group(desired=1)
    world.wait_states(1, state="InService")
    rule = inject(world, "/_smartscale/autoscaling-faults", action="SetDesiredCapacity", count=2, region=world.region)
    assert rule["code"] == "ScalingActivityInProgress"
    for _ in range(2):
        err = error_of(world.asg.set_desired_capacity, AutoScalingGroupName="asg", DesiredCapacity=2)
        assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert err["Error"]["Code"] == "ScalingActivityInProgress" and err["Error"]["Type"] == "Sender"
        assert re.fullmatch(r"Scaling activity [0-9a-f-]{36} is in progress and blocks this action", err["Error"]["Message"])
    assert world.group()["DesiredCapacity"] == 1  # the failed calls changed nothing
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=2)
    world.wait_states(2, state="InService")
    assert world.http("GET", "/_smartscale/autoscaling-faults") == (200, [])


def test_injected_fault_wire_format_is_aws_xml(world):
    world.create_group()
    inject(world, "/_smartscale/autoscaling-faults", action="UpdateAutoScalingGroup", count=1)
    status, headers, xml = world.raw("autoscaling", query("UpdateAutoScalingGroup", AutoScalingGroupName="asg", MaxSize=3),
                                     {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and xml.startswith("<ErrorResponse"), xml
    assert "<Error><Type>Sender</Type><Code>ScalingActivityInProgress</Code><Message>Scaling activity " in xml
    assert "</Message></Error><RequestId>" in xml
    assert world.group()["MaxSize"] == 10


def test_injected_resource_contention_is_a_500(world):
    world.create_group()
    inject(world, "/_smartscale/autoscaling-faults", action="SetDesiredCapacity", code="ResourceContention", count=1)
    err = error_of(world.asg.set_desired_capacity, AutoScalingGroupName="asg", DesiredCapacity=1)
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 500 and err["Error"]["Code"] == "ResourceContention"
    assert err["Error"]["Message"].startswith("You already have a pending update to an Amazon EC2 Auto Scaling resource")


def test_faults_are_scoped_to_group_and_region(world):
    world.create_group(name="a")
    world.create_group(name="b", subnets=world.subnets(1))
    inject(world, "/_smartscale/autoscaling-faults", action="SetDesiredCapacity", group="a", region=world.region)
    inject(world, "/_smartscale/autoscaling-faults", action="SetDesiredCapacity", region="ap-south-2")
    world.asg.set_desired_capacity(AutoScalingGroupName="b", DesiredCapacity=1)
    for _ in range(3):  # no count: until cleared
        assert error_of(world.asg.set_desired_capacity, AutoScalingGroupName="a", DesiredCapacity=1)["Error"]["Code"] \
            == "ScalingActivityInProgress"
    _, cleared = world.http("DELETE", "/_smartscale/autoscaling-faults")
    assert cleared == {"cleared": 2}
    world.asg.set_desired_capacity(AutoScalingGroupName="a", DesiredCapacity=1)


def test_honor_cooldown_is_refused_while_an_activity_is_in_progress(world):
    world.create_group()
    world.put_hook("asg", "launch", "LAUNCHING")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    (iid,) = world.wait_states(1, state="Pending:Wait")
    launch = world.activities()[0]
    assert launch["StatusCode"] == "MidLifecycleAction"
    err = error_of(world.asg.set_desired_capacity, AutoScalingGroupName="asg", DesiredCapacity=2, HonorCooldown=True)
    assert err["Error"]["Code"] == "ScalingActivityInProgress"
    assert err["Error"]["Message"] == f"Scaling activity {launch['ActivityId']} is in progress and blocks this action"
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=2, HonorCooldown=False)
    assert world.group()["DesiredCapacity"] == 2


def test_terminating_an_instance_that_is_already_terminating(world):
    world.create_group(desired=2)
    world.put_hook("asg", "drain", "TERMINATING")
    iid = sorted(world.wait_states(2, state="InService"))[0]
    first = world.asg.terminate_instance_in_auto_scaling_group(InstanceId=iid, ShouldDecrementDesiredCapacity=True)
    err = error_of(world.asg.terminate_instance_in_auto_scaling_group, InstanceId=iid, ShouldDecrementDesiredCapacity=True)
    assert err["Error"]["Code"] == "ScalingActivityInProgress"
    assert first["Activity"]["ActivityId"] in err["Error"]["Message"]
    assert world.group()["DesiredCapacity"] == 1  # decremented once


def test_delete_group_refuses_without_force_delete(world):
    # DeleteAutoScalingGroup: "If the group has instances or scaling activities in progress, you
    # must specify the option to force the deletion in order for it to succeed."
    world.create_group(desired=1)
    world.wait_states(1, state="InService")
    err = error_of(world.asg.delete_auto_scaling_group, AutoScalingGroupName="asg")
    assert err["Error"]["Code"] == "ResourceInUse"
    assert err["Error"]["Message"] == ("You cannot delete an AutoScalingGroup while there are instances or pending "
                                       "Spot instance request(s) still in the group.")
    world.put_hook("asg", "drain", "TERMINATING")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=0)
    err = error_of(world.asg.delete_auto_scaling_group, AutoScalingGroupName="asg")
    assert err["Error"]["Code"] == "ScalingActivityInProgress"
    assert err["Error"]["Message"] == ("You cannot delete an AutoScalingGroup while there are scaling activities "
                                       "in progress for that group.")
    world.asg.delete_auto_scaling_group(AutoScalingGroupName="asg", ForceDelete=True)
    assert world.asg.describe_auto_scaling_groups(AutoScalingGroupNames=["asg"])["AutoScalingGroups"] == []
    world.create_group(name="empty", subnets=world.subnets(1))
    world.asg.delete_auto_scaling_group(AutoScalingGroupName="empty")  # nothing in it: no force needed


def test_autoscaling_fault_validation(world):
    post = lambda body: world.http("POST", "/_smartscale/autoscaling-faults", body)  # noqa: E731
    for bad in ({}, {"action": "SetDesiredCapacty"}, {"action": "DescribeAutoScalingGroups", "code": "ScalingActivityInProgress"},
                {"action": "SetDesiredCapacity", "count": -1}, {"action": "SetDesiredCapacity", "times": 2}):
        status, body = post(bad)
        assert status == 400 and body["error"], bad
    status, body = post({"action": "DescribeAutoScalingGroups", "code": "Throttling", "count": 1})
    assert status == 200
    err = error_of(world.asg.describe_auto_scaling_groups)
    assert err["Error"]["Code"] == "Throttling" and err["Error"]["Message"] == "Rate exceeded"


# ------------------------------------------------------------------ DynamoDB faults

def test_transaction_conflict_in_dynamodb_json(world):
    table(world)
    inject(world, "/_smartscale/dynamodb-faults", operation="TransactWriteItems", code="TransactionCanceledException",
           count=1, region=world.region)
    items = [{"Put": {"TableName": "state", "Item": {"k": {"S": "lease"}}}},
             {"Put": {"TableName": "state", "Item": {"k": {"S": "fence"}}}}]
    status, headers, text = ddb_raw(world, "TransactWriteItems", {"TransactItems": items})
    assert status == 400 and headers["Content-Type"] == "application/x-amz-json-1.0"
    assert json.loads(text) == {
        "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        "CancellationReasons": [{"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"},
                                {"Code": "None"}],
        "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons [TransactionConflict, None]",
    }
    assert "Item" not in world.ddb.get_item(TableName="state", Key={"k": {"S": "lease"}})  # nothing was written
    world.ddb.transact_write_items(TransactItems=items)  # the one injected failure is spent
    assert "Item" in world.ddb.get_item(TableName="state", Key={"k": {"S": "lease"}})


def test_sdk_sees_the_cancellation_reasons(world):
    table(world)
    inject(world, "/_smartscale/dynamodb-faults", operation="TransactWriteItems", code="TransactionCanceledException")
    err = error_of(world.ddb.transact_write_items,
                   TransactItems=[{"Put": {"TableName": "state", "Item": {"k": {"S": "x"}}}}])
    assert err["Error"]["Code"] == "TransactionCanceledException"
    assert err["CancellationReasons"] == [{"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}]


@pytest.mark.parametrize("operation,code,status,message", [
    ("PutItem", "ProvisionedThroughputExceededException", 400,
     "The level of configured provisioned throughput for the table was exceeded. "
     "Consider increasing your provisioning level with the UpdateTable API."),
    ("GetItem", "ThrottlingException", 400, "Rate of requests exceeds the allowed throughput."),
    ("UpdateItem", "InternalServerError", 500, "Internal server error"),
    ("PutItem", "TransactionConflictException", 400, "Transaction is ongoing for the item"),
])
def test_dynamodb_error_shapes(world, operation, code, status, message):
    table(world)
    inject(world, "/_smartscale/dynamodb-faults", operation=operation, code=code, count=1)
    body = {"TableName": "state", "Key": {"k": {"S": "a"}}} if operation != "PutItem" else \
        {"TableName": "state", "Item": {"k": {"S": "a"}}}
    got, headers, text = ddb_raw(world, operation, body)
    assert got == status
    prefix = "com.amazon.coral.availability#" if code == "ThrottlingException" else "com.amazonaws.dynamodb.v20120810#"
    assert json.loads(text) == {"__type": prefix + code, "message": message}
    assert int(headers["x-amz-crc32"]) >= 0 and headers["x-amzn-RequestId"]


def test_dynamodb_faults_through_the_sdk_and_scoping(world):
    table(world)
    table(world, "other")
    inject(world, "/_smartscale/dynamodb-faults", operation="PutItem", code="ProvisionedThroughputExceededException",
           table="other", count=2)
    world.ddb.put_item(TableName="state", Item={"k": {"S": "a"}})  # another table: untouched
    err = error_of(world.ddb.put_item, TableName="other", Item={"k": {"S": "a"}})
    assert err["Error"]["Code"] == "ProvisionedThroughputExceededException"
    _, listed = world.http("GET", "/_smartscale/dynamodb-faults")
    assert [(r["table"], r["count"], r["fired"]) for r in listed] == [("other", 1, 1)]
    error_of(world.ddb.put_item, TableName="other", Item={"k": {"S": "a"}})
    world.ddb.put_item(TableName="other", Item={"k": {"S": "a"}})


def test_dynamodb_fault_validation(world):
    post = lambda body: world.http("POST", "/_smartscale/dynamodb-faults", body)  # noqa: E731
    for bad in ({"operation": "PutItem"}, {"operation": "PutItems", "code": "InternalServerError"},
                {"operation": "PutItem", "code": "TransactionCanceledException"},
                {"operation": "GetItem", "code": "TransactionConflictException"},
                {"operation": "PutItem", "code": "Nope"}, {"operation": "PutItem", "code": "InternalServerError", "count": 0}):
        status, body = post(bad)
        assert status == 400 and body["error"], bad
    status, body = post({"operation": "PutItem", "code": "InternalServerError"})
    assert status == 200 and body["count"] is None
    assert world.http("DELETE", f"/_smartscale/dynamodb-faults/{body['id']}") == (200, {"cleared": 1})
