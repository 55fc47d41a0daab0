#!/usr/bin/env python3
"""userdata/smartscale-aws.py against the test world's AWS (moto plus the lifecycle-hook model)
with moto's request authentication on, so every request's SigV4 signature is recomputed and
checked by an independent implementation (moto's, built on botocore).

    <venv with tests/aws_model/requirements.txt>/bin/python userdata/test_smartscale_aws.py

Covers: S3 GET of a pinned object version (key needing URI encoding, SHA-256 check, nothing left
behind on a mismatch), Secrets Manager get (0600, never on stdout) / wait / put (from a file, and
from stdin as the Lambda mode's identity is published: stored as given, republished harmlessly, an
empty input and a missing secret refused with the reason, a throttled put retried with the same
ClientRequestToken through a proxy that refuses it once), SSM get, lifecycle
heartbeat / ABANDON / "no active action" (exit 3), a wrong secret key refused, and the server's
`sync`: a first release installed, a second run a no-op, a new manifest version re-applied without
a controller restart, a new controller config restarting it, a release naming a path outside the
manifests directory refused. Last line: "N passed, N failed".
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "userdata" / "smartscale-aws.py"
MODEL = ROOT / "tests" / "aws_model" / "smartscale_aws.py"
REGION = "us-east-1"

passed = failed = 0


def check(name: str, ok: bool, detail: str = "") -> None:
    global passed, failed
    passed, failed = passed + ok, failed + (not ok)
    print(f"  {'ok  ' if ok else 'FAIL'}  {name}{'' if ok or not detail else ': ' + detail}", flush=True)


def start_model() -> tuple[subprocess.Popen, str]:
    # Three unauthenticated actions create the IAM user every later request is signed as.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    proc = subprocess.Popen([sys.executable, str(MODEL), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    if not line.startswith("listening on http://"):
        raise SystemExit(f"AWS model did not start: {line!r}")
    return proc, line.split()[-1]


def fake_imds(creds: dict) -> str:
    """IMDSv2 as the helper uses it: PUT a token, then GETs that must carry it."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    role = {"Code": "Success", "AccessKeyId": creds["aws_access_key_id"],
            "SecretAccessKey": creds["aws_secret_access_key"], "Token": "", "Expiration": "2099-01-01T00:00:00Z"}
    answers = {"/latest/meta-data/placement/region": REGION,
               "/latest/meta-data/iam/security-credentials/": "smartscale-worker",
               "/latest/meta-data/iam/security-credentials/smartscale-worker": json.dumps(role)}

    class H(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def reply(self, code: int, text: str) -> None:
            self.send_response(code)
            self.end_headers()
            self.wfile.write(text.encode())

        def do_PUT(self):
            ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            self.reply(200 if ok else 400, "tok")

        def do_GET(self):
            if self.headers.get("X-aws-ec2-metadata-token") != "tok":
                return self.reply(401, "")
            self.reply(200, answers[self.path]) if self.path in answers else self.reply(404, "")

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}"


def flaky_proxy(upstream: str, target: str, refusals: int) -> tuple[str, list[dict]]:
    """Forwards every request to `upstream` unchanged (Host too, so the signature still holds),
    except the first `refusals` with X-Amz-Target `target`, answered with a ThrottlingException.
    Returns its URL and the JSON bodies of the `target` requests it saw."""
    import http.client
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[dict] = []
    up = urllib.parse.urlsplit(upstream)

    class H(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("X-Amz-Target") == target:
                seen.append(json.loads(body))
                if len(seen) <= refusals:
                    out = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    return
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
            conn.request("POST", self.path, body=body, headers=dict(self.headers.items()))
            r = conn.getresponse()
            out = r.read()
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}", seen


def main() -> int:
    proc, url = start_model()
    tmp = Path(tempfile.mkdtemp(prefix="smartscale-aws-test-"))
    try:
        boot = dict(region_name=REGION, endpoint_url=url, aws_access_key_id="boot", aws_secret_access_key="boot",
                    config=Config(retries={"total_max_attempts": 1}))
        iam = boto3.client("iam", **boot)
        iam.create_user(UserName="tester")
        key = iam.create_access_key(UserName="tester")["AccessKey"]
        iam.put_user_policy(UserName="tester", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        creds = dict(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        c = lambda svc: boto3.client(svc, region_name=REGION, endpoint_url=url, **creds)  # noqa: E731
        env = {**os.environ, "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
               "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"]}
        env.pop("AWS_SESSION_TOKEN", None)

        def run(*args: str, timeout: float = 20, extra_env: dict | None = None, stdin: str | None = None):
            return subprocess.run([sys.executable, str(HELPER), "--region", REGION, "--timeout", str(timeout), *args],
                                  capture_output=True, text=True, env={**env, **(extra_env or {})}, timeout=120,
                                  input=stdin)

        # ---- S3
        s3 = c("s3")
        s3.create_bucket(Bucket="smartscale-test-artifacts")
        s3.put_bucket_versioning(Bucket="smartscale-test-artifacts", VersioningConfiguration={"Status": "Enabled"})
        body = os.urandom(3 << 20) + b"end"
        weird = "bin/smart scale+agent~v1.2_(x)"
        v1 = s3.put_object(Bucket="smartscale-test-artifacts", Key=weird, Body=body)["VersionId"]
        s3.put_object(Bucket="smartscale-test-artifacts", Key=weird, Body=b"newer version")
        import hashlib
        sha = hashlib.sha256(body).hexdigest()
        dest = tmp / "agent"
        r = run("s3-get", "--bucket", "smartscale-test-artifacts", "--key", weird, "--version-id", v1,
                "--sha256", sha, "--dest", str(dest), "--mode", "0755")
        check("s3-get fetches the pinned version of a key that needs URI encoding", r.returncode == 0
              and dest.read_bytes() == body and stat.S_IMODE(dest.stat().st_mode) == 0o755, r.stderr)
        bad = tmp / "bad"
        r = run("s3-get", "--bucket", "smartscale-test-artifacts", "--key", weird, "--version-id", v1,
                "--sha256", "0" * 64, "--dest", str(bad))
        check("s3-get refuses a SHA-256 mismatch and leaves nothing behind",
              r.returncode == 1 and "Sha256Mismatch" in r.stderr and not bad.exists()
              and not [p for p in tmp.iterdir() if p.name.startswith(".bad")], r.stderr)
        r = run("s3-get", "--bucket", "smartscale-test-artifacts", "--key", "missing", "--version-id", v1,
                "--sha256", sha, "--dest", str(bad), timeout=3)
        check("s3-get retries a missing object, then gives up with the reason", r.returncode == 1
              and "retrying" in r.stderr and "GaveUp" in r.stderr, r.stderr[-400:])

        # ---- signatures really are checked (JSON and REST here, Query with the lifecycle calls below)
        wrong = {"AWS_SECRET_ACCESS_KEY": "wrong"}
        for what, args in (("SSM", ("ssm-get", "--name", "/x")),
                           ("S3", ("s3-get", "--bucket", "smartscale-test-artifacts", "--key", weird,
                                   "--version-id", v1, "--sha256", sha, "--dest", str(bad)))):
            r = run(*args, timeout=2, extra_env=wrong)
            check(f"{what}: a request signed with the wrong secret key is refused", r.returncode == 1
                  and "Signature" in r.stderr, r.stderr[-300:])

        # ---- Secrets Manager and SSM
        sm = c("secretsmanager")
        token_arn = sm.create_secret(Name="smartscale/t/k3s-server-token", SecretString="s3cr3t-token\n")["ARN"]
        out = tmp / "token"
        r = run("secret-get", "--id", token_arn, "--dest", str(out))
        check("secret-get writes the SecretString to a 0600 file and nothing to stdout",
              r.returncode == 0 and out.read_text() == "s3cr3t-token" and stat.S_IMODE(out.stat().st_mode) == 0o600
              and "s3cr3t" not in r.stdout + r.stderr, r.stderr)
        agent_arn = sm.create_secret(Name="smartscale/t/k3s-agent-token")["ARN"]
        r = run("secret-wait", "--id", agent_arn, timeout=3)
        check("secret-wait keeps waiting while the secret has no value", r.returncode == 1
              and "ResourceNotFoundException" in r.stderr, r.stderr[-300:])
        src = tmp / "agent-token"
        src.write_text("K10" + "a" * 64 + "::node:pw\n")
        threading.Timer(2.0, lambda: run("secret-put", "--id", agent_arn, "--src", str(src))).start()
        t0 = time.monotonic()
        r = run("secret-wait", "--id", agent_arn, timeout=30)
        check("secret-wait returns once secret-put stored a value", r.returncode == 0 and time.monotonic() - t0 >= 1.5
              and sm.get_secret_value(SecretId=agent_arn)["SecretString"] == "K10" + "a" * 64 + "::node:pw", r.stderr)

        # ---- secret-put from stdin: the Lambda mode's identity, never in a file or an argument
        ident_arn = sm.create_secret(Name="smartscale/t/controller-kubernetes")["ARN"]
        token = "eyJhbGciOiJSUzI1NiJ9.c2EtdG9rZW4tZm9yLXRlc3Q.c2ln"
        identity = json.dumps({"server": "https://10.0.0.10:6443", "ca_crt": "LS0tLS1CRUdJTg==", "token": token})
        versions = lambda arn: len(sm.list_secret_version_ids(SecretId=arn)["Versions"])  # noqa: E731
        r = run("secret-put", "--id", ident_arn, "--src", "-", stdin=identity + "\n")
        check("secret-put --src - stores stdin as the SecretString, and nothing of it on stdout or stderr",
              r.returncode == 0 and sm.get_secret_value(SecretId=ident_arn)["SecretString"] == identity
              and token not in r.stdout + r.stderr, r.stderr)
        r = run("secret-put", "--id", ident_arn, "--src", "-", stdin=identity)
        check("publishing the same identity again (the next boot) stores it as the new current version",
              r.returncode == 0 and versions(ident_arn) == 2
              and sm.get_secret_value(SecretId=ident_arn)["SecretString"] == identity, r.stderr)
        r = run("secret-put", "--id", ident_arn, "--src", "-", stdin="  \n")
        check("secret-put refuses an empty stdin with a clear error, storing nothing", r.returncode == 1
              and "secret-put failed: EmptyValue: nothing to store" in r.stderr and versions(ident_arn) == 2, r.stderr)
        r = run("secret-put", "--id", ident_arn, "--src", "-", stdin=identity, timeout=2, extra_env=wrong)
        check("Secrets Manager: a request signed with the wrong secret key is refused", r.returncode == 1
              and "Signature" in r.stderr and versions(ident_arn) == 2 and token not in r.stderr, r.stderr[-300:])
        r = run("secret-put", "--id", "smartscale/t/no-such-secret", "--src", "-", stdin=identity, timeout=30)
        check("secret-put to a missing secret fails at once with the reason (not retried)", r.returncode == 1
              and "ResourceNotFoundException" in r.stderr and "retrying" not in r.stderr, r.stderr[-300:])
        proxy, seen = flaky_proxy(url, "secretsmanager.PutSecretValue", refusals=1)
        renewed = identity.replace("10.0.0.10", "10.0.0.11")
        r = run("secret-put", "--id", ident_arn, "--src", "-", stdin=renewed, extra_env={"AWS_ENDPOINT_URL": proxy})
        check("a throttled put is retried, signed again, with the same ClientRequestToken, and stored",
              r.returncode == 0 and "ThrottlingException" in r.stderr and "retrying" in r.stderr and len(seen) == 2
              and seen[0]["ClientRequestToken"] == seen[1]["ClientRequestToken"]
              and sm.get_secret_value(SecretId=ident_arn)["SecretString"] == renewed, r.stderr[-400:])

        ssm = c("ssm")
        ssm.put_parameter(Name="/smartscale/t/controller/config", Type="String", Value="cluster_id: t\ninterval: 30s")
        r = run("ssm-get", "--name", "/smartscale/t/controller/config")
        check("ssm-get prints the parameter", r.returncode == 0 and r.stdout == "cluster_id: t\ninterval: 30s\n", r.stderr)

        # ---- the instance role through IMDSv2 (token first, hop limit irrelevant here)
        imds_url = fake_imds(creds)
        no_env = {k: v for k, v in env.items() if not k.startswith("AWS_") or k == "AWS_ENDPOINT_URL"}
        r = subprocess.run([sys.executable, str(HELPER), "ssm-get", "--name", "/smartscale/t/controller/config"],
                           capture_output=True, text=True, env={**no_env, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_url})
        check("without credentials in the environment, region and role credentials come from IMDSv2",
              r.returncode == 0 and r.stdout.startswith("cluster_id: t"), r.stderr[-300:])

        # ---- lifecycle hooks (the model keeps the instance in Pending:Wait)
        ec2, asg = c("ec2"), c("autoscaling")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
        ec2.create_launch_template(LaunchTemplateName="workers-lt", LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.medium"})
        asg.create_auto_scaling_group(
            AutoScalingGroupName="workers", MinSize=0, MaxSize=2, DesiredCapacity=1, VPCZoneIdentifier=subnet,
            LaunchTemplate={"LaunchTemplateName": "workers-lt"},
            LifecycleHookSpecificationList=[{"LifecycleHookName": "launch", "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING",
                                             "DefaultResult": "ABANDON", "HeartbeatTimeout": 300}])
        deadline = time.monotonic() + 10
        inst = []
        while time.monotonic() < deadline and not inst:
            inst = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["workers"])["AutoScalingGroups"][0]["Instances"]
            time.sleep(0.1)
        iid = inst[0]["InstanceId"]
        state = inst[0]["LifecycleState"]
        hook = ("--asg", "workers", "--hook", "launch", "--instance", iid)
        r = run("lifecycle", *hook, "heartbeat")
        check("lifecycle heartbeat is accepted for an instance in Pending:Wait", state == "Pending:Wait" and r.returncode == 0,
              f"{state}: {r.stderr}")
        r = run("lifecycle", *hook, "heartbeat", timeout=2, extra_env=wrong)
        check("Auto Scaling: a request signed with the wrong secret key is refused", r.returncode == 1
              and "Signature" in r.stderr, r.stderr[-300:])
        r = run("lifecycle", *hook, "abandon")
        check("lifecycle abandon completes the action", r.returncode == 0, r.stderr)
        r = run("lifecycle", *hook, "heartbeat")
        check("once the action is gone, lifecycle says so with exit status 3", r.returncode == 3, r.stderr)

        # ---- sync
        root = tmp / "root"
        (root / "etc/smartscale").mkdir(parents=True)  # the bootstrap creates it (0750 root:smartscale)
        bin_dir = tmp / "fakebin"
        bin_dir.mkdir()
        calls = tmp / "systemctl.calls"
        (bin_dir / "systemctl").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
        (bin_dir / "systemctl").chmod(0o755)
        senv = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
        group = subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip()

        def put(key: str, data: bytes) -> dict:
            v = s3.put_object(Bucket="smartscale-test-artifacts", Key=key, Body=data)["VersionId"]
            return {"key": key, "versionId": v, "sha256": hashlib.sha256(data).hexdigest()}

        ctrl = put("bin/smartscale-controller", b"\x7fELF controller v1")
        man = put("manifests/smartscale.yaml", b"kind: List\n# v1\n")
        rel = {"bucket": "smartscale-test-artifacts", "controller": ctrl, "manifests": {"smartscale.yaml": man}}
        ssm.put_parameter(Name="/smartscale/t/server/release", Type="String", Value=json.dumps(rel))

        def sync():
            return run("sync", "--release-param", "/smartscale/t/server/release", "--config-param",
                       "/smartscale/t/controller/config", "--root", str(root), "--config-group", group, extra_env=senv)

        def restarts() -> int:
            return calls.read_text().count("try-restart smartscale-controller.service") if calls.exists() else 0

        r = sync()
        installed = root / "usr/local/bin/smartscale-controller"
        manifest = root / "var/lib/rancher/k3s/server/manifests/smartscale.yaml"
        config = root / "etc/smartscale/controller.yaml"
        check("sync installs the release: binary (0755), manifest (0600), controller config (0640), restart",
              r.returncode == 0 and installed.read_bytes() == b"\x7fELF controller v1"
              and stat.S_IMODE(installed.stat().st_mode) == 0o755 and stat.S_IMODE(manifest.stat().st_mode) == 0o600
              and config.read_text() == "cluster_id: t\ninterval: 30s\n" and stat.S_IMODE(config.stat().st_mode) == 0o640
              and restarts() == 1, r.stderr)
        r = sync()
        check("sync with nothing new changes nothing and restarts nothing", r.returncode == 0 and "up to date" in r.stderr
              and restarts() == 1, r.stderr)
        rel["manifests"]["smartscale.yaml"] = put("manifests/smartscale.yaml", b"kind: List\n# v2 dashboards\n")
        ssm.put_parameter(Name="/smartscale/t/server/release", Type="String", Value=json.dumps(rel), Overwrite=True)
        r = sync()
        check("a new manifest version is put in place for K3s to re-apply, without a controller restart",
              r.returncode == 0 and manifest.read_bytes() == b"kind: List\n# v2 dashboards\n" and restarts() == 1, r.stderr)
        ssm.put_parameter(Name="/smartscale/t/controller/config", Type="String", Overwrite=True,
                          Value="cluster_id: t\ninterval: 15s\ndry_run: true")
        r = sync()
        check("a new controller config (interval, dry-run) is written and restarts the controller",
              r.returncode == 0 and "interval: 15s" in config.read_text() and restarts() == 2, r.stderr)
        evil = {**rel, "manifests": {"../../../../etc/cron.d/x.yaml": man}}
        ssm.put_parameter(Name="/smartscale/t/server/release", Type="String", Value=json.dumps(evil), Overwrite=True)
        r = sync()
        check("a release naming a file outside the manifests directory is refused", r.returncode == 1
              and "BadRelease" in r.stderr and not (root / "etc/cron.d").exists(), r.stderr)
    finally:
        proc.terminate()
        proc.wait(10)
        subprocess.run(["rm", "-rf", str(tmp)])
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
