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
# Steps: heartbeat -> agent, k3s (installed, not started) -> agent config -> wait for the agent
# token -> `smartscale-agent run` as a unit, started before the join -> `smartscale-agent join`.
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
AGENT_TOKEN_SECRET_ID='@@AGENT_TOKEN_SECRET_ID@@'
AGENT_TOKEN_WAIT_SECONDS='@@AGENT_TOKEN_WAIT_SECONDS@@'
AGENT_METRICS_PORT='@@AGENT_METRICS_PORT@@'

@@BLOCK:COMMON_FUNCTIONS@@

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

# 2. The agent, the k3s binary and k3s's install script, from the stack's bucket. k3s-agent is
# installed and enabled but not started: the agent writes its config (with the token) and starts it.
install -d -m 0755 /etc/smartscale /etc/rancher/k3s
install -d -m 0700 /var/lib/smartscale-agent
fetch_verified "$AGENT_KEY" "$AGENT_VERSION_ID" "$AGENT_SHA256" /usr/local/bin/smartscale-agent 0755
install_k3s agent INSTALL_K3S_SKIP_START=true

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

# 3. The server publishes the agent token once K3s runs (a new cluster's first workers boot while
# the server still installs): wait for it rather than fail, heartbeating meanwhile.
log "waiting for the K3s agent token"
saws --timeout "$AGENT_TOKEN_WAIT_SECONDS" secret-wait --id "$AGENT_TOKEN_SECRET_ID"

# 4. The drain daemon starts before the join: from the moment k3s registers the Node, pods can land
# on it, and whatever terminates the instance from then on must find the daemon there to drain
# them. Until k3s has written the kubelet kubeconfig, `run` exits with an error and systemd starts
# it again every 5 s (Restart=on-failure, no start limit): a few error lines at boot.
systemctl enable smartscale-agent.service
systemctl start --no-block smartscale-agent.service

log "joining the cluster"
JOINING=1
env AWS_REGION="$REGION" /usr/local/bin/smartscale-agent --config /etc/smartscale/agent.yaml join

# Already running; this makes sure of it (a no-op unless someone stopped it meanwhile).
systemctl enable --now smartscale-agent.service
log "worker bootstrap complete"
