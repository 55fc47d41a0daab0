"""The AWS model (smartscale_aws.py) against boto3, as the AWS Auto Scaling docs describe it."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from botocore.exceptions import ClientError

from conftest import start_server, wait_for

CONTROL_FIELDS = {
    "instance_id", "region", "asg_name", "availability_zone", "subnet_id", "instance_type",
    "market", "lifecycle_state", "target_lifecycle_state", "ec2_state", "private_ip", "private_dns_name",
    "protected_from_scale_in", "launch_time", "rebalance_recommendation_time", "in_warm_pool", "warm_pool_state",
}


def validation_error(call, *args, **kwargs) -> str:
    """Run an API call that must fail with HTTP 400 ValidationError; return the message."""
    with pytest.raises(ClientError) as info:
        call(*args, **kwargs)
    err = info.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400, err
    assert err["Error"]["Code"] == "ValidationError", err
    assert err["Error"]["Type"] == "Sender", err
    return err["Error"]["Message"]


def is_uuid(text: str) -> bool:
    return str(uuid.UUID(text)) == text


# ------------------------------------------------------------------ hooks

def test_hook_defaults_describe_and_delete(world):
    world.create_group()
    world.put_hook("asg", "plain", "LAUNCHING")
    world.put_hook("asg", "short", "TERMINATING", HeartbeatTimeout=300, DefaultResult="CONTINUE")
    hooks = {h["LifecycleHookName"]: h for h in world.asg.describe_lifecycle_hooks(AutoScalingGroupName="asg")["LifecycleHooks"]}
    assert hooks["plain"]["HeartbeatTimeout"] == 3600
    assert hooks["plain"]["DefaultResult"] == "ABANDON"
    assert hooks["plain"]["GlobalTimeout"] == 172800
    assert hooks["plain"]["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
    assert hooks["short"]["HeartbeatTimeout"] == 300
    assert hooks["short"]["DefaultResult"] == "CONTINUE"
    assert hooks["short"]["GlobalTimeout"] == 30000  # 100 x HeartbeatTimeout

    world.asg.delete_lifecycle_hook(AutoScalingGroupName="asg", LifecycleHookName="plain")
    names = [h["LifecycleHookName"] for h in world.asg.describe_lifecycle_hooks(AutoScalingGroupName="asg")["LifecycleHooks"]]
    assert names == ["short"]
    msg = validation_error(world.asg.delete_lifecycle_hook, AutoScalingGroupName="asg", LifecycleHookName="plain")
    assert msg.startswith("No Lifecycle Hook found")


def test_instances_without_hooks_behave_as_before(world):
    world.create_group(desired=2)
    states = world.wait_states(2, state="InService")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    remaining = world.wait_states(1, state="InService")
    gone = (set(states) - set(remaining)).pop()
    assert world.ec2_state(gone) == "terminated"
    assert world.model(gone)["lifecycle_state"] == "Terminated"


def test_launch_hook_continue_by_token(world):
    queue_url, queue_arn = world.queue()
    world.create_group()
    world.put_hook("asg", "launch", "LAUNCHING", NotificationTargetARN=queue_arn,
                   RoleARN="arn:aws:iam::123456789012:role/hooks", NotificationMetadata="node-group=workers")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    (iid,) = world.wait_states(1, state="Pending:Wait")

    [note] = world.messages(queue_url, 1)
    assert note["EC2InstanceId"] == iid
    assert note["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
    assert note["LifecycleHookName"] == "launch"
    assert note["NotificationMetadata"] == "node-group=workers"
    assert is_uuid(note["LifecycleActionToken"])

    described = world.asg.describe_auto_scaling_instances(InstanceIds=[iid])["AutoScalingInstances"][0]
    assert described["LifecycleState"] == "Pending:Wait"
    rec = world.model(iid)
    assert (rec["lifecycle_state"], rec["target_lifecycle_state"], rec["ec2_state"]) == ("Pending:Wait", "InService", "running")

    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="launch",
                                        LifecycleActionToken=note["LifecycleActionToken"], LifecycleActionResult="CONTINUE")
    world.wait_states({iid: "InService"})
    # The token is spent.
    msg = validation_error(world.asg.complete_lifecycle_action, AutoScalingGroupName="asg", LifecycleHookName="launch",
                           LifecycleActionToken=note["LifecycleActionToken"], LifecycleActionResult="CONTINUE")
    assert msg == f"No active Lifecycle Action found with token {note['LifecycleActionToken']}"


def test_launch_hook_from_create_group_continue_by_instance_id(world):
    world.create_group(desired=2, LifecycleHookSpecificationList=[
        {"LifecycleHookName": "launch", "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING"}])
    ids = world.wait_states(2, state="Pending:Wait")
    first, second = sorted(ids)
    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="launch",
                                        InstanceId=first, LifecycleActionResult="CONTINUE")
    world.wait_states({first: "InService", second: "Pending:Wait"})


def test_launch_abandon_terminates_and_replaces(world):
    queue_url, queue_arn = world.queue()
    world.create_group()
    world.put_hook("asg", "launch", "LAUNCHING", NotificationTargetARN=queue_arn)
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    (first,) = world.wait_states(1, state="Pending:Wait")
    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="launch",
                                        InstanceId=first, LifecycleActionResult="ABANDON")
    current = world.wait_states(1, state="Pending:Wait")
    (replacement,) = current
    assert replacement != first
    assert world.group()["DesiredCapacity"] == 1
    assert world.ec2_state(first) == "terminated"
    assert world.model(first)["lifecycle_state"] == "Terminated"
    # The replacement gets its own lifecycle action and token.
    notes = world.messages(queue_url, 2)
    assert [n["EC2InstanceId"] for n in notes] == [first, replacement]
    assert notes[0]["LifecycleActionToken"] != notes[1]["LifecycleActionToken"]
    launch = next(a for a in world.activities() if a["Description"] == f"Launching a new EC2 instance: {first}")
    assert launch["StatusCode"] == "Cancelled"
    assert "abandoned" in launch["StatusMessage"]


def test_terminate_hook_with_decrement(world):
    world.create_group(desired=2, min_size=1)
    world.put_hook("asg", "drain", "TERMINATING")
    ids = sorted(world.wait_states(2, state="InService"))
    victim, keeper = ids
    resp = world.asg.terminate_instance_in_auto_scaling_group(InstanceId=victim, ShouldDecrementDesiredCapacity=True)
    assert resp["Activity"]["Description"] == f"Terminating EC2 instance: {victim}"

    group = world.group()
    assert group["DesiredCapacity"] == 1  # decremented at once
    assert {i["InstanceId"]: i["LifecycleState"] for i in group["Instances"]} == {victim: "Terminating:Wait", keeper: "InService"}
    assert world.ec2_state(victim) == "running"
    rec = world.model(victim)
    assert (rec["lifecycle_state"], rec["target_lifecycle_state"]) == ("Terminating:Wait", "Terminated")
    assert world.model(keeper)["target_lifecycle_state"] == "InService"

    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="drain",
                                        InstanceId=victim, LifecycleActionResult="CONTINUE")
    world.wait_states({keeper: "InService"})
    assert world.ec2_state(victim) == "terminated"
    assert world.model(victim)["ec2_state"] == "terminated"


def test_terminate_without_decrement_replaces_and_abandon_terminates(world):
    queue_url, queue_arn = world.queue()
    world.create_group(desired=1)
    world.put_hook("asg", "drain", "TERMINATING", NotificationTargetARN=queue_arn)
    (old,) = world.wait_states(1, state="InService")
    world.asg.terminate_instance_in_auto_scaling_group(InstanceId=old, ShouldDecrementDesiredCapacity=False)
    states = wait_for(lambda: len(world.states()) == 2 and world.states(), what="replacement")
    new = (set(states) - {old}).pop()
    assert states == {old: "Terminating:Wait", new: "InService"}
    assert world.group()["DesiredCapacity"] == 1

    [note] = world.messages(queue_url, 1)
    assert note["EC2InstanceId"] == old and note["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="drain",
                                        LifecycleActionToken=note["LifecycleActionToken"], LifecycleActionResult="ABANDON")
    world.wait_states({new: "InService"})
    assert world.ec2_state(old) == "terminated"


def test_scale_in_waits_on_terminate_hook(world):
    world.create_group(desired=3)
    world.put_hook("asg", "drain", "TERMINATING", HeartbeatTimeout=600)
    world.wait_states(3, state="InService")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    states = world.states()
    waiting = sorted(i for i, s in states.items() if s == "Terminating:Wait")
    assert len(waiting) == 2 and len(states) == 3
    assert world.group()["DesiredCapacity"] == 1
    for iid in waiting:
        assert world.ec2_state(iid) == "running"
        world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="drain",
                                            InstanceId=iid, LifecycleActionResult="CONTINUE")
    world.wait_states(1, state="InService")


def test_scale_out_raise_enters_pending_wait(world):
    world.create_group(desired=1)
    (first,) = world.wait_states(1, state="InService")
    world.put_hook("asg", "launch", "LAUNCHING")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=3)
    states = world.states()
    assert states[first] == "InService"
    assert sorted(states.values()) == ["InService", "Pending:Wait", "Pending:Wait"]


def test_two_launch_hooks_both_must_continue(world):
    world.create_group()
    world.put_hook("asg", "a", "LAUNCHING")
    world.put_hook("asg", "b", "LAUNCHING")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    (iid,) = world.wait_states(1, state="Pending:Wait")
    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="a", InstanceId=iid, LifecycleActionResult="CONTINUE")
    assert world.states() == {iid: "Pending:Wait"}
    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="b", InstanceId=iid, LifecycleActionResult="CONTINUE")
    world.wait_states({iid: "InService"})


# ------------------------------------------------------------------ timeouts

def test_heartbeat_extends_past_original_timeout(world):
    queue_url, queue_arn = world.queue()
    world.create_group()
    world.put_hook("asg", "launch", "LAUNCHING", HeartbeatTimeout=300, DefaultResult="ABANDON", NotificationTargetARN=queue_arn)
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    (iid,) = world.wait_states(1, state="Pending:Wait")
    [note] = world.messages(queue_url, 1)

    world.advance(200)
    world.asg.record_lifecycle_action_heartbeat(AutoScalingGroupName="asg", LifecycleHookName="launch", InstanceId=iid)
    world.advance(200)  # 400 s after launch: past the original 300 s
    assert world.states() == {iid: "Pending:Wait"}
    world.asg.record_lifecycle_action_heartbeat(AutoScalingGroupName="asg", LifecycleHookName="launch",
                                                LifecycleActionToken=note["LifecycleActionToken"])
    world.advance(290)
    assert world.states() == {iid: "Pending:Wait"}
    world.advance(20)  # 310 s after the last heartbeat: DefaultResult ABANDON, then a replacement
    states = wait_for(lambda: iid not in world.states() and world.states(), what="abandoned launch replaced")
    assert list(states.values()) == ["Pending:Wait"]
    assert world.ec2_state(iid) == "terminated"


def test_default_result_continue_after_timeout(world):
    world.create_group()
    world.put_hook("asg", "launch", "LAUNCHING", HeartbeatTimeout=60, DefaultResult="CONTINUE")
    world.put_hook("asg", "drain", "TERMINATING", HeartbeatTimeout=120, DefaultResult="ABANDON")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    (iid,) = world.wait_states(1, state="Pending:Wait")
    world.advance(59)
    assert world.states() == {iid: "Pending:Wait"}
    world.advance(2)
    world.wait_states({iid: "InService"})

    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=0)
    assert world.states() == {iid: "Terminating:Wait"}
    world.advance(121)  # terminate hooks end in termination whatever the DefaultResult
    world.wait_states({})
    assert world.ec2_state(iid) == "terminated"


def test_default_abandon_after_timeout_launches_replacement(world):
    world.create_group()
    world.put_hook("asg", "launch", "LAUNCHING", HeartbeatTimeout=30)
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=2)
    first = world.wait_states(2, state="Pending:Wait")
    world.advance(31)
    second = world.wait_states(2, state="Pending:Wait")
    assert not set(first) & set(second)
    assert all(world.ec2_state(i) == "terminated" for i in first)


def test_global_timeout_caps_heartbeats(world):
    world.create_group()
    world.put_hook("asg", "launch", "LAUNCHING", HeartbeatTimeout=30, DefaultResult="CONTINUE")  # global: 3000 s
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    (iid,) = world.wait_states(1, state="Pending:Wait")
    for _ in range(119):  # 2975 s of heartbeats every 25 s
        world.advance(25)
        world.asg.record_lifecycle_action_heartbeat(AutoScalingGroupName="asg", LifecycleHookName="launch", InstanceId=iid)
    world.advance(20)  # 2995 s
    world.asg.record_lifecycle_action_heartbeat(AutoScalingGroupName="asg", LifecycleHookName="launch", InstanceId=iid)
    assert world.states() == {iid: "Pending:Wait"}
    world.advance(10)  # 3005 s: heartbeat deadline is 3025 s, the global limit wins
    world.wait_states({iid: "InService"})


def test_background_thread_applies_timeouts(world):
    world.create_group()
    world.put_hook("asg", "launch", "LAUNCHING", HeartbeatTimeout=30, DefaultResult="CONTINUE")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    (iid,) = world.wait_states(1, state="Pending:Wait")
    world.advance(29.9)  # due in 0.1 s of wall time; then no request for a second
    time.sleep(1.0)
    _, clock = world.http("GET", "/_smartscale/clock")
    activity = next(a for a in world.activities() if a["Description"].endswith(iid))
    assert activity["StatusCode"] == "Successful"
    finished = activity["EndTime"].timestamp()
    assert finished < clock["now"] - 0.4, "the ticker, not the next request, applied the timeout"


# ------------------------------------------------------------------ errors

def test_lifecycle_action_errors(world):
    world.create_group(desired=1)
    world.put_hook("asg", "launch", "LAUNCHING")
    (iid,) = world.wait_states(1, state="InService")  # launched before the hook existed
    token = str(uuid.uuid4())
    complete = world.asg.complete_lifecycle_action
    heartbeat = world.asg.record_lifecycle_action_heartbeat

    msg = validation_error(complete, AutoScalingGroupName="asg", LifecycleHookName="launch",
                           LifecycleActionToken=token, LifecycleActionResult="CONTINUE")
    assert msg == f"No active Lifecycle Action found with token {token}"
    msg = validation_error(heartbeat, AutoScalingGroupName="asg", LifecycleHookName="launch", LifecycleActionToken=token)
    assert msg == f"No active Lifecycle Action found with token {token}"
    msg = validation_error(complete, AutoScalingGroupName="asg", LifecycleHookName="launch",
                           InstanceId=iid, LifecycleActionResult="CONTINUE")
    assert msg == f"No active Lifecycle Action found with instance ID {iid}"
    msg = validation_error(heartbeat, AutoScalingGroupName="asg", LifecycleHookName="launch", InstanceId=iid)
    assert msg == f"No active Lifecycle Action found with instance ID {iid}"
    msg = validation_error(complete, AutoScalingGroupName="asg", LifecycleHookName="nope",
                           InstanceId=iid, LifecycleActionResult="CONTINUE")
    assert msg.startswith("No Lifecycle Hook found")
    validation_error(heartbeat, AutoScalingGroupName="asg", LifecycleHookName="nope", InstanceId=iid)

    # A real token, but a wrong result value.
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=2)
    waiting = next(i for i, s in world.states().items() if s == "Pending:Wait")
    validation_error(complete, AutoScalingGroupName="asg", LifecycleHookName="launch",
                     InstanceId=waiting, LifecycleActionResult="MAYBE")
    assert world.states()[waiting] == "Pending:Wait"


def test_unknown_group_errors(world):
    a = world.asg
    calls = [
        (a.set_desired_capacity, dict(DesiredCapacity=1)),
        (a.complete_lifecycle_action, dict(LifecycleHookName="h", InstanceId="i-1", LifecycleActionResult="CONTINUE")),
        (a.record_lifecycle_action_heartbeat, dict(LifecycleHookName="h", InstanceId="i-1")),
        (a.put_lifecycle_hook, dict(LifecycleHookName="h", LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING")),
        (a.delete_lifecycle_hook, dict(LifecycleHookName="h")),
        (a.describe_lifecycle_hooks, {}),
        (a.update_auto_scaling_group, dict(MaxSize=3)),
        (a.attach_instances, dict(InstanceIds=["i-1"])),
        (a.detach_instances, dict(InstanceIds=["i-1"], ShouldDecrementDesiredCapacity=False)),
        (a.enter_standby, dict(InstanceIds=["i-1"], ShouldDecrementDesiredCapacity=False)),
        (a.exit_standby, dict(InstanceIds=["i-1"])),
        (a.set_instance_protection, dict(InstanceIds=["i-1"], ProtectedFromScaleIn=True)),
        (a.suspend_processes, {}),
        (a.resume_processes, {}),
        (a.describe_load_balancers, {}),
        (a.describe_load_balancer_target_groups, {}),
        (a.attach_load_balancers, dict(LoadBalancerNames=["lb"])),
        (a.enable_metrics_collection, dict(Granularity="1Minute")),
        (a.describe_warm_pool, {}),
        (a.put_scaling_policy, dict(PolicyName="p", AdjustmentType="ChangeInCapacity", ScalingAdjustment=1)),
        (a.delete_auto_scaling_group, {}),
    ]
    for call, params in calls:
        msg = validation_error(call, AutoScalingGroupName="no-such-group", **params)
        assert "not found" in msg, (call, msg)


def test_unknown_instance_termination_error(world):
    world.create_group(desired=1)
    msg = validation_error(world.asg.terminate_instance_in_auto_scaling_group,
                           InstanceId="i-0123456789abcdef0", ShouldDecrementDesiredCapacity=True)
    assert msg == "Instance Id not found - No managed instance found for instance ID: i-0123456789abcdef0"


def test_decrement_below_min_error(world):
    world.create_group(desired=1, min_size=1)
    (iid,) = world.wait_states(1, state="InService")
    msg = validation_error(world.asg.terminate_instance_in_auto_scaling_group, InstanceId=iid, ShouldDecrementDesiredCapacity=True)
    assert msg.startswith("Currently, desiredSize equals minSize (1).")
    assert world.states() == {iid: "InService"}


def test_set_desired_capacity_bounds(world):
    world.create_group(desired=2, min_size=1, max_size=10)
    msg = validation_error(world.asg.set_desired_capacity, AutoScalingGroupName="asg", DesiredCapacity=11)
    assert msg == "New SetDesiredCapacity value 11 is above max value 10 for the AutoScalingGroup."
    msg = validation_error(world.asg.set_desired_capacity, AutoScalingGroupName="asg", DesiredCapacity=0)
    assert msg == "New SetDesiredCapacity value 0 is below min value 1 for the AutoScalingGroup."
    assert world.group()["DesiredCapacity"] == 2
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=10)
    world.wait_states(10, state="InService")
    msg = validation_error(world.create_group, name="big", desired=11, max_size=10)
    assert msg == "Desired capacity:11 must be between the specified min size:0 and max size:10"
    with pytest.raises(ClientError) as info:
        world.create_group(desired=1)
    assert info.value.response["Error"]["Code"] == "AlreadyExists"
    assert world.group()["DesiredCapacity"] == 10


def test_error_wire_format_is_aws_xml(world):
    """Raw HTTP: XML ErrorResponse with status 400, not moto's HTML 500."""
    body = "Action=SetDesiredCapacity&Version=2011-01-01&AutoScalingGroupName=nope&DesiredCapacity=1"
    req = urllib.request.Request(world.url, data=body.encode(), method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": f"AWS4-HMAC-SHA256 Credential=testing/20240101/{world.region}/autoscaling/aws4_request, "
                         "SignedHeaders=host, Signature=0",
    })
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 400
    xml = info.value.read().decode()
    assert xml.startswith("<ErrorResponse")
    for part in ("<Error><Type>Sender</Type><Code>ValidationError</Code><Message>", "</Message></Error><RequestId>"):
        assert part in xml, xml


# ------------------------------------------------------------------ placement and purchase options

def test_launches_balance_across_azs(world):
    subnets = world.subnets(3)
    subnet_az = dict(subnets)
    world.create_group(desired=6, subnets=subnets)
    ids = world.wait_states(6, state="InService")
    recs = [world.model(i) for i in ids]
    assert Counter(r["availability_zone"] for r in recs) == Counter({az: 2 for _, az in subnets})
    assert all(subnet_az[r["subnet_id"]] == r["availability_zone"] for r in recs)
    described = world.asg.describe_auto_scaling_instances(InstanceIds=list(ids))["AutoScalingInstances"]
    assert Counter(i["AvailabilityZone"] for i in described) == Counter({az: 2 for _, az in subnets})

    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=4)  # scale-in keeps the balance too
    ids = world.wait_states(4, state="InService")
    assert sorted(Counter(world.model(i)["availability_zone"] for i in ids).values()) == [1, 1, 2]
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=5)
    ids = world.wait_states(5, state="InService")
    assert sorted(Counter(world.model(i)["availability_zone"] for i in ids).values()) == [1, 2, 2]


def test_replacement_goes_to_the_emptier_az(world):
    subnets = world.subnets(2)
    world.create_group(desired=4, subnets=subnets)
    ids = world.wait_states(4, state="InService")
    victim = next(i for i in ids if world.model(i)["availability_zone"] == subnets[1][1])
    world.asg.terminate_instance_in_auto_scaling_group(InstanceId=victim, ShouldDecrementDesiredCapacity=False)
    new = wait_for(lambda: (set(world.wait_states(4, state="InService")) - set(ids)), what="replacement")
    assert world.model(new.pop())["availability_zone"] == subnets[1][1]


def test_mixed_instances_spot_on_demand_split(world):
    lt = world.launch_template()
    world.create_group(desired=5, subnets=world.subnets(2), MixedInstancesPolicy={
        "LaunchTemplate": {
            "LaunchTemplateSpecification": {"LaunchTemplateName": lt},
            "Overrides": [{"InstanceType": "t3.medium"}, {"InstanceType": "t3a.medium"}, {"InstanceType": "m5.large"}],
        },
        "InstancesDistribution": {"OnDemandBaseCapacity": 1, "OnDemandPercentageAboveBaseCapacity": 50},
    })
    ids = world.wait_states(5, state="InService")
    recs = {i: world.model(i) for i in ids}
    assert Counter(r["market"] for r in recs.values()) == Counter({"on-demand": 3, "spot": 2})  # 1 + 50% of 4
    assert Counter(r["instance_type"] for r in recs.values()) == Counter({"t3.medium": 2, "t3a.medium": 2, "m5.large": 1})

    described = world.asg.describe_auto_scaling_instances(InstanceIds=list(ids))["AutoScalingInstances"]
    assert {i["InstanceId"]: i["InstanceType"] for i in described} == {i: r["instance_type"] for i, r in recs.items()}
    reservations = world.ec2.describe_instances(InstanceIds=list(ids))["Reservations"]
    for inst in (i for r in reservations for i in r["Instances"]):
        assert inst["InstanceType"] == recs[inst["InstanceId"]]["instance_type"]
        assert (inst.get("InstanceLifecycle") == "spot") == (recs[inst["InstanceId"]]["market"] == "spot")

    # Scaling in to the base keeps the on-demand share: 1 on-demand + 50% of 2 above it.
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=3)
    ids = world.wait_states(3, state="InService")
    assert Counter(world.model(i)["market"] for i in ids) == Counter({"on-demand": 2, "spot": 1})


def test_update_group_scales_with_hooks_and_keeps_mixed_policy(world):
    lt = world.launch_template()
    world.create_group(desired=2, MixedInstancesPolicy={
        "LaunchTemplate": {"LaunchTemplateSpecification": {"LaunchTemplateName": lt},
                           "Overrides": [{"InstanceType": "c5.large"}]},
        "InstancesDistribution": {"OnDemandBaseCapacity": 0, "OnDemandPercentageAboveBaseCapacity": 0},
    })
    world.wait_states(2, state="InService")
    world.put_hook("asg", "launch", "LAUNCHING")
    msg = validation_error(world.asg.update_auto_scaling_group, AutoScalingGroupName="asg", DesiredCapacity=11)
    assert msg == "Desired capacity:11 must be between the specified min size:0 and max size:10"
    world.asg.update_auto_scaling_group(AutoScalingGroupName="asg", MaxSize=6, DesiredCapacity=4)
    states = world.states()
    assert sorted(states.values()) == ["InService", "InService", "Pending:Wait", "Pending:Wait"]
    assert {(world.model(i)["market"], world.model(i)["instance_type"]) for i in states} == {("spot", "c5.large")}
    assert world.group()["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"] == [{"InstanceType": "c5.large"}]
    cause = world.activities()[0]["Cause"]
    assert "update of AutoScalingGroup constraints to min: 0, max: 6, desired: 4" in cause


# ------------------------------------------------------------------ EC2 view, activities, control

def test_ec2_terminate_of_a_member_is_replaced(world):
    world.create_group(desired=1)
    (old,) = world.wait_states(1, state="InService")
    world.ec2.terminate_instances(InstanceIds=[old])
    (new,) = wait_for(lambda: old not in world.states() and world.wait_states(1, state="InService"), what="replacement")
    assert new != old
    assert world.model(old)["lifecycle_state"] == "Terminated"


def test_scaling_activities(world):
    world.create_group(desired=1)
    world.put_hook("asg", "drain", "TERMINATING")
    (first,) = world.wait_states(1, state="InService")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=2)
    (second,) = set(world.wait_states(2, state="InService")) - {first}
    world.asg.terminate_instance_in_auto_scaling_group(InstanceId=first, ShouldDecrementDesiredCapacity=True)

    acts = world.activities()
    assert [a["Description"] for a in acts] == [
        f"Terminating EC2 instance: {first}",
        f"Launching a new EC2 instance: {second}",
        f"Launching a new EC2 instance: {first}",
    ]
    assert acts[0]["StatusCode"] == "MidLifecycleAction"
    assert all(a["StatusCode"] == "Successful" and a["AutoScalingGroupName"] == "asg" for a in acts[1:])
    assert "shrinking the capacity from 2 to 1" in acts[0]["Cause"]
    assert "increasing the capacity from 1 to 2" in acts[1]["Cause"]

    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="drain",
                                        InstanceId=first, LifecycleActionResult="CONTINUE")
    done = world.activities()[0]
    assert done["StatusCode"] == "Successful" and done["EndTime"] >= done["StartTime"]
    assert world.asg.describe_scaling_activities(AutoScalingGroupName="other")["Activities"] == []
    one = world.asg.describe_scaling_activities(ActivityIds=[done["ActivityId"]])["Activities"]
    assert [a["ActivityId"] for a in one] == [done["ActivityId"]]


def test_control_endpoints(world):
    assert world.http("GET", "/_smartscale/health") == (200, {"ok": True})
    status, before = world.http("GET", "/_smartscale/clock")
    assert status == 200 and abs(before["now"] - (time.time() + before["offset"])) < 5
    status, after = world.http("POST", "/_smartscale/clock/advance", {"seconds": 90})
    assert status == 200 and after["offset"] == pytest.approx(before["offset"] + 90)

    for bad in ({"seconds": -1}, {"seconds": "10"}, {}, [], {"seconds": True}):
        status, body = world.http("POST", "/_smartscale/clock/advance", bad)
        assert status == 400 and "error" in body, bad
    status, body = world.http("POST", "/_smartscale/clock/advance", raw=b"{not json")
    assert status == 400 and "error" in body
    assert world.http("GET", "/_smartscale/clock/advance")[0] == 405
    assert world.http("GET", "/_smartscale/nope")[0] == 404
    assert world.http("GET", "/_smartscale/instances/i-doesnotexist")[0] == 404

    world.create_group(desired=1)
    (iid,) = world.wait_states(1, state="InService")
    rec = world.model(iid)
    assert set(rec) == CONTROL_FIELDS
    assert rec == {**rec, "instance_id": iid, "region": world.region, "asg_name": "asg", "instance_type": "t3.medium",
                   "market": "on-demand", "lifecycle_state": "InService", "target_lifecycle_state": "InService",
                   "ec2_state": "running"}
    status, listing = world.http("GET", "/_smartscale/instances")
    assert status == 200 and rec in listing


def test_other_services_still_served(world):
    ddb = world.client("dynamodb")
    ddb.create_table(TableName="state", BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}])
    ddb.put_item(TableName="state", Item={"k": {"S": "a"}})
    assert ddb.get_item(TableName="state", Key={"k": {"S": "a"}})["Item"] == {"k": {"S": "a"}}
    ssm = world.client("ssm")
    ssm.put_parameter(Name="/smartscale/x", Value="1", Type="String")
    assert ssm.get_parameter(Name="/smartscale/x")["Parameter"]["Value"] == "1"
    sm = world.client("secretsmanager")
    sm.create_secret(Name="token", SecretString="s3cret")
    assert sm.get_secret_value(SecretId="token")["SecretString"] == "s3cret"


def test_concurrent_requests(world):
    world.create_group(desired=1, max_size=20)
    world.put_hook("asg", "launch", "LAUNCHING", DefaultResult="CONTINUE", HeartbeatTimeout=30)
    errors = []

    def worker(n):
        try:
            for i in range(15):
                world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=(n + i) % 20)
                world.asg.describe_auto_scaling_groups(AutoScalingGroupNames=["asg"])
                world.http("GET", "/_smartscale/instances")
        except Exception as err:  # collected, so the assertion shows what went wrong
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=5)
    world.advance(31)  # every pending launch times out into CONTINUE
    world.wait_states(5, state="InService")


def test_reset_wipes_model_and_moto(world):
    world.create_group(desired=1)
    world.put_hook("asg", "launch", "LAUNCHING")
    world.advance(1000)
    # moto re-initialises every backend it created (per region and account): slow late in the suite.
    assert world.http("POST", "/_smartscale/reset", timeout=120) == (200, {"ok": True})
    assert world.asg.describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert world.http("GET", "/_smartscale/instances") == (200, [])
    assert world.http("GET", "/_smartscale/clock")[1]["offset"] == 0
    # moto's own reset endpoint wipes the model too.
    world._lt = None
    world.create_group(desired=1)
    world.wait_states(1, state="InService")
    with urllib.request.urlopen(urllib.request.Request(world.url + "/moto-api/reset", method="POST"), timeout=120) as resp:
        assert resp.status == 200
    assert world.http("GET", "/_smartscale/instances") == (200, [])
    # The world still works after a reset (the launch template went with it).
    world._lt = None
    world.create_group(desired=1)
    (iid,) = world.wait_states(1, state="InService")
    assert world.model(iid)["region"] == world.region


def test_port_in_use_is_one_clear_line(server_url):
    port = int(server_url.rsplit(":", 1)[1])
    proc, url, log = start_server(port)
    assert proc.wait(10) == 1
    assert url is None
    log.seek(0)
    lines = log.read().strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0], lines


def test_activity_times_follow_the_model_clock(world):
    world.advance(86400)
    world.create_group(desired=1)
    world.wait_states(1, state="InService")
    start = world.activities()[0]["StartTime"]
    assert start > datetime.now(timezone.utc) + timedelta(hours=23)
