"""Capacity Rebalancing and launch failures, as the EC2 Auto Scaling User Guide describes them."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from conftest import wait_for

SPOT_ONLY = {"OnDemandBaseCapacity": 0, "OnDemandPercentageAboveBaseCapacity": 0}


def mixed(world, types=("t3.medium", "t3a.medium"), distribution=SPOT_ONLY) -> dict:
    return {
        "LaunchTemplate": {
            "LaunchTemplateSpecification": {"LaunchTemplateName": world.launch_template()},
            "Overrides": [{"InstanceType": t} for t in types],
        },
        "InstancesDistribution": distribution,
    }


def recommend(world, iid: str):
    return world.http("POST", f"/_smartscale/instances/{iid}/rebalance-recommendation")


def fail_launches(world, **rule) -> dict:
    status, body = world.http("POST", "/_smartscale/launch-failures", {"region": world.region, **rule})
    assert status == 200, body
    return body


def failed_activities(world) -> list[dict]:
    return [a for a in world.activities() if a["StatusCode"] == "Failed"]


# ------------------------------------------------------------------ Capacity Rebalancing

def test_rebalance_recommendation_launches_first_then_terminates_through_the_hook(world):
    # "When launching a new instance, Amazon EC2 Auto Scaling waits until the new instance passes
    # its health check before it proceeds with terminating the old instance."
    world.create_group(desired=2, subnets=world.subnets(2), CapacityRebalance=True, MixedInstancesPolicy=mixed(world))
    old = world.wait_states(2, state="InService")
    world.put_hook("asg", "launch", "LAUNCHING")
    world.put_hook("asg", "drain", "TERMINATING")
    at_risk = sorted(old)[0]
    status, rec = recommend(world, at_risk)
    assert status == 200
    assert rec["rebalance_recommendation_time"] == world.model(at_risk)["rebalance_recommendation_time"]

    states = world.states()
    (new,) = set(states) - set(old)
    assert states[new] == "Pending:Wait" and states[at_risk] == "InService"
    assert world.model(new)["market"] == "spot"
    assert world.model(new)["availability_zone"] == world.model(at_risk)["availability_zone"]
    assert world.group()["DesiredCapacity"] == 2
    world.advance(60)
    assert world.states()[at_risk] == "InService"  # not before the replacement is in service

    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="launch", InstanceId=new,
                                        LifecycleActionResult="CONTINUE")
    states = world.states()
    assert states[new] == "InService" and states[at_risk] == "Terminating:Wait"
    world.asg.complete_lifecycle_action(AutoScalingGroupName="asg", LifecycleHookName="drain", InstanceId=at_risk,
                                        LifecycleActionResult="CONTINUE")
    final = world.wait_states(2, state="InService")
    assert set(final) == (set(old) - {at_risk}) | {new}
    assert world.ec2_state(at_risk) == "terminated"
    cause = next(a for a in world.activities() if a["Description"].endswith(at_risk))["Cause"]
    assert "rebalance recommendation" in cause


def test_recommendation_time_is_iso_utc_on_the_model_clock(world):
    world.create_group(desired=1, MixedInstancesPolicy=mixed(world))
    (iid,) = world.wait_states(1, state="InService")
    assert world.model(iid)["rebalance_recommendation_time"] is None
    world.advance(7200)
    _, clock = world.http("GET", "/_smartscale/clock")
    _, rec = recommend(world, iid)
    notice = datetime.fromisoformat(rec["rebalance_recommendation_time"].replace("Z", "+00:00"))
    assert abs(notice.timestamp() - clock["now"]) < 5


def test_without_capacity_rebalance_a_recommendation_replaces_nothing(world):
    # "When Capacity Rebalancing is disabled, Amazon EC2 Auto Scaling replaces Spot Instances after
    # the Amazon EC2 Spot service interrupts the instances and their health check fails."
    world.create_group(desired=1, MixedInstancesPolicy=mixed(world))
    (iid,) = world.wait_states(1, state="InService")
    assert recommend(world, iid)[0] == 200
    world.advance(600)
    assert world.states() == {iid: "InService"}
    assert world.model(iid)["rebalance_recommendation_time"] is not None  # IMDS still shows it


def test_recommendation_errors(world):
    world.create_group(desired=1)
    (iid,) = world.wait_states(1, state="InService")
    status, body = recommend(world, iid)
    assert status == 409 and "On-Demand" in body["error"]
    assert recommend(world, "i-0123456789abcdef0")[0] == 404
    assert world.http("GET", f"/_smartscale/instances/{iid}/rebalance-recommendation")[0] == 405


def test_failed_replacement_keeps_the_old_instance_and_retries(world):
    # "If the new instances fail to launch ..., Amazon EC2 Auto Scaling keeps trying to relaunch them."
    world.create_group(desired=1, CapacityRebalance=True, MixedInstancesPolicy=mixed(world, types=("t3.medium",)))
    (old,) = world.wait_states(1, state="InService")
    rule = fail_launches(world, market="spot")
    recommend(world, old)
    assert world.states() == {old: "InService"}
    assert failed_activities(world)[0]["StatusMessage"] == (
        "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available that "
        "matches your request. Launching EC2 instance failed.")
    world.http("DELETE", f"/_smartscale/launch-failures/{rule['id']}")
    world.advance(11)  # the zone's retry time
    (new,) = wait_for(lambda: (s := world.wait_states(1, state="InService")) and old not in s and s,
                      what="replacement in service, old one gone")
    assert world.ec2_state(old) == "terminated" and world.model(new)["market"] == "spot"


def test_capacity_rebalancing_may_exceed_max_size(world):
    # "Amazon EC2 Auto Scaling can temporarily exceed the specified maximum capacity of a group
    # during a rebalancing activity."
    world.create_group(desired=2, max_size=2, CapacityRebalance=True, MixedInstancesPolicy=mixed(world))
    old = world.wait_states(2, state="InService")
    world.put_hook("asg", "launch", "LAUNCHING")
    recommend(world, sorted(old)[0])
    assert len(world.states()) == 3  # max 2, plus the margin of one


# ------------------------------------------------------------------ launch failures

def test_insufficient_capacity_fails_the_activity_and_retries_with_backoff(world):
    subnets = world.subnets(1)
    zone = subnets[0][1]
    world.create_group(subnets=subnets)
    rule = fail_launches(world, instance_type="t3.medium", zone=zone)
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    assert world.states() == {} and world.group()["DesiredCapacity"] == 1
    (act,) = failed_activities(world)
    message = (
        f"We currently do not have sufficient t3.medium capacity in the Availability Zone you requested ({zone}). "
        "Our system will be working on provisioning additional capacity. You can currently get t3.medium capacity "
        "by not specifying an Availability Zone in your request or choosing "
    )
    assert act["StatusMessage"].startswith(message) and act["StatusMessage"].endswith(". Launching EC2 instance failed.")
    assert act["Description"] == f"Launching a new EC2 instance.  Status Reason: {act['StatusMessage']}"
    assert act["Progress"] == 100 and act["EndTime"] >= act["StartTime"]
    assert "increasing the capacity from 0 to 1" in act["Cause"]
    assert zone not in act["StatusMessage"][len(message):]  # the other zones of the region

    world.advance(9)
    assert len(failed_activities(world)) == 1  # first retry after 10 s
    world.advance(2)
    assert len(failed_activities(world)) == 2
    world.advance(15)
    assert len(failed_activities(world)) == 2  # then after 20 s
    world.advance(6)
    assert len(failed_activities(world)) == 3
    _, listed = world.http("GET", "/_smartscale/launch-failures")
    assert [r["fired"] for r in listed if r["id"] == rule["id"]] == [3]

    world.http("DELETE", "/_smartscale/launch-failures")
    world.advance(41)
    world.wait_states(1, state="InService")


def test_a_failing_zone_is_skipped_and_rebalanced_once_it_recovers(world):
    # "If the attempt fails, however, Amazon EC2 Auto Scaling attempts to launch the instances in
    # another Availability Zone until it succeeds." ... "An Availability Zone that previously had
    # insufficient capacity recovers and now has additional capacity" leads to rebalancing.
    subnets = world.subnets(2)
    (_, zone_a), (_, zone_b) = subnets
    world.create_group(subnets=subnets)
    fail_launches(world, zone=zone_a)
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=2)
    ids = world.wait_states(2, state="InService")
    assert Counter(world.model(i)["availability_zone"] for i in ids) == Counter({zone_b: 2})
    assert [f"({zone_a})" in a["StatusMessage"] for a in failed_activities(world)] == [True]

    world.http("DELETE", "/_smartscale/launch-failures")
    world.advance(11)  # zone a's retry time: AZRebalance launches there, then scales zone b in
    final = wait_for(lambda: (s := world.wait_states(2, state="InService")) and
                     Counter(world.model(i)["availability_zone"] for i in s) == Counter({zone_a: 1, zone_b: 1}) and s,
                     what="rebalanced group")
    assert len(set(final) & set(ids)) == 1


def test_rebalancing_at_max_size_uses_the_margin(world):
    # "the system can temporarily exceed the specified maximum capacity of a group during a
    # rebalancing activity. It can do so by a margin of 10 percent or one instance, whichever is greater."
    subnets = world.subnets(2)
    (_, zone_a), (_, zone_b) = subnets
    world.create_group(subnets=subnets, max_size=2)
    fail_launches(world, zone=zone_a)
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=2)
    world.wait_states(2, state="InService")
    world.put_hook("asg", "launch", "LAUNCHING")
    world.http("DELETE", "/_smartscale/launch-failures")
    world.advance(11)
    states = wait_for(lambda: len(world.states()) == 3 and world.states(), what="rebalancing launch above max")
    (new,) = [i for i, s in states.items() if s == "Pending:Wait"]
    assert world.model(new)["availability_zone"] == zone_a
    assert world.group()["MaxSize"] == 2 and world.group()["DesiredCapacity"] == 2


def test_mixed_instances_try_the_other_instance_types(world):
    world.create_group(MixedInstancesPolicy=mixed(world, distribution={"OnDemandBaseCapacity": 0,
                                                                       "OnDemandPercentageAboveBaseCapacity": 100}))
    fail_launches(world, instance_type="t3.medium")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=2)
    ids = world.wait_states(2, state="InService")
    assert {world.model(i)["instance_type"] for i in ids} == {"t3a.medium"}
    assert failed_activities(world) == []  # the fleet found capacity in another pool


def test_launch_failures_by_market_and_count(world):
    world.create_group(MixedInstancesPolicy=mixed(world, types=("t3.medium",),
                                                  distribution={"OnDemandBaseCapacity": 1,
                                                                "OnDemandPercentageAboveBaseCapacity": 0}))
    rule = fail_launches(world, market="spot", count=1, code="InsufficientInstanceCapacity")
    assert rule["count"] == 1 and rule["market"] == "spot" and rule["instance_type"] is None
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=2)
    (on_demand,) = world.wait_states(1, state="InService")
    assert world.model(on_demand)["market"] == "on-demand"
    assert world.http("GET", "/_smartscale/launch-failures") == (200, [])  # its one failure is spent
    world.advance(11)
    ids = world.wait_states(2, state="InService")
    assert Counter(world.model(i)["market"] for i in ids) == Counter({"on-demand": 1, "spot": 1})


def test_unsupported_and_custom_failure_messages(world):
    subnets = world.subnets(1)
    world.create_group(subnets=subnets)
    fail_launches(world, code="Unsupported", count=1)
    fail_launches(world, code="VcpuLimitExceeded", count=1, message="You have requested more vCPU capacity than allowed.")
    world.asg.set_desired_capacity(AutoScalingGroupName="asg", DesiredCapacity=1)
    world.advance(11)
    first, second = reversed(failed_activities(world))
    assert first["StatusMessage"].startswith(f"Your requested instance type (t3.medium) is not supported in your "
                                             f"requested Availability Zone ({subnets[0][1]}).")
    assert second["StatusMessage"] == "You have requested more vCPU capacity than allowed. Launching EC2 instance failed."


def test_launch_failure_endpoint_validation(world):
    post = lambda body: world.http("POST", "/_smartscale/launch-failures", body)  # noqa: E731
    for bad in ({"market": "reserved"}, {"count": 0}, {"count": "2"}, {"zone": "eu-west-3a", "region": "us-east-1"},
                {"code": "Bogus"}, {"instance": "t3.medium"}, {"region": "mars-1"}):
        status, body = post(bad)
        assert status == 400 and body["error"], bad
    assert world.http("DELETE", "/_smartscale/launch-failures/launch-failure-999")[0] == 404
    assert world.http("PUT", "/_smartscale/launch-failures")[0] == 405
