#!/usr/bin/env python3
"""Runs the rendered worker UserData (pulumi/scripts/render-samples.ts output) with every outside
effect stubbed, and checks what it does and in which order:

    python3 userdata/test_worker_bootstrap.py RENDERED_DIR

The script runs for real in bash; only its paths are moved under a temporary root, and the
commands it calls are stand-ins that log each call with a timestamp: `python3` (so the embedded
smartscale-aws helper is replaced by a stub answering lifecycle / s3-get / secret-wait), `curl`
(IMDS only), `systemctl`, and the downloaded agent and k3s install script. The helper itself is
tested against AWS in userdata/test_smartscale_aws.py.

Checks: the launch hook is heartbeated before any download and then at least every
HEARTBEAT_INTERVAL (1 s here) while slow downloads and the wait for the agent token run, until
the join; nothing but IMDS is fetched with curl and every file comes from the stack's bucket with
its SHA-256; the agent's `run` unit is started before `join`; a failed download abandons the launch
action and stops the heartbeats; a failed join is left to the agent (no second ABANDON).
Standard library only. Last line: "N passed, N failed".
"""
from __future__ import annotations

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
# Stands in for `python3 /usr/local/lib/smartscale/aws ...` (the smartscale-aws helper).
import os, sys, time
log = os.environ["EVENTS"]
args = sys.argv[2:]  # argv[1] is the helper's path
while args and args[0].startswith("--"):  # --region R, --timeout N
    args = args[2:]
cmd, rest = args[0], args[1:]
opt = {rest[i]: rest[i + 1] for i in range(0, len(rest) - 1) if rest[i].startswith("--")}
def event(text):
    with open(log, "a") as f:
        f.write(f"{time.time():.3f} {text}\n")
if cmd == "lifecycle":
    what = rest[-1]
    answered = os.path.join(os.environ["STATE"], "answered")
    event(f"lifecycle {what}")
    if what == "heartbeat" and os.path.exists(answered):
        sys.exit(3)
    if what != "heartbeat":
        open(answered, "w").close()
    sys.exit(0)
if cmd == "s3-get":
    key, dest = opt["--key"], opt["--dest"]
    event(f"s3-get {key} {opt['--version-id']} {opt['--sha256']} -> {dest}")
    time.sleep(float(os.environ["DOWNLOAD_SECONDS"]))
    if key in os.environ.get("FAIL_KEYS", "").split(","):
        event(f"s3-get failed {key}")
        sys.exit(1)
    body = {"bin/smartscale-agent": os.environ["FAKE_AGENT"], "install.sh": os.environ["FAKE_INSTALL"]}
    text = next((v for k, v in body.items() if key.endswith(k)), "binary\n")
    with open(dest, "w") as f:
        f.write(text)
    os.chmod(dest, int(opt["--mode"], 8))
    sys.exit(0)
if cmd == "secret-wait":
    event(f"secret-wait {opt['--id']}")
    time.sleep(float(os.environ["TOKEN_WAIT_SECONDS"]))
    sys.exit(0)
event(f"unexpected helper call {args}")
sys.exit(1)
'''

LOGGING_SH = '#!/bin/sh\necho "$(date +%s.%N | cut -c1-14) {what} $*" >> "$EVENTS"\n'
FAKE_CURL = r'''#!/bin/sh
url=""
for a in "$@"; do url=$a; done
echo "$(date +%s.%N | cut -c1-14) curl $url" >> "$EVENTS"
case "$url" in
  http://169.254.169.254/latest/api/token) echo tok ;;
  */meta-data/instance-id) echo i-0abc123 ;;
  */meta-data/local-ipv4) echo 10.20.16.12 ;;
  *) exit 22 ;;
esac
'''
FAKE_AGENT = '#!/bin/sh\necho "$(date +%s.%N | cut -c1-14) agent $*" >> "$EVENTS"\nsleep "$JOIN_SECONDS"\nexit "$JOIN_RC"\n'
FAKE_INSTALL = ('#!/bin/sh\necho "$(date +%s.%N | cut -c1-14) install.sh $* skip_download=$INSTALL_K3S_SKIP_DOWNLOAD '
                'skip_start=$INSTALL_K3S_SKIP_START" >> "$EVENTS"\n')


def prepare(script: str, root: Path) -> str:
    """Moves every absolute path the script writes under `root`; the helper runs via PATH's python3."""
    for prefix in ("/usr/local/", "/etc/", "/var/lib/"):
        script = script.replace(prefix, f"{root}{prefix}")
    script = script.replace("#!/usr/bin/python3\n", "#!/usr/bin/env python3\n", 1)
    return re.sub(r"HEARTBEAT_INTERVAL='\d+'", "HEARTBEAT_INTERVAL='1'", script)


def run(rendered: Path, **env) -> tuple[int, list[tuple[float, str]], str]:
    tmp = Path(tempfile.mkdtemp(prefix="smartscale-worker-test-"))
    try:
        root, bin_dir, state = tmp / "root", tmp / "bin", tmp / "state"
        for d in (root, bin_dir, state):
            d.mkdir()
        for d in ("usr/local/bin", "etc/systemd/system"):  # as on the image
            (root / d).mkdir(parents=True)
        events = tmp / "events"
        (bin_dir / "python3").write_text(STUB_HELPER.replace("@PYTHON@", sys.executable))
        (bin_dir / "curl").write_text(FAKE_CURL)
        (bin_dir / "systemctl").write_text(LOGGING_SH.format(what="systemctl"))
        for f in bin_dir.iterdir():
            f.chmod(0o755)
        script = tmp / "worker.sh"
        script.write_text(prepare((rendered / "worker.sh").read_text(), root))
        full_env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin", "EVENTS": str(events), "STATE": str(state),
            "FAKE_AGENT": FAKE_AGENT, "FAKE_INSTALL": FAKE_INSTALL, "DOWNLOAD_SECONDS": "1.2",
            "TOKEN_WAIT_SECONDS": "2.5", "JOIN_SECONDS": "0.5", "JOIN_RC": "0", **env,
        }
        p = subprocess.run(["bash", str(script)], env=full_env, capture_output=True, text=True, timeout=120)
        lines = events.read_text().splitlines() if events.exists() else []
        parsed = [(float(line.split(" ", 1)[0]), line.split(" ", 1)[1]) for line in lines]
        return p.returncode, parsed, p.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def index(events, pattern: str) -> int:
    return next((i for i, (_, e) in enumerate(events) if re.search(pattern, e)), -1)


def main() -> int:
    rendered = Path(sys.argv[1])

    # ---- a boot that works
    rc, ev, err = run(rendered)
    names = [e for _, e in ev]
    check("the bootstrap succeeds", rc == 0, err[-800:])
    first_hb, first_dl = index(ev, r"^lifecycle heartbeat"), index(ev, r"^s3-get ")
    check("the launch action is heartbeated before the first download", 0 <= first_hb < first_dl, str(names[:6]))
    join = index(ev, r"^agent .* join$")
    beats = [t for t, e in ev[: join + 1] if e == "lifecycle heartbeat"]
    gaps = [b - a for a, b in zip(beats, beats[1:])] + [ev[join][0] - beats[-1]] if beats and join >= 0 else [99]
    check("heartbeats keep coming (every <= 1 s + slack) through slow downloads and the token wait, until the join",
          len(beats) >= 5 and max(gaps) < 1.8, f"{len(beats)} heartbeats, largest gap {max(gaps):.2f}s")
    curls = [e for e in names if e.startswith("curl ")]
    check("curl fetches only IMDS, nothing from the internet",
          curls and all(e.startswith("curl http://169.254.169.254/") for e in curls), str(curls))
    gets = [e for e in names if e.startswith("s3-get ")]
    check("the agent, k3s and install.sh all come from the stack's bucket as pinned versions with a SHA-256",
          len(gets) == 3 and all(re.match(r"s3-get \S+ \S+ [0-9a-f]{64} -> ", e) for e in gets)
          and any("bin/smartscale-agent" in e for e in gets) and any(e.startswith("s3-get k3s/") and "/k3s " in e for e in gets)
          and any("install.sh" in e for e in gets), str(gets))
    install = index(ev, r"^install.sh agent skip_download=true skip_start=true")
    check("k3s's install script runs from the bucket copy, told not to download and not to start",
          first_dl < install < join, str(names))
    wait, run_unit = index(ev, r"^secret-wait .*k3s-agent-token"), index(ev, r"^systemctl start --no-block smartscale-agent.service")
    check("the agent token is awaited, and the run unit started, before the join", 0 <= wait < join and 0 <= run_unit < join, str(names))
    check("no ABANDON on success", not any("abandon" in e for e in names))

    # ---- a download that fails: ABANDON at once, heartbeats stop
    rc, ev, err = run(rendered, FAIL_KEYS="k3s/v1.33.4+k3s1/k3s")
    names = [e for _, e in ev]
    ab = index(ev, r"^lifecycle abandon")
    check("a failed download fails the bootstrap and abandons the launch action", rc != 0 and ab > index(ev, r"^s3-get failed"), str(names))
    check("no join and no heartbeat after the ABANDON", index(ev, r"^agent ") < 0
          and not any(e == "lifecycle heartbeat" for e in names[ab + 1:]), str(names[ab:]))

    # ---- a join that fails: the agent answers the hook (ABANDON) itself
    rc, ev, err = run(rendered, JOIN_RC="1")
    names = [e for _, e in ev]
    check("a failed join fails the bootstrap without a second ABANDON from the script",
          rc != 0 and index(ev, r"^agent .* join$") >= 0 and not any("abandon" in e for e in names), str(names[-5:]))

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
