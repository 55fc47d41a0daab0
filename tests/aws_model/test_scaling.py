"""Suspended processes, AZ rebalancing, scale-in protection and termination policies, as the
EC2 Auto Scaling User Guide describes them (quotes in the tests)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import wait_for


def zones_of(world, ids) -> Counter:
    return Counter(world.model(i)["availability_zone"] for i in ids)


def describe(world, iid: str) -> dict:
    return world.asg.describe_auto_scaling_instances(InstanceIds=[iid])["AutoScalingInstances"][0]


def activity_for(world, prefix: str, iid: str) -> dict:
    return next(a for a in world.activities() if a["Description"] == f"{prefix}: {iid}")


def two_zone_group(world, desired: int, **extra) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """A group over two subnets in two AZs; returns (subnets, {instance id: zone})."""
    subnets = world.subnets(2)
    world.create_group(desired=desired, subnets=subnets, **extra)
    ids = world.wait_states(desired, state="InService")
    return subnets, {i: world.model(i)["availability_zone"] for i in ids}


# ------------------------------------------------------------------ suspended processes

def test_suspended_processes_are_described_and_resumed(world):
    world.create_group()
    world.asg.suspend_processes(AutoScalingGroupName="asg", ScalingProcesses=["AZRebalance", "Launch"])
    suspended = {p["ProcessName"] for p in world.group()["SuspendedProcesses"]}
    assert suspended == {"AZRebalance", "Launch"}
    world.asg.resume_processes(AutoScalingGroupName="asg", ScalingProcesses=["Launch"])
    assert [p["ProcessName"] for p in world.group()["SuspendedProcesses"]] == ["AZRebalance"]
    world.asg.resume_processes(AutoScalingGroupName="asg")  # no list: all of them
    assert world.group()["SuspendedProcesses"] == []


def test_launch_suspended_holds_scale_out_until_resumed(world):
    world.create_group(desired=1)
    world.wait_states(1, state="InService")
    world.asg.suspend_processes(AutoScalingGroupName="asg", ScalingProcesses=["Launch"])
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=3)
    world.advance(60)
    assert len(world.states()) == 1 and world.group()["DesiredCapacity"] == 3
    world.asg.resume_processes(AutoScalingGroupName="asg", ScalingProcesses=["Launch"])
    world.wait_states(3, state="InService")


def test_terminate_suspended_holds_scale_in_until_resumed(world):
    world.create_group(desired=3)
    world.wait_states(3, state="InService")
    world.asg.suspend_processes(AutoScalingGroupName="asg", ScalingProcesses=["Terminate"])
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    world.advance(60)
    assert len(world.states()) == 3
    world.asg.resume_processes(AutoScalingGroupName="asg")
    world.wait_states(1, state="InService")


# ------------------------------------------------------------------ AZ rebalancing

def test_terminate_with_decrement_rebalances_launch_first(world):
    # "You explicitly terminate or detach instances ..., and then the group becomes unbalanced."
    # "When rebalancing, Amazon EC2 Auto Scaling launches new instances before terminating the earlier ones."
    subnets, zones = two_zone_group(world, 2)
    first = {z: i for i, z in zones.items()}
    world.advance(100)  # the second pair is newer
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=4)
    ids = world.wait_states(4, state="InService")
    zones = {i: world.model(i)["availability_zone"] for i in ids}
    zone_a, zone_b = subnets[0][1], subnets[1][1]
    in_b = [i for i, z in zones.items() if z == zone_b]
    for iid in in_b:
        world.asg.terminate_instance_in_auto_scaling_group(InstanceId=iid, ShouldDecrementDesiredCapacity=True)

    final = world.wait_states(2, state="InService")
    assert world.group()["DesiredCapacity"] == 2
    assert zones_of(world, final) == Counter({zone_a: 1, zone_b: 1})
    (new,) = set(final) - set(ids)
    assert world.model(new)["availability_zone"] == zone_b
    (victim,) = {i for i, z in zones.items() if z == zone_a} - set(final)
    assert victim == first[zone_a], "the default policy takes the oldest (closest to its next billing hour)"
    launch = activity_for(world, "Launching a new EC2 instance", new)
    termination = activity_for(world, "Terminating EC2 instance", victim)
    assert launch["StartTime"] <= termination["StartTime"]
    assert f"instances were launched to balance instances in zones {zone_b} with other zones" in launch["Cause"]
    # AWS chains the reason: the rebalancing launch left more than desired, so one was taken out.
    assert f"instances were launched to balance instances in zones {zone_b}" in termination["Cause"]
    assert "shrinking the capacity from 3 to 2" in termination["Cause"]
    assert f"instance {victim} was selected for termination" in termination["Cause"]


def test_rebalancing_waits_for_the_launch_and_uses_the_terminate_hook(world):
    subnets, zones = two_zone_group(world, 3)
    zone_count = Counter(zones.values())
    short = min(zone_count, key=zone_count.get)
    long = max(zone_count, key=zone_count.get)
    world.put_hook("asg", "launch", "LAUNCHING")
    world.put_hook("asg", "drain", "TERMINATING")
    (lonely,) = [i for i, z in zones.items() if z == short]
    world.asg.terminate_instance_in_auto_scaling_group(InstanceId=lonely, ShouldDecrementDesiredCapacity=True)
    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="drain", InstanceId=lonely,
                                        LifecycleActionResult="CONTINUE")
    # Two left in the long zone, none in the short one: a launch there first, nothing terminated yet.
    states = wait_for(lambda: len(world.states()) == 3 and world.states(), what="rebalancing launch")
    (new,) = set(states) - set(zones)
    assert states[new] == "Pending:Wait" and world.model(new)["availability_zone"] == short
    world.advance(30)
    assert sorted(world.states().values()) == ["InService", "InService", "Pending:Wait"]
    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="launch", InstanceId=new,
                                        LifecycleActionResult="CONTINUE")
    states = world.states()
    waiting = [i for i, s in states.items() if s == "Terminating:Wait"]
    assert len(waiting) == 1 and world.model(waiting[0])["availability_zone"] == long
    assert world.ec2_state(waiting[0]) == "running"  # held by the terminate hook like any termination
    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="drain",
                                        InstanceId=waiting[0], LifecycleActionResult="CONTINUE")
    final = world.wait_states(2, state="InService")
    assert zones_of(world, final) == Counter({short: 1, long: 1})


def test_detach_with_decrement_rebalances(world):
    subnets, zones = two_zone_group(world, 3)
    count = Counter(zones.values())
    short = min(count, key=count.get)
    (lonely,) = [i for i, z in zones.items() if z == short]
    world.asg.detach_instances(AutoScalingGroupName="asg", InstanceIds=[lonely], ShouldDecrementDesiredCapacity=True)
    final = world.wait_states(2, state="InService")
    assert lonely not in final and world.ec2_state(lonely) == "running"  # detached, not terminated
    assert zones_of(world, final) == Counter({z: 1 for _, z in subnets})


def test_standby_with_decrement_rebalances(world):
    # "You explicitly terminate or detach instances or place instances in standby, and then the
    # group becomes unbalanced."
    subnets, zones = two_zone_group(world, 3)
    count = Counter(zones.values())
    (lonely,) = [i for i, z in zones.items() if z == min(count, key=count.get)]
    world.asg.enter_standby(AutoScalingGroupName="asg", InstanceIds=[lonely], ShouldDecrementDesiredCapacity=True)
    states = wait_for(lambda: (s := world.states()) and sorted(s.values()) == ["InService", "InService", "Standby"] and
                      set(s) != set(zones) and s, what="rebalanced around the standby instance")
    in_service = [i for i, st in states.items() if st == "InService"]
    assert states[lonely] == "Standby"
    assert zones_of(world, in_service) == Counter({z: 1 for _, z in subnets})


def test_activities_carry_subnet_and_zone_details(world):
    subnets, zones = two_zone_group(world, 1)
    (iid,) = zones
    details = json.loads(activity_for(world, "Launching a new EC2 instance", iid)["Details"])
    assert details == {"Subnet ID": world.model(iid)["subnet_id"], "Availability Zone": zones[iid]}


def test_az_rebalance_suspended_leaves_the_group_unbalanced(world):
    subnets, zones = two_zone_group(world, 3)
    world.asg.suspend_processes(AutoScalingGroupName="asg", ScalingProcesses=["AZRebalance"])
    count = Counter(zones.values())
    (lonely,) = [i for i, z in zones.items() if z == min(count, key=count.get)]
    world.asg.terminate_instance_in_auto_scaling_group(InstanceId=lonely, ShouldDecrementDesiredCapacity=True)
    world.advance(600)
    remaining = world.wait_states(2, state="InService")
    assert set(remaining) < set(zones) and len(zones_of(world, remaining)) == 1
    # "If the group becomes unbalanced while AZRebalance is suspended and you resume it,
    # Amazon EC2 Auto Scaling attempts to rebalance the group."
    world.asg.resume_processes(AutoScalingGroupName="asg", ScalingProcesses=["AZRebalance"])
    final = world.wait_states(2, state="InService")
    assert zones_of(world, final) == Counter({z: 1 for _, z in subnets})


def test_scale_out_still_balances_while_az_rebalance_is_suspended(world):
    # "if a scale-out or scale-in event occurs, the scaling process still tries to balance the
    # Availability Zones. For example, during scale out, it launches the instance in the
    # Availability Zone with the fewest instances."
    subnets, zones = two_zone_group(world, 3)
    world.asg.suspend_processes(AutoScalingGroupName="asg", ScalingProcesses=["AZRebalance"])
    count = Counter(zones.values())
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=4)
    (new,) = set(world.wait_states(4, state="InService")) - set(zones)
    assert world.model(new)["availability_zone"] == min(count, key=count.get)


def test_rebalancing_never_picks_a_protected_instance(world):
    subnets, zones = two_zone_group(world, 3)
    count = Counter(zones.values())
    long = max(count, key=count.get)
    world.asg.set_instance_protection(AutoScalingGroupName="asg", ProtectedFromScaleIn=True,
                                      InstanceIds=[i for i, z in zones.items() if z == long])
    (lonely,) = [i for i, z in zones.items() if z != long]
    world.asg.terminate_instance_in_auto_scaling_group(InstanceId=lonely, ShouldDecrementDesiredCapacity=True)
    world.advance(600)
    # Nothing in the long zone may go, so launching into the short zone would only grow the group.
    assert set(world.wait_states(2, state="InService")) == {i for i, z in zones.items() if z == long}


def test_changing_the_zones_moves_instances(world):
    # "You change the Availability Zones associated with your Auto Scaling group."
    subnets = world.subnets(2)
    world.create_group(desired=2, subnets=subnets[:1])
    old = world.wait_states(2, state="InService")
    world.asg.update_auto_scaling_group(AutoScalingGroupName="asg", VPCZoneIdentifier=subnets[1][0])
    final = wait_for(lambda: (s := world.wait_states(2, state="InService")) and not set(s) & set(old) and s,
                     what="instances moved to the new zone")
    assert zones_of(world, final) == Counter({subnets[1][1]: 2})


# ------------------------------------------------------------------ scale-in protection

def test_scale_in_skips_protected_instances(world):
    world.create_group(desired=3)
    ids = sorted(world.wait_states(3, state="InService"))
    world.asg.set_instance_protection(AutoScalingGroupName="asg", InstanceIds=ids[:2], ProtectedFromScaleIn=True)
    assert [describe(world, i)["ProtectedFromScaleIn"] for i in ids] == [True, True, False]
    assert [world.model(i)["protected_from_scale_in"] for i in ids] == [True, True, False]
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    # Only one could go; the other two are protected.
    assert set(world.wait_states(2, state="InService")) == set(ids[:2])
    assert world.group()["DesiredCapacity"] == 1


def test_all_protected_lowers_desired_but_terminates_nothing_until_unprotected(world):
    # "If all instances in an Auto Scaling group are protected from scale in, and a scale-in event
    # occurs, its desired capacity is decremented. However, the Auto Scaling group can't terminate
    # the required number of instances until their instance scale-in protection settings are disabled."
    world.create_group(desired=2, NewInstancesProtectedFromScaleIn=True)
    ids = sorted(world.wait_states(2, state="InService"))
    assert all(describe(world, i)["ProtectedFromScaleIn"] for i in ids)
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=0)
    world.advance(300)
    assert world.group()["DesiredCapacity"] == 0
    assert world.states() == {i: "InService" for i in ids}
    note = world.activities()[0]
    assert note["StatusCode"] == "Cancelled"
    assert note["StatusMessage"] == ("Could not scale to desired capacity because all remaining instances are "
                                     "protected from scale-in.")
    assert sum(a["StatusCode"] == "Cancelled" for a in world.activities()) == 1, "recorded once, not per tick"

    world.asg.set_instance_protection(AutoScalingGroupName="asg", InstanceIds=[ids[0]], ProtectedFromScaleIn=False)
    assert set(world.wait_states(1, state="InService")) == {ids[1]}
    assert world.ec2_state(ids[0]) == "terminated"


def test_manual_termination_ignores_scale_in_protection(world):
    world.create_group(desired=2, min_size=1, NewInstancesProtectedFromScaleIn=True)
    victim, keeper = sorted(world.wait_states(2, state="InService"))
    world.asg.terminate_instance_in_auto_scaling_group(InstanceId=victim, ShouldDecrementDesiredCapacity=True)
    world.wait_states({keeper: "InService"})
    assert world.ec2_state(victim) == "terminated"


def test_protection_starts_when_the_instance_is_in_service(world):
    # "Instance scale-in protection starts when the instance state is InService."
    world.create_group(NewInstancesProtectedFromScaleIn=True)
    world.put_hook("asg", "launch", "LAUNCHING")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    (iid,) = world.wait_states(1, state="Pending:Wait")
    assert describe(world, iid)["ProtectedFromScaleIn"] is True
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=0)
    world.wait_states({})
    assert world.ec2_state(iid) == "terminated"


# ------------------------------------------------------------------ termination policies

def test_default_policy_prefers_instances_of_a_non_current_template(world):
    # "Determine whether any of the instances eligible for termination use the oldest launch template"
    # (non-current template first) before the billing hour, so a newer instance can go first.
    world.create_group(desired=1)
    (old,) = world.wait_states(1, state="InService")
    world.ec2.create_launch_template(LaunchTemplateName="other-lt",
                                     LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.large"})
    world.asg.update_auto_scaling_group(AutoScalingGroupName="asg", LaunchTemplate={"LaunchTemplateName": "other-lt"})
    world.advance(100)
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=2)
    (new,) = set(world.wait_states(2, state="InService")) - {old}
    assert world.model(new)["instance_type"] == "t3.large"
    world.asg.update_auto_scaling_group(AutoScalingGroupName="asg",
                                        LaunchTemplate={"LaunchTemplateName": world.launch_template()})
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    assert world.wait_states(1, state="InService") == {old: "InService"}


def test_default_policy_takes_the_oldest_launch_template_version(world):
    world.create_group(desired=1, LaunchTemplate={"LaunchTemplateName": world.launch_template(), "Version": "$Latest"})
    (v1,) = world.wait_states(1, state="InService")
    world.advance(600)
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=2)
    (v1b,) = set(world.wait_states(2, state="InService")) - {v1}
    world.ec2.create_launch_template_version(LaunchTemplateName=world.launch_template(),
                                             LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.small"})
    world.advance(600)
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=3)
    (v2,) = set(world.wait_states(3, state="InService")) - {v1, v1b}
    assert world.model(v2)["instance_type"] == "t3.small"
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=2)
    # Both version-1 instances are older than v2; the one closest to its next billing hour goes.
    remaining = set(world.wait_states(2, state="InService"))
    assert v2 in remaining and len(remaining & {v1, v1b}) == 1


@pytest.mark.parametrize("policy,goes", [("NewestInstance", "newest"), ("OldestInstance", "oldest")])
def test_named_termination_policies(world, policy, goes):
    world.create_group(desired=1, TerminationPolicies=[policy])
    (oldest,) = world.wait_states(1, state="InService")
    world.advance(1000)
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=2)
    (newest,) = set(world.wait_states(2, state="InService")) - {oldest}
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    expected_gone = newest if goes == "newest" else oldest
    assert expected_gone not in world.wait_states(1, state="InService")


def test_update_applies_capacity_rebalance_termination_policies_and_cooldown(world):
    world.create_group()
    assert world.group()["CapacityRebalance"] is False
    world.asg.update_auto_scaling_group(AutoScalingGroupName="asg", CapacityRebalance=True,
                                        TerminationPolicies=["OldestInstance", "Default"], DefaultCooldown=60)
    group = world.group()
    assert group["CapacityRebalance"] is True
    assert group["TerminationPolicies"] == ["OldestInstance", "Default"]
    assert group["DefaultCooldown"] == 60


def test_instance_view_shows_launch_time_on_the_model_clock(world):
    world.advance(86400)
    _, clock = world.http("GET", "/_smartscale/clock")
    world.create_group(desired=1)
    (iid,) = world.wait_states(1, state="InService")
    rec = world.model(iid)
    assert rec["launch_time"].endswith("Z")
    reservation = world.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert abs(reservation["LaunchTime"].timestamp() - clock["now"]) < 5
