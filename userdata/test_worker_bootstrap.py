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

Warm pool (worker-warm-pool.sh, and worker.sh for an instance launched into a pool anyway): the
boot into the pool (IMDS target-lifecycle-state Warmed:Stopped) downloads and installs everything,
enables smartscale-join.service and leaves k3s-agent unenabled, never waits for the token, never
starts k3s or the drain unit, and runs `smartscale-agent join` (which answers the hook); the next
boot (the start from the pool: cloud-init does not run the user data again, the unit runs the
installed join script) downloads nothing, heartbeats first, waits for the token and joins; a
Running pool's instance waits in the unit until the target turns InService; an ordinary reboot
(no launch action waits) only starts k3s-agent; the user data run a second time does nothing.
Standard library only. Last line: "N passed, N failed".
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
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
  # The test may change it while a script runs (a Running pool's instance put in service).
  */meta-data/autoscaling/target-lifecycle-state) cat "$STATE/target" ;;
  *) exit 22 ;;
esac
'''
FAKE_AGENT = '#!/bin/sh\necho "$(date +%s.%N | cut -c1-14) agent $*" >> "$EVENTS"\nsleep "$JOIN_SECONDS"\nexit "$JOIN_RC"\n'
FAKE_INSTALL = ('#!/bin/sh\necho "$(date +%s.%N | cut -c1-14) install.sh $* skip_download=$INSTALL_K3S_SKIP_DOWNLOAD '
                'skip_start=$INSTALL_K3S_SKIP_START skip_enable=$INSTALL_K3S_SKIP_ENABLE" >> "$EVENTS"\n')


def prepare(script: str, root: Path) -> str:
    """Moves every absolute path the script writes under `root`; the helper runs via PATH's python3."""
    for prefix in ("/usr/local/", "/etc/", "/var/lib/"):
        script = script.replace(prefix, f"{root}{prefix}")
    script = script.replace("#!/usr/bin/python3\n", "#!/usr/bin/env python3\n", 1)
    script = re.sub(r"WARM_POLL_SECONDS=\d+", "WARM_POLL_SECONDS=1", script)
    return re.sub(r"HEARTBEAT_INTERVAL='\d+'", "HEARTBEAT_INTERVAL='1'", script)


Events = list[tuple[float, str]]


class Instance:
    """One instance's disk (root), kept across boots, and the stand-ins its scripts call."""

    def __init__(self, rendered: Path, script: str = "worker.sh"):
        self.tmp = Path(tempfile.mkdtemp(prefix="smartscale-worker-test-"))
        self.root, self.bin, self.state = self.tmp / "root", self.tmp / "bin", self.tmp / "state"
        for d in (self.root, self.bin, self.state):
            d.mkdir()
        for d in ("usr/local/bin", "etc/systemd/system"):  # as on the image
            (self.root / d).mkdir(parents=True)
        (self.bin / "python3").write_text(STUB_HELPER.replace("@PYTHON@", sys.executable))
        (self.bin / "curl").write_text(FAKE_CURL)
        (self.bin / "systemctl").write_text(LOGGING_SH.format(what="systemctl"))
        for f in self.bin.iterdir():
            f.chmod(0o755)
        self.user_data = self.tmp / "user-data.sh"
        self.user_data.write_text(prepare((rendered / script).read_text(), self.root))
        self.boots = 0

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def boot(self, args: list[str] | None = None, target: str = "InService", answered: bool = False,
             change_target: tuple[float, str] | None = None, **env) -> tuple[int, Events, str]:
        """Runs the user data (args None) or another script of the instance, with fresh events."""
        self.boots += 1
        events = self.tmp / f"events.{self.boots}"
        (self.state / "target").write_text(target + "\n")
        answered_file = self.state / "answered"
        if answered:
            answered_file.touch()
        else:
            answered_file.unlink(missing_ok=True)
        full_env = {
            "PATH": f"{self.bin}:/usr/bin:/bin", "EVENTS": str(events), "STATE": str(self.state),
            "FAKE_AGENT": FAKE_AGENT, "FAKE_INSTALL": FAKE_INSTALL, "DOWNLOAD_SECONDS": "1.2",
            "TOKEN_WAIT_SECONDS": "2.5", "JOIN_SECONDS": "0.5", "JOIN_RC": "0", **env,
        }
        cmd = ["bash", str(self.user_data)] if args is None else ["bash", *args]
        p = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if change_target:
            time.sleep(change_target[0])
            (self.state / "target").write_text(change_target[1] + "\n")
        _, err = p.communicate(timeout=120)
        lines = events.read_text().splitlines() if events.exists() else []
        parsed = [(float(line.split(" ", 1)[0]), line.split(" ", 1)[1]) for line in lines]
        return p.returncode, parsed, err

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def run(rendered: Path, **env) -> tuple[int, Events, str]:
    inst = Instance(rendered)
    try:
        return inst.boot(**env)
    finally:
        inst.close()


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
    check("without a warm pool: k3s-agent enabled by its installer, smartscale-join.service not enabled",
          index(ev, r"skip_enable=$") >= 0 and index(ev, r"^systemctl enable smartscale-join") < 0, str(names))

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

    warm_pool(rendered)

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


JOIN = "/usr/local/lib/smartscale/join"


def warm_pool(rendered: Path) -> None:
    for script in ("worker-warm-pool.sh", "worker.sh"):
        inst = Instance(rendered, script)
        try:
            # ---- the first boot, into the pool
            rc, ev, err = inst.boot(target="Warmed:Stopped")
            names = [e for _, e in ev]
            w = f"[{script}] warmed boot:"
            check(f"{w} succeeds", rc == 0, err[-800:])
            gets = [e for e in names if e.startswith("s3-get ")]
            check(f"{w} downloads the agent, k3s and install.sh (the slow work happens now)", len(gets) == 3, str(gets))
            check(f"{w} installs k3s neither started nor enabled (it cannot register a Node at the next boot)",
                  index(ev, r"^install.sh agent skip_download=true skip_start=true skip_enable=true$") >= 0, str(names))
            join = index(ev, r"^agent --config \S+/etc/smartscale/agent.yaml join$")
            check(f"{w} runs `smartscale-agent join` (it completes the hook with CONTINUE), once", join >= 0
                  and sum(1 for e in names if e.startswith("agent ")) == 1, str(names))
            check(f"{w} never waits for the agent token", index(ev, r"^secret-wait") < 0, str(names))
            check(f"{w} never starts k3s-agent or the drain unit",
                  not any(re.match(r"systemctl (start|enable).*(k3s-agent|smartscale-agent)", e) for e in names), str(names))
            enable = index(ev, r"^systemctl enable smartscale-join.service$")
            check(f"{w} enables (and starts, for a Running pool) smartscale-join.service before the hook is answered",
                  0 <= enable < join and 0 <= index(ev, r"^systemctl start --no-block smartscale-join.service$") < join, str(names))
            check(f"{w} no ABANDON", not any("abandon" in e for e in names), str(names))
            unit = inst.path("/etc/systemd/system/smartscale-join.service").read_text()
            check(f"{w} the unit runs the installed join script at boot",
                  f"ExecStart={inst.path(JOIN)}\n" in unit and "WantedBy=multi-user.target" in unit and inst.path(JOIN).exists(), unit)

            # ---- cloud-init runs the user data again (the stop came before it recorded the run)
            rc, ev, err = inst.boot(target="InService")
            names = [e for _, e in ev]
            check(f"[{script}] user data run again: does nothing (no download, no join)",
                  rc == 0 and not any(e.startswith(("s3-get", "agent ", "lifecycle")) for e in names), str(names) + err[-400:])

            # ---- the start from the pool: smartscale-join.service runs the join script
            rc, ev, err = inst.boot(args=[str(inst.path(JOIN))], target="InService")
            names = [e for _, e in ev]
            r = f"[{script}] start from the pool:"
            check(f"{r} succeeds", rc == 0, err[-800:])
            check(f"{r} downloads nothing and installs nothing",
                  not any(e.startswith(("s3-get", "install.sh")) for e in names), str(names))
            first_hb = index(ev, r"^lifecycle heartbeat")
            wait = index(ev, r"^secret-wait .*k3s-agent-token")
            run_unit = index(ev, r"^systemctl start --no-block smartscale-agent.service$")
            join = index(ev, r"^agent --config \S+/etc/smartscale/agent.yaml join$")
            check(f"{r} heartbeats the new launch action first, waits for the token, starts the run unit, then joins",
                  0 <= first_hb < wait < run_unit < join, str(names))
            beats = [t for t, e in ev[: join + 1] if e == "lifecycle heartbeat"]
            gaps = [b - a for a, b in zip(beats, beats[1:])] + [ev[join][0] - beats[-1]] if beats and join >= 0 else [99]
            check(f"{r} heartbeats through the token wait", len(beats) >= 3 and max(gaps) < 1.8, f"{len(beats)}, {max(gaps):.2f}s")
            check(f"{r} no ABANDON", not any("abandon" in e for e in names), str(names))

            # ---- a failed join at that start: the agent answers the hook, no ABANDON from the script
            rc, ev, err = inst.boot(args=[str(inst.path(JOIN))], target="InService", JOIN_RC="1")
            names = [e for _, e in ev]
            check(f"[{script}] a failed join from the pool fails the unit without a second ABANDON",
                  rc != 0 and index(ev, r"^agent ") >= 0 and not any("abandon" in e for e in names), str(names))

            # ---- an ordinary reboot later: no launch action waits
            inst.path("/etc/rancher/k3s/config.yaml").write_text("token: x\n")  # written by the agent's join
            rc, ev, err = inst.boot(args=[str(inst.path(JOIN))], target="InService", answered=True)
            names = [e for _, e in ev]
            check(f"[{script}] ordinary reboot: no token wait, no join, k3s-agent started",
                  rc == 0 and index(ev, r"^systemctl start --no-block k3s-agent.service$") >= 0
                  and not any(e.startswith(("secret-wait", "agent ", "s3-get")) for e in names), str(names) + err[-400:])
        finally:
            inst.close()

    # ---- a Running pool: the instance is not rebooted when the group pulls it in
    inst = Instance(rendered, "worker-warm-pool.sh")
    try:
        inst.boot(target="Warmed:Running")
        rc, ev, err = inst.boot(args=[str(inst.path(JOIN))], target="Warmed:Running", change_target=(2.5, "InService"))
        names = [e for _, e in ev]
        first_hb, join = index(ev, r"^lifecycle heartbeat"), index(ev, r"^agent .* join$")
        check("Running pool: the unit waits while warmed (no heartbeat, no token, no join), then joins once InService",
              rc == 0 and 0 <= first_hb < join and ev[first_hb][0] - ev[0][0] >= 2.0
              and index(ev, r"^secret-wait") > first_hb, str(names) + err[-400:])
    finally:
        inst.close()

    # ---- straight into service in a warm-pool group: joins now, and at later boots via the unit
    inst = Instance(rendered, "worker-warm-pool.sh")
    try:
        rc, ev, err = inst.boot(target="InService")
        names = [e for _, e in ev]
        check("warm-pool group, launched straight into service: joins now, k3s-agent not enabled, the unit enabled",
              rc == 0 and index(ev, r"^agent .* join$") > index(ev, r"^secret-wait") >= 0
              and index(ev, r"skip_enable=true$") >= 0 and index(ev, r"^systemctl enable smartscale-join.service$") >= 0,
              str(names) + err[-400:])
    finally:
        inst.close()


if __name__ == "__main__":
    sys.exit(main())
