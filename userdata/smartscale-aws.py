#!/usr/bin/python3
"""smartscale-aws: the few AWS calls an instance's bootstrap makes, signed with the instance role.

Python standard library only (python3 ships on every image cloud-init runs on), so the bootstrap
downloads nothing from the internet: no AWS CLI, no snap. Requests are signed with AWS Signature
Version 4 as AWS documents it. Installed by the UserData as /usr/local/lib/smartscale/aws.

  aws s3-get --bucket B --key K --version-id V --sha256 HEX --dest PATH [--mode 0755]
  aws secret-get --id SECRET --dest PATH      the SecretString into a 0600 file (never to stdout)
  aws secret-wait --id SECRET                 until the secret has a current value (discarded)
  aws secret-put --id SECRET --src PATH|-     PutSecretValue from a file, or from stdin with `-` (so a
                                              credential need not be written to a file or an argument)
  aws ssm-get --name NAME                     the parameter's value on stdout
  aws lifecycle --asg A --hook H --instance I heartbeat|continue|abandon
  aws sync --release-param P --config-param C the server's release (see sync())

Options before the command: --region (default: IMDS), --timeout SECONDS (how long to retry, 300).
AWS_ENDPOINT_URL overrides every endpoint (tests); AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
AWS_SESSION_TOKEN override the instance role. Exit status: 0 done, 1 failed, 2 usage, 3 no active
lifecycle action (lifecycle only).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import hmac
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET

IMDS = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://169.254.169.254").rstrip("/")
# Answers worth another try: throttling, server faults, and (at boot) IAM that has not propagated.
RETRY_CODES = {
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestTimeout", "InternalError", "InternalFailure", "ServiceUnavailable", "SlowDown",
    "AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "ExpiredToken",
    "UnrecognizedClientException",
}
NO_ACTION = "No active Lifecycle Action"


class AwsError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message} (HTTP {status})")
        self.status, self.code, self.message = status, code, message


def log(msg: str) -> None:
    print(f"smartscale-aws: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- credentials


def imds_get(path: str) -> str:
    req = urllib.request.Request(f"{IMDS}/latest/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
    token = urllib.request.urlopen(req, timeout=5).read().decode()
    req = urllib.request.Request(f"{IMDS}/latest/{path}", headers={"X-aws-ec2-metadata-token": token})
    return urllib.request.urlopen(req, timeout=5).read().decode()


def credentials() -> tuple[str, str, str | None]:
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], os.environ.get("AWS_SESSION_TOKEN")
    role = imds_get("meta-data/iam/security-credentials/").split("\n")[0].strip()
    c = json.loads(imds_get(f"meta-data/iam/security-credentials/{role}"))
    return c["AccessKeyId"], c["SecretAccessKey"], c["Token"]


# ---------------------------------------------------------------------------- SigV4


def quote(s: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(s, safe=safe)


def sign(method: str, host: str, path: str, query: dict, headers: dict, body: bytes,
         region: str, service: str, creds, now: datetime.datetime) -> dict:
    """The headers of a request signed with SigV4. `path` is already URI-encoded."""
    key, secret, token = creds
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    payload = hashlib.sha256(body).hexdigest()
    h = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    h.update({"host": host, "x-amz-date": amz_date})
    if service == "s3":
        h["x-amz-content-sha256"] = payload
    if token:
        h["x-amz-security-token"] = token
    names = sorted(h)
    canonical = "\n".join([
        method, path or "/",
        "&".join(f"{quote(k)}={quote(v)}" for k, v in sorted(query.items())),
        "".join(f"{n}:{h[n]}\n" for n in names), ";".join(names), payload,
    ])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    h["authorization"] = f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    return h


class Client:
    def __init__(self, region: str, timeout: float):
        self.region, self.deadline = region, time.monotonic() + timeout
        self.creds = None

    def endpoint(self, service: str, bucket: str | None = None) -> tuple[str, str, str]:
        """(scheme, host, path prefix) for a service; S3 is virtual-hosted unless an endpoint is set."""
        override = os.environ.get("AWS_ENDPOINT_URL")
        if override:
            u = urllib.parse.urlsplit(override)
            return u.scheme, u.netloc, f"/{bucket}" if bucket else ""
        if bucket:
            return "https", f"{bucket}.s3.{self.region}.amazonaws.com", ""
        return "https", f"{service}.{self.region}.amazonaws.com", ""

    def request(self, service: str, method: str, path: str = "/", query: dict | None = None,
                headers: dict | None = None, body: bytes = b"", bucket: str | None = None,
                retry: set[str] = frozenset()):
        """Sends one signed request, retrying transient failures until the deadline."""
        delay = 1.0
        while True:
            try:
                if self.creds is None:
                    self.creds = credentials()
                scheme, host, prefix = self.endpoint(service, bucket)
                q = query or {}
                signed = sign(method, host, prefix + path, q, headers or {}, body, self.region, service,
                              self.creds, datetime.datetime.now(datetime.timezone.utc))
                qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in sorted(q.items()))
                url = f"{scheme}://{host}{prefix}{path}" + (f"?{qs}" if qs else "")
                req = urllib.request.Request(url, data=body if method != "GET" else None, method=method, headers=signed)
                return urllib.request.urlopen(req, timeout=60)
            except urllib.error.HTTPError as e:
                err = parse_error(e.code, e.read())
                if err.code in ("ExpiredToken", "InvalidClientTokenId"):
                    self.creds = None  # the role's credentials rotated
                if not (e.code >= 500 or e.code == 429 or err.code in RETRY_CODES or err.code in retry):
                    raise err from None
                why = str(err)
            except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
                why = f"{type(e).__name__}: {e}"
            if time.monotonic() + delay > self.deadline:
                raise AwsError(0, "GaveUp", f"{service} {method} {path}: {why}")
            log(f"{service}: {why}; retrying in {delay:.0f}s")
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 20)

    def json_call(self, service: str, target: str, payload: dict, retry: set[str] = frozenset()) -> dict:
        version = "1.1"
        r = self.request(service, "POST", headers={"Content-Type": f"application/x-amz-json-{version}",
                                                   "X-Amz-Target": target},
                         body=json.dumps(payload).encode(), retry=retry)
        return json.loads(r.read() or b"{}")

    def query_call(self, service: str, action: str, params: dict, version: str) -> bytes:
        body = urllib.parse.urlencode({"Action": action, "Version": version, **params}).encode()
        r = self.request(service, "POST", headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
                         body=body)
        return r.read()


def parse_error(status: int, body: bytes) -> AwsError:
    text = body.decode("utf-8", "replace")
    try:
        j = json.loads(text)
        return AwsError(status, str(j.get("__type", "Error")).split("#")[-1], j.get("message") or j.get("Message", ""))
    except ValueError:
        pass
    code = re.search(r"<Code>([^<]*)</Code>", text)
    msg = re.search(r"<Message>([^<]*)</Message>", text)
    return AwsError(status, code.group(1) if code else f"HTTP{status}", msg.group(1) if msg else text[:200])


# ---------------------------------------------------------------------------- commands


def sha256_file(path: str) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except FileNotFoundError:
        return None


def install_bytes_from(stream, dest: str, mode: int, sha: str | None = None, gid: int = -1) -> None:
    """Writes `stream` to a temporary file beside `dest` (not named *.yaml, so K3s ignores it),
    checks its SHA-256, then renames it over `dest`."""
    d = os.path.dirname(dest) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", suffix=".tmp", dir=d)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            if gid >= 0:
                os.fchown(f.fileno(), 0 if os.geteuid() == 0 else -1, gid)
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if sha and h.hexdigest() != sha:
            raise AwsError(0, "Sha256Mismatch", f"{dest}: expected {sha}, got {h.hexdigest()}")
        os.rename(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def s3_get(c: Client, bucket: str, key: str, version: str, sha: str, dest: str, mode: int) -> None:
    # 403/404 right after the upload or while the role's policy propagates: try again.
    r = c.request("s3", "GET", "/" + quote(key, safe="/-_.~"), {"versionId": version}, bucket=bucket,
                  retry={"NoSuchKey", "NoSuchVersion", "HTTP403", "HTTP404"})
    install_bytes_from(r, dest, mode, sha)
    log(f"installed {dest} from s3://{bucket}/{key} (sha256 {sha})")


def secret_value(c: Client, secret_id: str, retry: set[str] = frozenset()) -> str:
    out = c.json_call("secretsmanager", "secretsmanager.GetSecretValue", {"SecretId": secret_id}, retry)
    value = out.get("SecretString")
    if not value:
        raise AwsError(0, "EmptySecret", f"{secret_id} has no SecretString")
    return value


def secret_get(c: Client, secret_id: str, dest: str) -> None:
    value = secret_value(c, secret_id)
    old = os.umask(0o077)
    try:
        install_bytes_from(_Bytes(value.strip().encode()), dest, 0o600)
    finally:
        os.umask(old)


def secret_put(c: Client, secret_id: str, src: str) -> None:
    """PutSecretValue of the file `src`, or of stdin if `src` is "-"; the value is never logged."""
    if src == "-":
        value = sys.stdin.read().strip()
    else:
        with open(src) as f:
            value = f.read().strip()
    if not value:
        raise AwsError(0, "EmptyValue", f"nothing to store in {secret_id}: {'stdin' if src == '-' else src} is empty")
    # One ClientRequestToken for all of this call's retries: a retried request that AWS had already
    # applied is not stored twice.
    c.json_call("secretsmanager", "secretsmanager.PutSecretValue",
                {"SecretId": secret_id, "SecretString": value, "ClientRequestToken": str(uuid.uuid4())})
    log(f"stored a new value of {secret_id}")


def ssm_get(c: Client, name: str) -> str:
    return c.json_call("ssm", "AmazonSSM.GetParameter", {"Name": name})["Parameter"]["Value"]


def lifecycle(c: Client, asg: str, hook: str, instance: str, what: str) -> int:
    params = {"AutoScalingGroupName": asg, "LifecycleHookName": hook, "InstanceId": instance}
    try:
        if what == "heartbeat":
            c.query_call("autoscaling", "RecordLifecycleActionHeartbeat", params, "2011-01-01")
        else:
            c.query_call("autoscaling", "CompleteLifecycleAction",
                         {**params, "LifecycleActionResult": what.upper()}, "2011-01-01")
    except AwsError as e:
        if NO_ACTION in e.message:
            log(f"{hook}: no active lifecycle action for {instance}")
            return 3
        raise
    log(f"{hook}: {what} for {instance}")
    return 0


class _Bytes:
    def __init__(self, b: bytes):
        self.b = b

    def read(self, n: int) -> bytes:
        out, self.b = self.b[:n], self.b[n:]
        return out


# ---------------------------------------------------------------------------- sync

MANIFEST_NAME = re.compile(r"^[a-z0-9-]+\.yaml$")
SHA = re.compile(r"^[0-9a-f]{64}$")
KEY = re.compile(r"^[A-Za-z0-9/_.+-]{1,1024}$")


def sync(c: Client, release_param: str, config_param: str, root: str, group: str) -> list[str]:
    """Brings the server to the release Pulumi wrote into SSM: the controller binary, the K3s
    manifests (K3s applies a changed file on its own) and the controller's config. Restarts the
    controller if its binary or config changed. Destinations are fixed here, never taken from the
    parameter. Returns what changed."""
    import grp

    release = json.loads(ssm_get(c, release_param))
    bucket = release["bucket"]
    wanted = [(release["controller"], "/usr/local/bin/smartscale-controller", 0o755, True)]
    for name, art in sorted(release["manifests"].items()):
        if not MANIFEST_NAME.match(name):
            raise AwsError(0, "BadRelease", f"manifest name {name!r}")
        wanted.append((art, f"/var/lib/rancher/k3s/server/manifests/{name}", 0o600, False))
    changed, restart = [], False
    for art, dest, mode, restarts in wanted:
        if not (SHA.match(art["sha256"]) and KEY.match(art["key"]) and art["versionId"]):
            raise AwsError(0, "BadRelease", f"artifact {art!r}")
        path = root.rstrip("/") + dest
        if sha256_file(path) == art["sha256"]:
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3_get(c, bucket, art["key"], art["versionId"], art["sha256"], path, mode)
        changed.append(dest)
        restart |= restarts
    config = ssm_get(c, config_param).rstrip("\n") + "\n"
    path = root.rstrip("/") + "/etc/smartscale/controller.yaml"
    if sha256_file(path) != hashlib.sha256(config.encode()).hexdigest():
        install_bytes_from(_Bytes(config.encode()), path, 0o640, gid=grp.getgrnam(group).gr_gid)
        changed.append("/etc/smartscale/controller.yaml")
        restart = True
    if restart:
        # try-restart: a no-op before the first start (the bootstrap starts it) and when an
        # operator stopped it on purpose.
        subprocess.run(["systemctl", "try-restart", "smartscale-controller.service"], check=True)
    for what in changed:
        log(f"sync: updated {what}")
    if not changed:
        log("sync: up to date")
    return changed


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smartscale-aws")
    p.add_argument("--region")
    p.add_argument("--timeout", type=float, default=300)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("s3-get")
    for a in ("--bucket", "--key", "--version-id", "--sha256", "--dest"):
        s.add_argument(a, required=True)
    s.add_argument("--mode", default="0644")
    for name in ("secret-get", "secret-wait", "secret-put"):
        s = sub.add_parser(name)
        s.add_argument("--id", required=True)
        if name == "secret-get":
            s.add_argument("--dest", required=True)
        if name == "secret-put":
            s.add_argument("--src", required=True, help="a file, or - for stdin")
    sub.add_parser("ssm-get").add_argument("--name", required=True)
    s = sub.add_parser("lifecycle")
    for a in ("--asg", "--hook", "--instance"):
        s.add_argument(a, required=True)
    s.add_argument("what", choices=["heartbeat", "continue", "abandon"])
    s = sub.add_parser("sync")
    s.add_argument("--release-param", required=True)
    s.add_argument("--config-param", required=True)
    s.add_argument("--root", default="/")
    s.add_argument("--config-group", default="smartscale")
    a = p.parse_args(argv)

    try:
        region = a.region or imds_get("meta-data/placement/region").strip()
        c = Client(region, a.timeout)
        if a.cmd == "s3-get":
            s3_get(c, a.bucket, a.key, a.version_id, a.sha256, a.dest, int(a.mode, 8))
        elif a.cmd == "secret-get":
            secret_get(c, a.id, a.dest)
        elif a.cmd == "secret-wait":
            # The server publishes the agent token once K3s is up: wait for it.
            secret_value(c, a.id, retry={"ResourceNotFoundException"})
            log(f"{a.id} has a value")
        elif a.cmd == "secret-put":
            secret_put(c, a.id, a.src)
        elif a.cmd == "ssm-get":
            print(ssm_get(c, a.name))
        elif a.cmd == "lifecycle":
            return lifecycle(c, a.asg, a.hook, a.instance, a.what)
        elif a.cmd == "sync":
            sync(c, a.release_param, a.config_param, a.root, a.config_group)
    except (AwsError, OSError, KeyError, ValueError) as e:
        log(f"{a.cmd} failed: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
