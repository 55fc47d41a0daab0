"""Warm pools in the AWS model (asg_model.py), against what the AWS Auto Scaling documentation says.

Sources quoted below: the API reference (PutWarmPool, DescribeWarmPool, DeleteWarmPool,
DescribeAutoScalingGroups, TerminateInstanceInAutoScalingGroup, WarmPoolConfiguration), the user
guide pages "Use lifecycle hooks with a warm pool" (warm-pool-instance-lifecycle), "Retrieve the
target lifecycle state through instance metadata", "Warm pool example events and patterns", and the
AWS::AutoScaling::WarmPool CloudFormation reference.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from conftest import wait_for


def pool(world, name: str = "asg") -> dict[str, str]:
    """{instance id: LifecycleState} of the group's warm pool (DescribeWarmPool)."""
    return {i["InstanceId"]: i["LifecycleState"] for i in world.asg.describe_warm_pool(AutoScalingGroupName=name)["Instances"]}


def wait_pool(world, count: int, state: str, name: str = "asg") -> dict[str, str]:
    def check():
        current = pool(world, name)
        done = len(current) == count and all(s == state for s in current.values())
        return (current,) if done else None
    return wait_for(check, what=f"{count} warm pool instances {state}")[0]


def put_pool(world, name: str = "asg", **params) -> None:
    world.asg.put_warm_pool(AutoScalingGroupName=name, **params)


def complete(world, hook: str, iid: str, result: str = "CONTINUE") -> None:
    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName=hook, InstanceId=iid,
                                        LifecycleActionResult=result)


# ------------------------------------------------------------------ configuration and size

def test_put_describe_defaults_and_group_view(world):
    """PutWarmPool: "PoolState ... Default is Stopped." and MinSize "Defaults to 0 if not specified."
    "If a value for MaxGroupPreparedCapacity is not specified, Amazon EC2 Auto Scaling launches and
    maintains the difference between the group's maximum capacity and its desired capacity."
    DescribeAutoScalingGroups: "To retrieve information about the instances in a warm pool, you must
    call the DescribeWarmPool API." AutoScalingGroup: WarmPoolConfiguration "The warm pool for the
    group.", WarmPoolSize "The current size of the warm pool."
    """
    world.create_group(desired=1, max_size=4)
    (member,) = world.wait_states(1, state="InService")
    assert "WarmPoolConfiguration" not in world.group()
    assert world.asg.describe_warm_pool(AutoScalingGroupName="asg")["Instances"] == []

    put_pool(world)
    resp = world.asg.describe_warm_pool(AutoScalingGroupName="asg")
    assert resp["WarmPoolConfiguration"] == {"MinSize": 0, "PoolState": "Stopped"}
    warmed = wait_pool(world, 3, "Warmed:Stopped")  # MaxSize 4 - desired 1
    for i in resp["Instances"]:
        assert i["HealthStatus"] == "Healthy" and i["InstanceType"] == "t3.medium"

    group = world.group()
    assert [i["InstanceId"] for i in group["Instances"]] == [member]  # warm pool instances are not listed
    assert group["WarmPoolSize"] == 3
    assert group["WarmPoolConfiguration"]["PoolState"] == "Stopped"
    assert group["DesiredCapacity"] == 1
    # DescribeAutoScalingInstances lists them with their Warmed:* state.
    described = world.asg.describe_auto_scaling_instances(InstanceIds=list(warmed))["AutoScalingInstances"]
    assert {d["InstanceId"]: d["LifecycleState"] for d in described} == warmed


def test_max_group_prepared_capacity_and_min_size(world):
    """PutWarmPool MaxGroupPreparedCapacity: "If you specify a value for MaxGroupPreparedCapacity,
    Amazon EC2 Auto Scaling uses the difference between the MaxGroupPreparedCapacity and the desired
    capacity instead." "If the desired capacity of the Auto Scaling group is higher than the
    MaxGroupPreparedCapacity, the capacity of the warm pool is 0, unless you specify a value for
    MinSize. To remove a value that you previously set, include the property but specify -1 for the
    value."
    """
    world.create_group(desired=2, max_size=10)
    world.wait_states(2, state="InService")
    put_pool(world, MaxGroupPreparedCapacity=5)
    wait_pool(world, 3, "Warmed:Stopped")  # 5 - 2
    assert world.asg.describe_warm_pool(AutoScalingGroupName="asg")["WarmPoolConfiguration"]["MaxGroupPreparedCapacity"] == 5

    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=6)  # above 5: pool size 0
    world.wait_states(6, state="InService")
    assert pool(world) == {}

    put_pool(world, MinSize=2)  # MaxGroupPreparedCapacity stays 5; MinSize now wins
    wait_pool(world, 2, "Warmed:Stopped")
    config = world.asg.describe_warm_pool(AutoScalingGroupName="asg")["WarmPoolConfiguration"]
    assert (config["MaxGroupPreparedCapacity"], config["MinSize"]) == (5, 2)

    put_pool(world, MaxGroupPreparedCapacity=-1)  # removed: MaxSize 10 - desired 6
    wait_pool(world, 4, "Warmed:Stopped")
    assert "MaxGroupPreparedCapacity" not in world.asg.describe_warm_pool(AutoScalingGroupName="asg")["WarmPoolConfiguration"]


def test_pool_shrinks_when_max_size_drops(world):
    """Warm pool states include Warmed:Terminating, Warmed:Terminating:Wait, Warmed:Terminated
    (AutoScalingInstanceDetails LifecycleState valid values); the size is "the difference between
    the group's maximum capacity and its desired capacity", so lowering MaxSize shrinks the pool,
    through the terminate hooks."""
    world.create_group(desired=1, max_size=4)
    world.put_hook("asg", "drain", "TERMINATING")
    put_pool(world)
    warmed = wait_pool(world, 3, "Warmed:Stopped")
    world.asg.update_auto_scaling_group(AutoScalingGroupName="asg", MaxSize=3)
    current = pool(world)
    waiting = [i for i, s in current.items() if s == "Warmed:Terminating:Wait"]
    assert len(current) == 3 and len(waiting) == 1
    assert world.model(waiting[0])["target_lifecycle_state"] == "Warmed:Terminated"
    complete(world, "drain", waiting[0])
    wait_for(lambda: waiting[0] not in pool(world), what="warm pool instance terminated")
    assert world.model(waiting[0])["lifecycle_state"] == "Warmed:Terminated"
    assert world.ec2_state(waiting[0]) == "terminated"
    assert set(pool(world)) == set(warmed) - set(waiting)


def test_put_warm_pool_validation(world):
    """WarmPoolConfiguration PoolState "Valid Values: Stopped | Running | Hibernated"; MinSize "Valid
    Range: Minimum value of 0."; MaxGroupPreparedCapacity "Valid Range: Minimum value of -1."
    (Sent raw: botocore would refuse these itself.)"""
    world.create_group()
    for params, field in (("PoolState=Frozen", "poolState"), ("MinSize=-1", "minSize"),
                          ("MaxGroupPreparedCapacity=-2", "maxGroupPreparedCapacity")):
        body = f"Action=PutWarmPool&Version=2011-01-01&AutoScalingGroupName=asg&{params}".encode()
        status, _, text = world.raw("autoscaling", body, {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 400, text
        assert "<Code>ValidationError</Code>" in text and f"at '{field}' failed to satisfy constraint" in text
    with pytest.raises(ClientError) as info:
        world.asg.put_warm_pool(AutoScalingGroupName="nope")
    assert info.value.response["Error"]["Code"] == "ValidationError"


# ------------------------------------------------------------------ into the pool

def test_launch_into_pool_waits_on_launch_hook_then_stops(world):
    """warm-pool-instance-lifecycle: "If a lifecycle hook is configured for the
    autoscaling:EC2_INSTANCE_LAUNCHING lifecycle action, a newly launched instance first pauses to
    perform a custom action when it reaches the Warmed:Pending:Wait state, and then again when the
    instance restarts and reaches the Pending:Wait state." (The stored English page was cut before
    this sentence; its translations say the same.) "As soon as an instance finishes launching into
    the warm pool, Amazon EC2 Auto Scaling stops or hibernates the instance."
    Warm pool events: "Origin": "EC2", "Destination": "WarmPool" for a launch into the warm pool.
    IMDS: "If you use a warm pool, the lifecycle has four additional steady states—Warmed:Hibernated,
    Warmed:Running, Warmed:Stopped, and Warmed:Terminated."
    """
    queue_url, queue_arn = world.queue()
    world.create_group(max_size=1)
    world.put_hook("asg", "launch", "LAUNCHING", NotificationTargetARN=queue_arn)
    put_pool(world)
    (iid,) = wait_pool(world, 1, "Warmed:Pending:Wait")
    rec = world.model(iid)
    assert (rec["target_lifecycle_state"], rec["ec2_state"], rec["in_warm_pool"], rec["warm_pool_state"]) == (
        "Warmed:Stopped", "running", True, "Stopped")
    [note] = world.messages(queue_url, 1)
    assert (note["Origin"], note["Destination"], note["EC2InstanceId"]) == ("EC2", "WarmPool", iid)
    assert note["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
    [act] = world.activities()
    assert act["Description"] == f"Launching a new EC2 instance into warm pool: {iid}"
    assert act["StatusCode"] == "MidLifecycleAction"

    world.asg.record_lifecycle_action_heartbeat(AutoScalingGroupName="asg", LifecycleHookName="launch",
                                                LifecycleActionToken=note["LifecycleActionToken"])
    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="launch",
                                        LifecycleActionToken=note["LifecycleActionToken"], LifecycleActionResult="CONTINUE")
    assert wait_pool(world, 1, "Warmed:Stopped") == {iid: "Warmed:Stopped"}
    assert world.ec2_state(iid) == "stopped"
    rec = world.model(iid)
    assert (rec["lifecycle_state"], rec["target_lifecycle_state"], rec["ec2_state"]) == ("Warmed:Stopped", "Warmed:Stopped", "stopped")
    assert world.activities()[0]["StatusCode"] == "Successful"
    assert world.states() == {}


@pytest.mark.parametrize("state,ec2", [("Running", "running"), ("Hibernated", "stopped")])
def test_pool_state_running_and_hibernated(world, state, ec2):
    """warm-pool-instance-lifecycle: "If the pool state is set to Running, then this state is
    Warmed:Running instead. If the pool state is set to Hibernated, then this state is
    Warmed:Hibernated instead." (a hibernated EC2 instance is in the stopped state)"""
    world.create_group(max_size=1)
    put_pool(world, PoolState=state)
    (iid,) = wait_pool(world, 1, f"Warmed:{state}")
    rec = world.model(iid)
    assert (rec["target_lifecycle_state"], rec["ec2_state"]) == (f"Warmed:{state}", ec2)
    assert world.ec2_state(iid) == ec2


def test_launch_hook_timeout_in_pool_and_abandon_refills(world):
    """The hooks work as for any launch ("The API operations that you use to add and manage lifecycle
    hooks and complete lifecycle actions are not changed. Only the instance lifecycle is changed."):
    the DefaultResult applies after HeartbeatTimeout; ABANDON terminates the instance, and the pool is
    refilled (CloudFormation WarmPool: "Amazon EC2 Auto Scaling launches new instances into the warm
    pool to maintain its minimum size.")."""
    world.create_group(max_size=1)
    world.put_hook("asg", "launch", "LAUNCHING", HeartbeatTimeout=60, DefaultResult="ABANDON")
    put_pool(world)
    (first,) = wait_pool(world, 1, "Warmed:Pending:Wait")
    world.advance(59)
    assert pool(world) == {first: "Warmed:Pending:Wait"}
    world.advance(2)
    (second,) = wait_for(lambda: first not in pool(world) and pool(world), what="abandoned pool launch replaced")
    assert pool(world) == {second: "Warmed:Pending:Wait"}
    rec = world.model(first)
    assert (rec["lifecycle_state"], rec["target_lifecycle_state"], rec["ec2_state"]) == ("Warmed:Terminated", "Warmed:Terminated", "terminated")
    complete(world, "launch", second, "ABANDON")
    (third,) = wait_for(lambda: second not in pool(world) and pool(world), what="second replacement")
    complete(world, "launch", third)
    assert wait_pool(world, 1, "Warmed:Stopped") == {third: "Warmed:Stopped"}


# ------------------------------------------------------------------ out of the pool

def test_scale_out_takes_from_pool_and_runs_launch_hook_again(world):
    """Warm pool: "Whenever your application needs to scale out, the Auto Scaling group can draw on
    the warm pool to meet its new desired capacity." The launch hook pauses the instance again "when
    the instance restarts and reaches the Pending:Wait state"; events leaving the pool have "Origin":
    "WarmPool", "Destination": "AutoScalingGroup"."""
    queue_url, queue_arn = world.queue()
    world.create_group(max_size=2)
    world.put_hook("asg", "launch", "LAUNCHING", NotificationTargetARN=queue_arn)
    put_pool(world, MinSize=1)
    pending = wait_pool(world, 2, "Warmed:Pending:Wait")
    for iid in pending:
        complete(world, "launch", iid)
    warmed = wait_pool(world, 2, "Warmed:Stopped")
    world.messages(queue_url, 2)

    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    (iid,) = world.wait_states(1, state="Pending:Wait")
    assert iid in warmed  # no new launch while the pool has a warmed instance
    rec = world.model(iid)
    assert (rec["target_lifecycle_state"], rec["ec2_state"], rec["in_warm_pool"]) == ("InService", "running", False)
    [note] = world.messages(queue_url, 1)
    assert (note["Origin"], note["Destination"], note["EC2InstanceId"]) == ("WarmPool", "AutoScalingGroup", iid)
    assert world.activities()[0]["Description"] == f"Launching a new EC2 instance from warm pool: {iid}"
    # Pool size max(MinSize 1, 2 - 1) = 1: the other warmed instance stays, nothing new launches.
    assert pool(world) == {i: "Warmed:Stopped" for i in warmed if i != iid}

    world.asg.record_lifecycle_action_heartbeat(AutoScalingGroupName="asg", LifecycleHookName="launch", InstanceId=iid)
    complete(world, "launch", iid)
    world.wait_states({iid: "InService"})
    assert world.ec2_state(iid) == "running"


def test_scale_out_without_hooks_and_pool_refill(world):
    """CloudFormation WarmPool: "When your Auto Scaling group scales out and the size of the warm pool
    shrinks, Amazon EC2 Auto Scaling launches new instances into the warm pool to maintain its minimum
    size." Without hooks the instance goes Pending, Pending:Proceed, InService."""
    world.create_group(max_size=3)
    put_pool(world, MinSize=2)
    warmed = wait_pool(world, 3, "Warmed:Stopped")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=2)
    members = world.wait_states(2, state="InService")
    assert set(members) <= set(warmed)
    for iid in members:
        assert world.ec2_state(iid) == "running"
    # max(MinSize 2, 3 - 2) = 2: one left plus one new launch.
    now = wait_pool(world, 2, "Warmed:Stopped")
    assert len(set(now) - set(warmed)) == 1


def test_only_warmed_instances_are_taken_else_launch_directly(world):
    """warm-pool-instance-lifecycle (translation of the English bullet): if demand depletes the warm
    pool, Amazon EC2 Auto Scaling can launch instances directly into the group as long as it is not at
    its maximum capacity; those pause only at Pending:Wait. An instance still in Warmed:Pending:Wait
    has not finished warming and is not taken."""
    world.create_group(max_size=2)
    world.put_hook("asg", "launch", "LAUNCHING")
    put_pool(world, MinSize=1)
    warming = wait_pool(world, 2, "Warmed:Pending:Wait")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    (iid,) = world.wait_states(1, state="Pending:Wait")
    assert iid not in warming
    assert f"Launching a new EC2 instance: {iid}" in [a["Description"] for a in world.activities()]
    assert world.model(iid)["in_warm_pool"] is False
    # The pool is now max(MinSize 1, 2 - 1) = 1: the newest warming instance is terminated.
    left = pool(world)
    assert len(left) == 1 and set(left) < set(warming) and list(left.values()) == ["Warmed:Pending:Wait"]


# ------------------------------------------------------------------ scale in

def test_scale_in_with_reuse_returns_to_pool_through_terminate_hook(world):
    """warm-pool-instance-lifecycle: "if you specify an instance reuse policy to return instances to
    the warm pool on scale in instead of terminating them, then an instance that is returning to the
    warm pool pauses to perform a custom action at the Warmed:Pending:Wait state for the
    EC2_INSTANCE_TERMINATING lifecycle action." (English wording reconstructed from the page's
    translations.) InstanceReusePolicy: "Specifies whether instances in the Auto Scaling group can be
    returned to the warm pool on scale in." Events: "Origin": "AutoScalingGroup", "Destination":
    "WarmPool"."""
    queue_url, queue_arn = world.queue()
    world.create_group(desired=1, max_size=1)
    (iid,) = world.wait_states(1, state="InService")
    world.put_hook("asg", "drain", "TERMINATING", NotificationTargetARN=queue_arn)
    put_pool(world, InstanceReusePolicy={"ReuseOnScaleIn": True})
    assert world.asg.describe_warm_pool(AutoScalingGroupName="asg")["WarmPoolConfiguration"]["InstanceReusePolicy"] == {"ReuseOnScaleIn": True}
    assert pool(world) == {}  # 1 - 1

    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=0)
    assert world.states() == {}
    assert pool(world) == {iid: "Warmed:Pending:Wait"}
    rec = world.model(iid)
    assert (rec["target_lifecycle_state"], rec["ec2_state"]) == ("Warmed:Stopped", "running")
    [note] = world.messages(queue_url, 1)
    assert (note["Origin"], note["Destination"]) == ("AutoScalingGroup", "WarmPool")
    assert note["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"

    complete(world, "drain", iid)
    assert wait_pool(world, 1, "Warmed:Stopped") == {iid: "Warmed:Stopped"}
    assert world.ec2_state(iid) == "stopped"

    # ... and back into service from the pool.
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    world.wait_states({iid: "InService"})
    assert world.ec2_state(iid) == "running"
    assert pool(world) == {}


def test_scale_in_without_reuse_terminates(world):
    """PutWarmPool InstanceReusePolicy: "The default is to terminate instances in the Auto Scaling
    group when the group scales in." """
    world.create_group(desired=2, max_size=2)
    members = world.wait_states(2, state="InService")
    world.put_hook("asg", "drain", "TERMINATING")
    put_pool(world)
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    waiting = [i for i, s in world.states().items() if s == "Terminating:Wait"]
    assert len(waiting) == 1 and waiting[0] in members
    assert world.model(waiting[0])["target_lifecycle_state"] == "Terminated"
    complete(world, "drain", waiting[0])
    wait_for(lambda: world.ec2_state(waiting[0]) == "terminated", what="terminated")
    # The pool (2 - 1) gets a newly launched instance, not the terminated one.
    (new,) = wait_pool(world, 1, "Warmed:Stopped")
    assert new not in members


# ------------------------------------------------------------------ termination and deletion

def test_terminate_instance_in_group_refused_for_warm_instance(world):
    """TerminateInstanceInAutoScalingGroup: "This operation cannot be called on instances in a warm
    pool." EC2 TerminateInstances on a warm pool instance: it leaves the pool, which is refilled."""
    world.create_group(max_size=1)
    put_pool(world)
    (iid,) = wait_pool(world, 1, "Warmed:Stopped")
    with pytest.raises(ClientError) as info:
        world.asg.terminate_instance_in_auto_scaling_group(InstanceId=iid, ShouldDecrementDesiredCapacity=False)
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert "warm pool" in info.value.response["Error"]["Message"]
    assert pool(world) == {iid: "Warmed:Stopped"}

    world.ec2.terminate_instances(InstanceIds=[iid])
    (new,) = wait_for(lambda: iid not in pool(world) and pool(world), what="warm pool refilled")
    assert world.model(iid)["lifecycle_state"] == "Warmed:Terminated"
    wait_pool(world, 1, "Warmed:Stopped")


def test_delete_warm_pool_waits_for_terminate_hooks(world):
    """WarmPoolConfiguration Status: "The status of a warm pool that is marked for deletion." (Valid
    Values: PendingDelete). Without ForceDelete the instances are terminated through the terminate
    hooks; the pool goes once they are gone."""
    world.create_group(max_size=2)
    world.put_hook("asg", "drain", "TERMINATING")
    put_pool(world)
    warmed = wait_pool(world, 2, "Warmed:Stopped")
    world.asg.delete_warm_pool(AutoScalingGroupName="asg")
    resp = world.asg.describe_warm_pool(AutoScalingGroupName="asg")
    assert resp["WarmPoolConfiguration"]["Status"] == "PendingDelete"
    assert pool(world) == {i: "Warmed:Terminating:Wait" for i in warmed}
    assert world.group()["WarmPoolConfiguration"]["Status"] == "PendingDelete"
    for iid in warmed:
        complete(world, "drain", iid)
    wait_for(lambda: "WarmPoolConfiguration" not in world.asg.describe_warm_pool(AutoScalingGroupName="asg"),
             what="warm pool deleted")
    assert "WarmPoolConfiguration" not in world.group()
    for iid in warmed:
        assert world.ec2_state(iid) == "terminated"


def test_force_delete_warm_pool(world):
    """DeleteWarmPool ForceDelete: "Specifies that the warm pool is to be deleted along with all of its
    associated instances, without waiting for all instances to be terminated. This parameter also
    deletes any outstanding lifecycle actions associated with the warm pool instances." """
    world.create_group(max_size=2)
    world.put_hook("asg", "launch", "LAUNCHING")
    put_pool(world)
    warming = wait_pool(world, 2, "Warmed:Pending:Wait")
    world.asg.delete_warm_pool(AutoScalingGroupName="asg", ForceDelete=True)
    resp = world.asg.describe_warm_pool(AutoScalingGroupName="asg")
    assert "WarmPoolConfiguration" not in resp and resp["Instances"] == []
    for iid in warming:
        assert world.model(iid)["lifecycle_state"] == "Warmed:Terminated"
        assert world.ec2_state(iid) == "terminated"
    with pytest.raises(ClientError) as info:
        complete(world, "launch", next(iter(warming)))
    assert info.value.response["Error"]["Message"].startswith("No active Lifecycle Action found")


def test_force_delete_group_deletes_warm_pool(world):
    """DeleteAutoScalingGroup: "If the group has a warm pool, the force delete option also deletes the
    warm pool." """
    world.create_group(desired=1, max_size=3)
    put_pool(world)
    warmed = wait_pool(world, 2, "Warmed:Stopped")
    world.asg.delete_auto_scaling_group(AutoScalingGroupName="asg", ForceDelete=True)
    for iid in warmed:
        assert world.ec2_state(iid) == "terminated"
        assert world.model(iid)["lifecycle_state"] == "Warmed:Terminated"
