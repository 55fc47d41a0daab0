#!/usr/bin/env python3
"""Runs the rendered server UserData (pulumi/scripts/render-samples.ts output) with every outside
effect stubbed, like test_worker_bootstrap.py, and checks the agent token it publishes:

    python3 userdata/test_server_bootstrap.py RENDERED_DIR

The fake k3s install script plays K3s: it writes the server CA, the server token and the agent token
file K3s derives from `agent-token-file`. The bootstrap must publish the agent token only when it
is in the secure format with this CA's hash (`K10<sha256 of server-ca.crt>::node:<password>`) and
is not the server token; otherwise it fails without publishing anything. It must also put the
release in place (smartscale-sync) before K3s starts, with the units installed first.
Standard library only. Last line: "N passed, N failed".
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

passed = failed = 0


def check(name: str, ok: bool, detail: str = "") -> None:
    global passed, failed
    passed, failed = passed + ok, failed + (not ok)
    print(f"  {'ok  ' if ok else 'FAIL'}  {name}{'' if ok or not detail else ': ' + detail}", flush=True)


STUB_HELPER = r'''#!@PYTHON@
# Stands in for the smartscale-aws helper.
import os, shutil, sys, time
args = sys.argv[2:]
while args and args[0].startswith("--"):
    args = args[2:]
cmd, rest = args[0], args[1:]
opt = {rest[i]: rest[i + 1] for i in range(0, len(rest) - 1) if rest[i].startswith("--")}
with open(os.environ["EVENTS"], "a") as f:
    f.write(f"{cmd} {' '.join(rest)}\n")
if cmd == "secret-get":
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
FAKE_K3S = r'''#!/bin/sh
echo "k3s $*" >> "$EVENTS"
case "$*" in
  *"create secret"*) echo "kind: Secret" ;;
  *"apply -f -"*) cat >/dev/null ;;  # kubectl reads the whole manifest
  *"jsonpath={.data.token}"*) printf 'dG9rZW4=' ;;
  *"jsonpath={.data.ca\.crt}"*) printf 'Q0E=' ;;
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
LOG = '#!/bin/sh\necho "{what} $*" >> "$EVENTS"\n'
# install(1) without -o/-g: there is no smartscale user here.
FAKE_INSTALL_CMD = r'''#!/bin/sh
args=""
while [ $# -gt 0 ]; do
  case "$1" in -o|-g) shift 2 ;; *) args="$args $1"; shift ;; esac
done
exec /usr/bin/install $args
'''


def run(rendered: Path, mode: str):
    tmp = Path(tempfile.mkdtemp(prefix="smartscale-server-test-"))
    try:
        root, bin_dir, state = tmp / "root", tmp / "bin", tmp / "state"
        for d in (bin_dir, state, root / "usr/local/bin", root / "etc/systemd/system"):
            d.mkdir(parents=True)
        stubs = {"python3": STUB_HELPER.replace("@PYTHON@", sys.executable), "curl": FAKE_CURL, "k3s": FAKE_K3S,
                 "install": FAKE_INSTALL_CMD, "systemctl": LOG.format(what="systemctl"), "useradd": LOG.format(what="useradd"),
                 "chown": "#!/bin/sh\n", "chgrp": "#!/bin/sh\n", "id": "#!/bin/sh\nexit 1\n"}
        for name, text in stubs.items():
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        script = (rendered / "server.sh").read_text()
        for prefix in ("/usr/local/", "/etc/", "/var/lib/", "/run/"):
            script = script.replace(prefix, f"{root}{prefix}")
        script = script.replace("#!/usr/bin/python3\n", "#!/usr/bin/env python3\n", 1)
        script = re.sub(r"""(wait_for "K3s's agent token in the secure format") 300""", r"\1 3", script)
        (tmp / "server.sh").write_text(script)
        events = tmp / "events"
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "EVENTS": str(events), "STATE": str(state), "ROOT": str(root),
               "FAKE_INSTALL": FAKE_INSTALL, "MODE": mode}
        p = subprocess.run(["bash", str(tmp / "server.sh")], env=env, capture_output=True, text=True, timeout=120)
        published = (state / "published").read_text().strip() if (state / "published").exists() else None
        files = {rel: (root / rel) for rel in ("etc/rancher/k3s/config.yaml", "etc/rancher/k3s/agent-token", "etc/rancher/k3s/token",
                                               "var/lib/rancher/k3s/server/tls/server-ca.crt")}
        snapshot = {rel: (f.read_text(), oct(f.stat().st_mode & 0o777)) if f.exists() else None for rel, f in files.items()}
        return p.returncode, events.read_text().splitlines() if events.exists() else [], published, snapshot, p.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    rendered = Path(sys.argv[1])
    rc, ev, published, files, err = run(rendered, "good")
    check("the bootstrap succeeds", rc == 0, f"exit {rc}: {err[-1500:]}")
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
    idx = lambda pat: next((i for i, e in enumerate(ev) if re.search(pat, e)), -1)  # noqa: E731
    sync, install, put = idx(r"^sync --release-param"), idx(r"^install.sh server"), idx(r"^secret-put")
    check("the release is synced before K3s starts, and the token published after", 0 <= sync < install < put, str(ev))
    check("the controller and sync timer are enabled at the end",
          idx(r"^systemctl enable --now smartscale-controller.service") > put and idx(r"^systemctl enable --now smartscale-sync.timer") > put)

    for mode, why in (("short", "a short token (no CA hash: no CA pinning)"), ("server", "the server token itself"),
                      ("wronghash", "a token with another CA's hash")):
        rc, ev, published, _, err = run(rendered, mode)
        check(f"it refuses to publish {why}, and the bootstrap fails", rc != 0 and published is None
              and not any(e.startswith("secret-put") for e in ev)
              and "waiting for K3s's agent token in the secure format" in err, f"rc {rc}, published {published}: {err[-300:]}")

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
