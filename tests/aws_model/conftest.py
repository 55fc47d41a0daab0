"""Fixtures for the AWS model tests: one server per session, one region per test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "smartscale_aws.py")

# Regions with at least three AZs in moto; every test takes the next unused (region,
# account) pair: moto keeps both apart (x-moto-account-id picks the account).
_REGIONS = [
    r for r in boto3.session.Session().get_available_regions("autoscaling") if r != "us-west-1"
]
DEFAULT_ACCOUNT = "123456789012"
_ACCOUNTS = [DEFAULT_ACCOUNT, "000000000002", "000000000003", "000000000004"]
_next_slot = iter([(region, account) for account in _ACCOUNTS for region in _REGIONS])
# Control endpoints whose rules outlive a test unless cleared.
RULE_ENDPOINTS = ("/_smartscale/launch-failures", "/_smartscale/autoscaling-faults",
                  "/_smartscale/dynamodb-faults", "/_smartscale/next-private-ip")


def start_server(port: int = 0):
    """Start smartscale_aws.py; returns (process, url or None, stderr file)."""
    # SMARTSCALE_AWS_LOG=path keeps the server's stderr (request log, tracebacks) for a look later.
    path = os.environ.get("SMARTSCALE_AWS_LOG")
    log = open(path, "w+") if path and port == 0 else tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    line = proc.stdout.readline()  # the server prints this line first, or exits
    # Keep draining stdout so a chatty moto can never block on a full pipe.
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    url = line.split()[-1] if line.startswith("listening on http://") else None
    return proc, url, log


@pytest.fixture(scope="session")
def server_url():
    proc, url, log = start_server()
    if url is None:
        proc.wait(5)
        log.seek(0)
        pytest.fail(f"server did not start: {log.read()}")
    yield url
    proc.terminate()
    proc.wait(10)


def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    """Poll until predicate() is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class World:
    def __init__(self, url: str, region: str, account: str = DEFAULT_ACCOUNT):
        self.url, self.region, self.account = url, region, account
        self.asg = self.client("autoscaling")
        self.ec2 = self.client("ec2")
        self.sqs = self.client("sqs")
        self.ddb = self.client("dynamodb")
        self._lt = None

    def client(self, service: str):
        client = boto3.client(
            service, region_name=self.region, endpoint_url=self.url, aws_access_key_id="testing",
            aws_secret_access_key="testing", config=Config(retries={"total_max_attempts": 1}),  # one attempt: injected faults stay visible
        )
        if self.account != DEFAULT_ACCOUNT:
            def pick_account(request, **_):
                request.headers["x-moto-account-id"] = self.account
            client.meta.events.register("before-sign", pick_account)
        return client

    def raw(self, service: str, body: bytes, headers: dict | None = None):
        """One signed-looking request straight to the server: (status, headers, body text)."""
        all_headers = {
            "Authorization": f"AWS4-HMAC-SHA256 Credential=testing/20240101/{self.region}/{service}/aws4_request, "
                             "SignedHeaders=host, Signature=0",
            "x-moto-account-id": self.account, **(headers or {}),
        }
        req = urllib.request.Request(self.url + "/", data=body, method="POST", headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read().decode()

    # --- control endpoints
    def http(self, method: str, path: str, body=None, raw: bytes | None = None, timeout: float = 10):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def advance(self, seconds: float) -> None:
        status, _ = self.http("POST", "/_smartscale/clock/advance", {"seconds": seconds})
        assert status == 200

    def model(self, instance_id: str) -> dict:
        status, body = self.http("GET", f"/_smartscale/instances/{instance_id}")
        assert status == 200, body
        return body

    # --- AWS set-up
    def zones(self, n: int) -> list[str]:
        names = [z["ZoneName"] for z in self.ec2.describe_availability_zones()["AvailabilityZones"]]
        return sorted(names)[:n]

    def subnets(self, n: int) -> list[tuple[str, str]]:
        """n subnets, one per AZ: [(subnet_id, az)]."""
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        out = []
        for i, az in enumerate(self.zones(n)):
            sn = self.ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=az)
            out.append((sn["Subnet"]["SubnetId"], az))
        return out

    def launch_template(self) -> str:
        if self._lt is None:
            self._lt = "workers-lt"
            self.ec2.create_launch_template(
                LaunchTemplateName=self._lt,
                LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.medium"},
            )
        return self._lt

    def queue(self, name: str = "hooks") -> tuple[str, str]:
        url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return url, arn

    def create_group(self, name="asg", desired=0, min_size=0, max_size=10, subnets=None, **extra) -> str:
        subnets = subnets or self.subnets(1)
        params = dict(
            AutoScalingGroupName=name, MinSize=min_size, MaxSize=max_size, DesiredCapacity=desired,
            VPCZoneIdentifier=",".join(s for s, _ in subnets),
        )
        if "MixedInstancesPolicy" not in extra:
            params["LaunchTemplate"] = {"LaunchTemplateName": self.launch_template()}
        params.update(extra)
        self.asg.create_auto_scaling_group(**params)
        return name

    def put_hook(self, group: str, name: str, transition: str, **extra) -> None:
        self.asg.put_lifecycle_hook(
            AutoScalingGroupName=group, LifecycleHookName=name,
            LifecycleTransition=f"autoscaling:EC2_INSTANCE_{transition}", **extra,
        )

    # --- observations
    def group(self, name: str = "asg") -> dict:
        return self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]

    def states(self, name: str = "asg") -> dict[str, str]:
        return {i["InstanceId"]: i["LifecycleState"] for i in self.group(name)["Instances"]}

    def ec2_state(self, instance_id: str) -> str:
        res = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return res[0]["Instances"][0]["State"]["Name"]

    def wait_states(self, expected: dict | int, name: str = "asg", state: str | None = None, timeout=5.0):
        """Wait until the group's instances are `expected` ({id: state}) or `expected` many in `state`."""
        def check():
            current = self.states(name)
            if isinstance(expected, dict):
                done = current == expected
            else:
                done = len(current) == expected and all(s == state for s in current.values())
            return (current,) if done else None  # a tuple, so an empty group still counts as done
        return wait_for(check, timeout, f"instances {expected} {state or ''} in {name}")[0]

    def messages(self, queue_url: str, count: int, timeout=5.0) -> list[dict]:
        """Collect `count` lifecycle notifications (test notifications are skipped)."""
        got: list[dict] = []

        def check():
            resp = self.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
            for m in resp.get("Messages", []):
                self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
                body = json.loads(m["Body"])
                if body.get("Event") != "autoscaling:TEST_NOTIFICATION":
                    got.append(body)
            return len(got) >= count

        wait_for(check, timeout, f"{count} lifecycle notifications")
        return got

    def activities(self, name: str = "asg") -> list[dict]:
        return self.asg.describe_scaling_activities(AutoScalingGroupName=name)["Activities"]


@pytest.fixture
def world(server_url):
    try:
        region, account = next(_next_slot)
    except StopIteration:
        pytest.fail("more tests than (region, account) pairs: add an account to _ACCOUNTS")
    w = World(server_url, region, account)
    yield w
    for path in RULE_ENDPOINTS:  # injected rules are global: never let one leak into the next test
        w.http("DELETE", path)
    w.http("DELETE", "/_smartscale/prices")  # prices are per region, not per account: back to the defaults
    w.http("POST", "/_smartscale/dynamodb-ttl", {"delay_seconds": 0})
