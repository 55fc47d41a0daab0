#!/usr/bin/env python3
"""Runs the rendered server UserData (pulumi/scripts/render-samples.ts output) with every outside
effect stubbed, like test_worker_bootstrap.py, and checks the agent token it publishes:

    python3 userdata/test_server_bootstrap.py RENDERED_DIR

The fake k3s install script plays K3s: it writes the server CA, the server token and the agent token
file K3s derives from `agent-token-file`. The bootstrap must publish the agent token only when it
is in the secure format with this CA's hash (`K10<sha256 of server-ca.crt>::node:<password>`) and
is not the server token; otherwise it fails without publishing anything. It must also put the
release in place (smartscale-sync) before K3s starts, with the units installed first.

The controller mode (the rendered script is the daemon mode's; the test switches its two values to
run the Lambda mode): in daemon mode the controller unit is enabled and no identity is published; in
Lambda mode the server waits for K3s to fill the ServiceAccount token Secret, publishes
{"server", "ca_crt", "token"} to the identity secret through the helper's stdin, enables the
per-boot publisher and leaves the daemon disabled, and the token appears in no argument, log,
environment or file of the stubbed world; a token Secret never filled fails the bootstrap.
Standard library only. Last line: "N passed, N failed".
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

IDENTITY_SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:smartscale/demo/controller-kubernetes-AbC123"
# A ServiceAccount token (a JWT) and K3s's CA as the token Secret holds them (data: base64).
SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.U2lnbmF0dXJlT2ZUaGVUb2tlbg"
SA_CA_B64 = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIBfakeCA\n-----END CERTIFICATE-----\n").decode()

passed = failed = 0


def check(name: str, ok: bool, detail: str = "") -> None:
    global passed, failed
    passed, failed = passed + ok, failed + (not ok)
    print(f"  {'ok  ' if ok else 'FAIL'}  {name}{'' if ok or not detail else ': ' + detail}", flush=True)


STUB_HELPER = r'''#!@PYTHON@
# Stands in for the smartscale-aws helper.
import json, os, shutil, sys, time
args = sys.argv[2:]
while args and args[0].startswith("--"):
    args = args[2:]
cmd, rest = args[0], args[1:]
opt = {rest[i]: rest[i + 1] for i in range(0, len(rest) - 1) if rest[i].startswith("--")}
with open(os.environ["EVENTS"], "a") as f:
    f.write(f"{cmd} {' '.join(rest)}\n")
with open(os.path.join(os.environ["STATE"], "environ"), "a") as f:
    f.write("\n".join(f"{k}={v}" for k, v in os.environ.items()) + "\n")
if cmd == "secret-put" and opt["--src"] == "-":
    with open(os.path.join(os.environ["STATE"], "stdin-puts"), "a") as f:
        f.write(json.dumps({"id": opt["--id"], "value": sys.stdin.read()}) + "\n")
elif cmd == "secret-get":
    with open(opt["--dest"], "w") as f:
        f.write("ServerTokenFromSecretsManager")
    os.chmod(opt["--dest"], 0o600)
elif cmd == "secret-put":
    shutil.copy(opt["--src"], os.path.join(os.environ["STATE"], "published"))
elif cmd == "s3-get":
    with open(opt["--dest"], "w") as f:
        f.write(os.environ["FAKE_INSTALL"] if opt["--key"].endswith("install.sh") else "k3s binary\n")
    os.chmod(opt["--dest"], int(opt["--mode"], 8))
'''

# Plays K3s's install + first start: CA, server token, and the agent token (MODE picks a bad one).
FAKE_INSTALL = r'''#!/bin/sh
echo "install.sh $*" >> "$EVENTS"
srv="$ROOT/var/lib/rancher/k3s/server"
mkdir -p "$srv/tls"
printf -- '-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n' > "$srv/tls/server-ca.crt"
hash=$(sha256sum "$srv/tls/server-ca.crt" | cut -d' ' -f1)
pw=$(cat "$ROOT/etc/rancher/k3s/agent-token")
echo "K10${hash}::server:$(cat "$ROOT/etc/rancher/k3s/token")" > "$srv/token"
case "$MODE" in
  good) echo "K10${hash}::node:${pw}" > "$srv/agent-token" ;;
  short) echo "${pw}" > "$srv/agent-token" ;;
  server) cp "$srv/token" "$srv/agent-token" ;;
  wronghash) echo "K10$(echo other | sha256sum | cut -d' ' -f1)::node:${pw}" > "$srv/agent-token" ;;
esac
'''
# The token Secret's fields come from files (not the environment, which the test searches):
# the token stays empty for the first TOKEN_EMPTY_CALLS reads, as while K3s has not filled it.
FAKE_K3S = r'''#!/bin/sh
echo "k3s $*" >> "$EVENTS"
/usr/bin/env >> "$STATE/environ"
case "$*" in
  *"create secret"*) echo "kind: Secret" ;;
  *"apply -f -"*) cat >/dev/null ;;  # kubectl reads the whole manifest
  *"jsonpath={.data.token}"*)
    n=$(cat "$STATE/token-reads" 2>/dev/null || echo 0)
    echo $((n + 1)) > "$STATE/token-reads"
    if [ "$n" -ge "$TOKEN_EMPTY_CALLS" ]; then cat "$STATE/sa-token-b64"; fi ;;
  *"jsonpath={.data.ca\.crt}"*) cat "$STATE/sa-ca-b64" ;;
esac
exit 0
'''
FAKE_CURL = r'''#!/bin/sh
url=""
for a in "$@"; do url=$a; done
case "$url" in
  http://169.254.169.254/latest/api/token) echo tok ;;
  */meta-data/local-ipv4) echo 10.20.0.10 ;;
  */meta-data/public-ipv4) echo 203.0.113.10 ;;
  *) exit 22 ;;
esac
'''
LOG = '#!/bin/sh\necho "{what} $*" >> "$EVENTS"\n/usr/bin/env >> "$STATE/environ"\n'
# Real commands the bootstrap may hand the token to, with their arguments and environment recorded.
WRAP = '#!/bin/sh\necho "{what} $*" >> "$EVENTS"\n/usr/bin/env >> "$STATE/environ"\nexec /usr/bin/{what} "$@"\n'
# install(1) without -o/-g: there is no smartscale user here.
FAKE_INSTALL_CMD = r'''#!/bin/sh
args=""
while [ $# -gt 0 ]; do
  case "$1" in -o|-g) shift 2 ;; *) args="$args $1"; shift ;; esac
done
exec /usr/bin/install $args
'''


def run(rendered: Path, mode: str, controller: str = "daemon", token_empty_calls: int = 0,
        identity_wait: int | None = None) -> SimpleNamespace:
    """Runs the bootstrap once. mode: the agent token K3s writes (good, short, server, wronghash);
    controller: daemon, or lambda (the script's two values switched); identity_wait: the
    publisher's IDENTITY_WAIT_SECONDS instead of 600."""
    tmp = Path(tempfile.mkdtemp(prefix="smartscale-server-test-"))
    try:
        root, bin_dir, state = tmp / "root", tmp / "bin", tmp / "state"
        for d in (bin_dir, state, root / "usr/local/bin", root / "etc/systemd/system"):
            d.mkdir(parents=True)
        stubs = {"python3": STUB_HELPER.replace("@PYTHON@", sys.executable), "curl": FAKE_CURL, "k3s": FAKE_K3S,
                 "install": FAKE_INSTALL_CMD, "systemctl": LOG.format(what="systemctl"), "useradd": LOG.format(what="useradd"),
                 "chown": "#!/bin/sh\n", "chgrp": "#!/bin/sh\n", "id": "#!/bin/sh\nexit 1\n",
                 "base64": WRAP.format(what="base64"), "env": WRAP.format(what="env")}
        for name, text in stubs.items():
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        (state / "sa-token-b64").write_text(base64.b64encode(SA_TOKEN.encode()).decode())
        (state / "sa-ca-b64").write_text(SA_CA_B64)
        script = (rendered / "server.sh").read_text()
        if controller == "lambda":
            for old, new in (("CONTROLLER_MODE='daemon'", "CONTROLLER_MODE='lambda'"),
                             ("CONTROLLER_IDENTITY_SECRET_ID=''", f"CONTROLLER_IDENTITY_SECRET_ID='{IDENTITY_SECRET}'")):
                assert script.count(old) == 1, old
                script = script.replace(old, new)
        if identity_wait is not None:
            script = script.replace('"IDENTITY_WAIT_SECONDS=600"', f'"IDENTITY_WAIT_SECONDS={identity_wait}"')
        for prefix in ("/usr/local/", "/etc/", "/var/lib/", "/run/"):
            script = script.replace(prefix, f"{root}{prefix}")
        script = script.replace("#!/usr/bin/python3\n", "#!/usr/bin/env python3\n", 1)
        script = re.sub(r"""(wait_for "K3s's agent token in the secure format") 300""", r"\1 3", script)
        (tmp / "server.sh").write_text(script)
        events = tmp / "events"
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "EVENTS": str(events), "STATE": str(state), "ROOT": str(root),
               "FAKE_INSTALL": FAKE_INSTALL, "MODE": mode, "TOKEN_EMPTY_CALLS": str(token_empty_calls)}
        p = subprocess.run(["bash", str(tmp / "server.sh")], env=env, capture_output=True, text=True, timeout=120)
        published = (state / "published").read_text().strip() if (state / "published").exists() else None
        puts = state / "stdin-puts"
        stdin_puts = [json.loads(line) for line in puts.read_text().splitlines()] if puts.exists() else []
        files = {rel: (root / rel) for rel in ("etc/rancher/k3s/config.yaml", "etc/rancher/k3s/agent-token", "etc/rancher/k3s/token",
                                               "var/lib/rancher/k3s/server/tls/server-ca.crt", "etc/smartscale/identity.env",
                                               "usr/local/lib/smartscale/publish-identity",
                                               "etc/systemd/system/smartscale-identity.service")}
        snapshot = {rel: (f.read_text(), oct(f.stat().st_mode & 0o777)) if f.exists() else None for rel, f in files.items()}
        # Every file the bootstrap left on the (fake) disk, for a token written where it should not be.
        on_disk = {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}
        environ = (state / "environ").read_text() if (state / "environ").exists() else ""
        token_reads = int((state / "token-reads").read_text()) if (state / "token-reads").exists() else 0
        return SimpleNamespace(rc=p.returncode, events=events.read_text().splitlines() if events.exists() else [],
                               published=published, stdin_puts=stdin_puts, files=snapshot, on_disk=on_disk,
                               environ=environ, stdout=p.stdout, stderr=p.stderr, token_reads=token_reads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def index_of(events: list[str]):
    return lambda pat: next((i for i, e in enumerate(events) if re.search(pat, e)), -1)


def check_daemon_mode(r: SimpleNamespace) -> None:
    idx = index_of(r.events)
    check("daemon mode: the controller unit is enabled and started, the daemon's kubeconfig written",
          idx(r"^systemctl enable --now smartscale-controller.service") >= 0 and "etc/smartscale/kubeconfig" in r.on_disk)
    check("daemon mode: no identity is published and no publisher or identity unit is installed",
          r.stdin_puts == [] and r.files["usr/local/lib/smartscale/publish-identity"] is None
          and r.files["etc/systemd/system/smartscale-identity.service"] is None
          and not any("smartscale-identity" in e or "disable" in e for e in r.events), str(r.events))


def check_lambda_mode(rendered: Path) -> None:
    # The first read of the token finds the Secret not filled yet: the publisher waits (one poll).
    r = run(rendered, "good", controller="lambda", token_empty_calls=1)
    check("Lambda mode: the bootstrap succeeds", r.rc == 0, f"exit {r.rc}: {r.stderr[-1500:]}")
    check("Lambda mode: it waits for K3s to fill the token Secret (read again after an empty answer)",
          r.token_reads >= 2, f"{r.token_reads} reads")
    want = {"server": "https://10.20.0.10:6443", "ca_crt": SA_CA_B64, "token": SA_TOKEN}
    ids = [p["id"] for p in r.stdin_puts]
    try:
        value = json.loads(r.stdin_puts[0]["value"]) if r.stdin_puts else None
    except ValueError as e:
        value = f"not JSON: {e}"
    check("Lambda mode: it publishes {server, ca_crt, token} to the identity secret once, through stdin",
          ids == [IDENTITY_SECRET] and value == want, f"{ids} {value}")
    check("Lambda mode: the API address is https:// (the function refuses anything else) and ca_crt is base64 of a PEM",
          isinstance(value, dict) and value.get("server", "").startswith("https://")
          and base64.b64decode(value.get("ca_crt", "")).startswith(b"-----BEGIN CERTIFICATE-----"))
    idx = index_of(r.events)
    put = idx(r"^secret-put --id " + re.escape(IDENTITY_SECRET) + r" --src -$")
    check("Lambda mode: the identity is published after K3s started and the agent token was published",
          0 <= idx(r"^install.sh server") < idx(r"^secret-put --id \S*k3s-agent-token") < put, str(r.events))
    check("Lambda mode: the daemon is disabled and stopped, never enabled; the sync timer still runs",
          idx(r"^systemctl disable --now smartscale-controller.service$") > put
          and not any(re.search(r"^systemctl (enable|start|restart).*smartscale-controller", e) for e in r.events)
          and idx(r"^systemctl enable --now smartscale-sync.timer") > put, str(r.events))
    check("Lambda mode: the per-boot publisher is installed (0700) and its unit enabled, not started again",
          r.files["usr/local/lib/smartscale/publish-identity"] is not None
          and r.files["usr/local/lib/smartscale/publish-identity"][1] == "0o700"
          and r.files["etc/systemd/system/smartscale-identity.service"] is not None
          and idx(r"^systemctl enable smartscale-identity.service$") > put, str(r.events))
    env_file = r.files["etc/smartscale/identity.env"]
    check("Lambda mode: identity.env (0600) names the region, the secret and the API address, and no credential",
          env_file is not None and env_file[1] == "0o600"
          and f"IDENTITY_SECRET_ID={IDENTITY_SECRET}\n" in env_file[0] and "SERVER_URL=https://10.20.0.10:6443\n" in env_file[0]
          and "AWS_REGION=eu-west-1\n" in env_file[0], str(env_file))
    token_b64 = base64.b64encode(SA_TOKEN.encode()).decode()
    for what, text in (("argument", "\n".join(r.events)), ("log line", r.stdout + r.stderr),
                       ("process environment", r.environ)):
        check(f"Lambda mode: the token (plain or base64) is in no {what} the stubs record",
              SA_TOKEN not in text and token_b64 not in text)
    holders = [f for f, b in r.on_disk.items() if SA_TOKEN.encode() in b or token_b64.encode() in b]
    check("Lambda mode: no file holds the token (no daemon kubeconfig)", holders == [], str(holders))

    # K3s never fills the Secret: the publisher gives up at its deadline and the bootstrap fails.
    r = run(rendered, "good", controller="lambda", token_empty_calls=10**6, identity_wait=0)
    check("Lambda mode: a token Secret never filled fails the bootstrap, nothing published, daemon not started",
          r.rc != 0 and r.stdin_puts == [] and "timed out after 0s waiting for K3s to fill kube-system/smartscale-controller-token" in r.stderr
          and not any("smartscale-controller.service" in e and "enable" in e for e in r.events), f"rc {r.rc}: {r.stderr[-400:]}")


def main() -> int:
    rendered = Path(sys.argv[1])
    r = run(rendered, "good")
    ev, published, files = r.events, r.published, r.files
    check("the bootstrap succeeds", r.rc == 0, f"exit {r.rc}: {r.stderr[-1500:]}")
    ca = files["var/lib/rancher/k3s/server/tls/server-ca.crt"][0]
    password, mode = files["etc/rancher/k3s/agent-token"]
    want = f"K10{hashlib.sha256(ca.encode()).hexdigest()}::node:{password}"
    check("the agent token's password is made on the server (64 hex characters, 0600)",
          re.fullmatch(r"[0-9a-f]{64}", password) is not None and mode == "0o600", f"{password!r} {mode}")
    check("it publishes the agent token K3s wrote: K10 + the CA's SHA-256 + ::node:<password>", published == want, f"{published} != {want}")
    check("the server token goes into a 0600 token-file and is not what it publishes",
          files["etc/rancher/k3s/token"] == ("ServerTokenFromSecretsManager", "0o600") and "ServerTokenFromSecretsManager" not in (published or ""))
    config = files["etc/rancher/k3s/config.yaml"][0]
    check("k3s is configured with token-file and agent-token-file", "token-file: " in config and "agent-token-file: " in config, config)
    idx = index_of(ev)
    sync, install, put = idx(r"^sync --release-param"), idx(r"^install.sh server"), idx(r"^secret-put")
    check("the release is synced before K3s starts, and the token published after", 0 <= sync < install < put, str(ev))
    check("the controller and sync timer are enabled at the end",
          idx(r"^systemctl enable --now smartscale-controller.service") > put and idx(r"^systemctl enable --now smartscale-sync.timer") > put)
    check_daemon_mode(r)

    for mode, why in (("short", "a short token (no CA hash: no CA pinning)"), ("server", "the server token itself"),
                      ("wronghash", "a token with another CA's hash")):
        r = run(rendered, mode)
        check(f"it refuses to publish {why}, and the bootstrap fails", r.rc != 0 and r.published is None
              and not any(e.startswith("secret-put") for e in r.events)
              and "waiting for K3s's agent token in the secure format" in r.stderr, f"rc {r.rc}, published {r.published}: {r.stderr[-300:]}")

    check_lambda_mode(rendered)

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
