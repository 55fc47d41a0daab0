"""Controllable private IPs: a replacement can get a terminated instance's address (K3s names a
node after its hostname, ip-10-0-0-5...), and the instance view shows the address and DNS name."""

from __future__ import annotations

from conftest import wait_for


def ec2_view(world, iid: str) -> dict:
    return world.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]


def dns_name(world, ip: str) -> str:
    dashed = ip.replace(".", "-")
    return f"ip-{dashed}.ec2.internal" if world.region == "us-east-1" else f"ip-{dashed}.{world.region}.compute.internal"


def test_instance_view_shows_ec2_private_address(world):
    world.create_group(desired=1)
    (iid,) = world.wait_states(1, state="InService")
    rec, ec2 = world.model(iid), ec2_view(world, iid)
    assert rec["private_ip"] == ec2["PrivateIpAddress"] and rec["private_ip"].startswith("10.0.0.")
    assert rec["private_dns_name"] == ec2["PrivateDnsName"] == dns_name(world, rec["private_ip"])


def test_next_launch_of_the_group_reuses_a_terminated_address(world):
    world.create_group(name="ips", desired=2, min_size=0)
    old, kept = sorted(world.wait_states(2, name="ips", state="InService"))
    ip = world.model(old)["private_ip"]
    status, body = world.http("POST", "/_smartscale/next-private-ip", {"group": "ips", "ip": ip, "region": world.region})
    assert status == 409 and "in use" in body["error"]  # still held by the running instance

    world.asg.terminate_instance_in_auto_scaling_group(InstanceId=old, ShouldDecrementDesiredCapacity=True)
    world.wait_states(1, name="ips", state="InService")
    status, entry = world.http("POST", "/_smartscale/next-private-ip", {"group": "ips", "ip": ip, "region": world.region})
    assert status == 200 and entry == {"ip": ip, "group": "ips", "zone": None, "region": world.region}
    assert world.http("GET", "/_smartscale/next-private-ip") == (200, [entry])
    world.asg.set_desired_capacity(AutoScalingGroupName="ips", DesiredCapacity=2)
    (new,) = set(world.wait_states(2, name="ips", state="InService")) - {kept}
    assert world.model(new)["private_ip"] == ip and ec2_view(world, new)["PrivateIpAddress"] == ip
    assert world.model(new)["private_dns_name"] == dns_name(world, ip)
    assert world.http("GET", "/_smartscale/next-private-ip") == (200, [])  # used once

    # Without a request, a freed address is not handed out again.
    world.asg.terminate_instance_in_auto_scaling_group(InstanceId=new, ShouldDecrementDesiredCapacity=False)
    states = wait_for(lambda: (s := world.wait_states(2, name="ips", state="InService")) and new not in s and s,
                      what="replacement")
    (third,) = set(states) - {kept}
    assert world.model(third)["private_ip"] != ip


def test_next_address_in_a_zone_pins_the_launch_to_its_subnet(world):
    subnets = world.subnets(2)
    (_, zone_a), (subnet_b, zone_b) = subnets
    world.create_group(name="zoned", subnets=subnets)
    status, _ = world.http("POST", "/_smartscale/next-private-ip", {"zone": zone_b, "ip": "10.0.1.77"})
    assert status == 200
    world.asg.set_desired_capacity(AutoScalingGroupName="zoned", DesiredCapacity=1)
    (iid,) = world.wait_states(1, name="zoned", state="InService")
    rec = world.model(iid)
    assert (rec["private_ip"], rec["availability_zone"], rec["subnet_id"]) == ("10.0.1.77", zone_b, subnet_b)


def test_groups_in_default_subnets_use_the_subnet_range(world):
    zones = world.zones(2)
    world.asg.create_auto_scaling_group(AutoScalingGroupName="plain", MinSize=0, MaxSize=3, DesiredCapacity=1,
                                        AvailabilityZones=zones, LaunchTemplate={"LaunchTemplateName": world.launch_template()})
    (iid,) = world.wait_states(1, name="plain", state="InService")
    rec = world.model(iid)
    subnet = world.ec2.describe_subnets(SubnetIds=[rec["subnet_id"]])["Subnets"][0]
    assert subnet["DefaultForAz"] and rec["private_ip"].startswith("172.31.")


def test_next_private_ip_validation(world):
    world.create_group(name="v")
    post = lambda body: world.http("POST", "/_smartscale/next-private-ip", body)  # noqa: E731
    for bad in ({"ip": "10.0.0.9"}, {"ip": "10.0.0.9", "group": "v", "zone": "x"}, {"group": "v"},
                {"ip": "10.0.0.999", "group": "v"}, {"ip": "192.168.1.1", "group": "v", "region": world.region},
                {"ip": "10.0.0.9", "group": "nope", "region": world.region}, {"ip": "10.0.0.9", "group": "v", "port": 1}):
        status, body = post(bad)
        assert status == 400 and body["error"], bad
    status, body = post({"ip": "192.168.1.1", "group": "v", "region": world.region})
    assert "in none of group v's subnets" in body["error"]
    assert world.http("DELETE", "/_smartscale/next-private-ip") == (200, {"cleared": 0})
