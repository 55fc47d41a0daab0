#!/bin/bash
# SmartScale worker bootstrap. Rendered by pulumi/src/userdata.ts from userdata/worker.sh.tpl.
# It holds no secret and downloads nothing from the internet: the agent, the k3s binary and k3s's
# install script are pinned object versions of the stack's bucket (SHA-256 checked), reached
# through the VPC's S3 endpoint; smartscale-agent reads the K3s agent token itself and writes it
# into /etc/rancher/k3s/config.yaml with mode 0600.
#
# The launch lifecycle action's clock runs from launch. It is heartbeated first thing, before any
# download, then every HEARTBEAT_INTERVAL in the background until `smartscale-agent join` (which
# heartbeats it too) has answered it. A failure before the join abandons it at once.
#
# Steps: heartbeat -> agent, k3s (installed, not started) -> agent config, the join script and its
# unit -> then /usr/local/lib/smartscale/join (userdata/worker-join.sh.tpl): wait for the agent
# token -> `smartscale-agent run` as a unit, started before the join -> `smartscale-agent join`.
#
# Warm pool: an instance launched into the group's warm pool (IMDS target-lifecycle-state
# Warmed:Stopped or Warmed:Running) does all of the downloading and installing now, then only runs
# `smartscale-agent join`, which sees the Warmed: target, completes the launch action with CONTINUE
# and exits 0 without the token or k3s: never a Node while warmed. The group then stops it (Stopped
# pool). cloud-init runs this user data at the first boot only, so the join when the group starts
# the instance from the pool (target InService, a new launch action) is smartscale-join.service's,
# enabled here; k3s-agent is not enabled in a warm-pool group (that unit starts it), so it cannot
# start and register a Node at that boot before the agent has written its config.
set -euo pipefail
umask 022

REGION='@@REGION@@'
CLUSTER_ID='@@CLUSTER_ID@@'
ASG_NAME='@@ASG_NAME@@'
LAUNCH_HOOK_NAME='@@LAUNCH_HOOK_NAME@@'
HEARTBEAT_INTERVAL='@@HEARTBEAT_INTERVAL@@'
ARTIFACT_BUCKET='@@ARTIFACT_BUCKET@@'
AGENT_KEY='@@AGENT_KEY@@'
AGENT_VERSION_ID='@@AGENT_VERSION_ID@@'
AGENT_SHA256='@@AGENT_SHA256@@'
K3S_VERSION='@@K3S_VERSION@@'
K3S_BINARY_KEY='@@K3S_BINARY_KEY@@'
K3S_BINARY_VERSION_ID='@@K3S_BINARY_VERSION_ID@@'
K3S_BINARY_SHA256='@@K3S_BINARY_SHA256@@'
K3S_INSTALL_KEY='@@K3S_INSTALL_KEY@@'
K3S_INSTALL_VERSION_ID='@@K3S_INSTALL_VERSION_ID@@'
K3S_INSTALL_SHA256='@@K3S_INSTALL_SHA256@@'
AGENT_METRICS_PORT='@@AGENT_METRICS_PORT@@'
# 'true' in a group with a warm pool (smartscale:warmPool): see the header.
WARM_POOL='@@WARM_POOL@@'
JOIN_SCRIPT=/usr/local/lib/smartscale/join
PREPARED=/var/lib/smartscale/prepared

@@BLOCK:COMMON_FUNCTIONS@@
@@BLOCK:ARTIFACT_FUNCTIONS@@

# Should cloud-init run this again (a boot into the pool stopped before cloud-init recorded it): the
# first run installed everything, and smartscale-join.service does the rest. Nothing to download.
if [[ -e $PREPARED ]]; then
  log "already prepared at an earlier boot; smartscale-join.service joins"
  exit 0
fi

install -d -m 0755 /usr/local/lib/smartscale
cat >"$AWS_HELPER" <<'SMARTSCALE_EOF'
@@BLOCK:AWS_HELPER@@
SMARTSCALE_EOF
chmod 0755 "$AWS_HELPER"

INSTANCE_ID=""
HEARTBEATS=""
JOINING=""

launch_action() {
  saws lifecycle --asg "$ASG_NAME" --hook "$LAUNCH_HOOK_NAME" --instance "$INSTANCE_ID" "$1"
}

# Heartbeats until killed, or until no launch action waits any more (exit status 3: answered).
heartbeat_loop() {
  local rc
  while sleep "$HEARTBEAT_INTERVAL"; do
    rc=0
    launch_action heartbeat || rc=$?
    if ((rc == 3)); then
      return 0
    fi
  done
}

# Before the join, the agent cannot answer the hook: abandon it so that the ASG replaces this
# instance at once instead of after the heartbeat timeout (whose default result is ABANDON too).
# Once `join` runs, it answers the hook itself, ABANDON included.
on_exit() {
  local rc=$?
  trap - EXIT
  if [[ -n "$HEARTBEATS" ]]; then
    kill "$HEARTBEATS" 2>/dev/null || true
  fi
  if ((rc != 0)); then
    log "bootstrap failed (exit ${rc})"
    if [[ -n "$INSTANCE_ID" && -z "$JOINING" ]]; then
      saws --timeout 60 lifecycle --asg "$ASG_NAME" --hook "$LAUNCH_HOOK_NAME" --instance "$INSTANCE_ID" abandon ||
        log "could not abandon the launch lifecycle action; it times out to ABANDON"
    fi
  fi
  exit "$rc"
}
trap on_exit EXIT

log "starting worker bootstrap (cluster ${CLUSTER_ID})"
INSTANCE_ID=$(retry 10 2 imds_get instance-id)
PRIVATE_IP=$(retry 10 2 imds_get local-ipv4)

# 1. The launch action: heartbeat now, before any download, and from now on in the background.
hb=0
launch_action heartbeat || hb=$?
if ((hb == 0)); then
  heartbeat_loop &
  HEARTBEATS=$!
elif ((hb == 3)); then
  log "no launch lifecycle action waits for ${INSTANCE_ID}; nothing to heartbeat"
else
  exit "$hb"
fi

# Warmed:Stopped / Warmed:Running: launched into the warm pool; InService: straight into service.
TARGET_STATE=$(retry 10 2 imds_get autoscaling/target-lifecycle-state)
WARMED=""
if [[ $TARGET_STATE == Warmed:* ]]; then
  WARMED=1
fi

# 2. The agent, the k3s binary and k3s's install script, from the stack's bucket. k3s-agent is
# installed but not started: the agent writes its config (with the token) and starts it. In a
# warm-pool group it is not enabled either: smartscale-join.service starts it at later boots.
log "target lifecycle state ${TARGET_STATE}"
install -d -m 0755 /etc/smartscale /etc/rancher/k3s
install -d -m 0700 /var/lib/smartscale-agent
fetch_verified "$AGENT_KEY" "$AGENT_VERSION_ID" "$AGENT_SHA256" /usr/local/bin/smartscale-agent 0755
if [[ $WARM_POOL == true || -n $WARMED ]]; then
  install_k3s agent INSTALL_K3S_SKIP_START=true INSTALL_K3S_SKIP_ENABLE=true
else
  install_k3s agent INSTALL_K3S_SKIP_START=true
fi
cat >/etc/smartscale/agent.yaml <<'SMARTSCALE_EOF'
@@BLOCK:AGENT_CONFIG@@
SMARTSCALE_EOF
chmod 0600 /etc/smartscale/agent.yaml

# Environment overrides (SMARTSCALE_AGENT_<PATH>): the metrics address is only known at boot.
# Prometheus on the server scrapes it; the worker security group opens the port to the server only.
cat >/etc/smartscale/agent.env <<SMARTSCALE_EOF
AWS_REGION=${REGION}
SMARTSCALE_AGENT_METRICS_LISTEN=${PRIVATE_IP}:${AGENT_METRICS_PORT}
SMARTSCALE_EOF
chmod 0600 /etc/smartscale/agent.env

cat >/etc/systemd/system/smartscale-agent.service <<'SMARTSCALE_EOF'
@@BLOCK:AGENT_UNIT@@
SMARTSCALE_EOF
systemctl daemon-reload

# 3. The join steps, as a script of their own (they run again from the unit at a start from the
# warm pool) and the unit that runs them at boot in a warm-pool group.
cat >"$JOIN_SCRIPT" <<'SMARTSCALE_EOF'
@@BLOCK:JOIN_SCRIPT@@
SMARTSCALE_EOF
chmod 0755 "$JOIN_SCRIPT"
cat >/etc/systemd/system/smartscale-join.service <<'SMARTSCALE_EOF'
@@BLOCK:JOIN_UNIT@@
SMARTSCALE_EOF
systemctl daemon-reload
if [[ $WARM_POOL == true || -n $WARMED ]]; then
  systemctl enable smartscale-join.service
fi
install -d -m 0755 /var/lib/smartscale
touch "$PREPARED"

if [[ -n $WARMED ]]; then
  # 4w. Into the warm pool: everything is installed; no token, no k3s, no drain unit. `join` sees
  # the Warmed: target and completes the launch action with CONTINUE, after which the group may
  # stop the instance at any moment: everything the next boot needs is in place before it, on disk.
  # A Running pool's instance is not rebooted when the group pulls it in: the unit, started now,
  # waits for the InService target and joins then.
  systemctl start --no-block smartscale-join.service
  sync
  log "launched into the warm pool (${TARGET_STATE}): completing the launch action without joining"
  JOINING=1
  env AWS_REGION="$REGION" /usr/local/bin/smartscale-agent --config /etc/smartscale/agent.yaml join
  log "worker bootstrap complete: warmed; the join follows when the group puts this instance in service"
  exit 0
fi

# 4. Straight into service: the join script from here, with its own heartbeats and ABANDON.
kill "$HEARTBEATS" 2>/dev/null || true
HEARTBEATS=""
trap - EXIT
log "prepared; joining"
exec "$JOIN_SCRIPT" --bootstrap
