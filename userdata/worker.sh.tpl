#!/bin/bash
# SmartScale worker bootstrap. Rendered by pulumi/src/userdata.ts from userdata/worker.sh.tpl.
# It holds no secret: smartscale-agent reads the K3s join token from Secrets Manager itself and
# writes it into /etc/rancher/k3s/config.yaml with mode 0600.
#
# Steps: verified agent binary from S3 -> k3s (installed, not started) -> agent config ->
# `smartscale-agent run` as a unit, started before the join -> `smartscale-agent join` (completes
# the launch lifecycle hook once the node is Ready).
set -euo pipefail
umask 022

REGION='@@REGION@@'
CLUSTER_ID='@@CLUSTER_ID@@'
ASG_NAME='@@ASG_NAME@@'
LAUNCH_HOOK_NAME='@@LAUNCH_HOOK_NAME@@'
ARTIFACT_BUCKET='@@ARTIFACT_BUCKET@@'
AGENT_KEY='@@AGENT_KEY@@'
AGENT_VERSION_ID='@@AGENT_VERSION_ID@@'
AGENT_SHA256='@@AGENT_SHA256@@'
K3S_VERSION='@@K3S_VERSION@@'
AGENT_METRICS_PORT='@@AGENT_METRICS_PORT@@'

@@BLOCK:COMMON_FUNCTIONS@@

INSTANCE_ID=""

# If bootstrap fails before the agent has answered the launch hook, abandon it now so the ASG
# replaces this instance at once instead of after the heartbeat timeout (whose default result is
# ABANDON as well). When the agent has already answered, AWS rejects this call; that is fine.
on_exit() {
  local rc=$?
  trap - EXIT
  if ((rc != 0)); then
    log "bootstrap failed (exit ${rc})"
    if [[ -n "$INSTANCE_ID" ]] && command -v aws >/dev/null 2>&1; then
      aws autoscaling complete-lifecycle-action --region "$REGION" \
        --auto-scaling-group-name "$ASG_NAME" --lifecycle-hook-name "$LAUNCH_HOOK_NAME" \
        --instance-id "$INSTANCE_ID" --lifecycle-action-result ABANDON ||
        log "could not abandon the launch lifecycle action; it times out to ABANDON"
    fi
  fi
  exit "$rc"
}
trap on_exit EXIT

log "starting worker bootstrap (cluster ${CLUSTER_ID})"
INSTANCE_ID=$(retry 10 2 imds_get instance-id)
PRIVATE_IP=$(retry 10 2 imds_get local-ipv4)
ensure_aws_cli

install -d -m 0755 /etc/smartscale /etc/rancher/k3s
install -d -m 0700 /var/lib/smartscale-agent
fetch_verified "$ARTIFACT_BUCKET" "$AGENT_KEY" "$AGENT_VERSION_ID" "$AGENT_SHA256" \
  /usr/local/bin/smartscale-agent 0755

# k3s binary and an enabled k3s-agent unit, not started: the agent writes the k3s config (with
# the token) and starts k3s-agent itself (k3s_start_command).
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

# The drain daemon starts before the join: from the moment k3s registers the Node, pods can land on
# it, and whatever terminates the instance from then on (a scale-in right after the launch hook, a
# spot interruption during the join, a join that fails after the Node joined) must find the daemon
# there to drain them. Until k3s has written the kubelet kubeconfig, `run` exits with an error and
# systemd starts it again every 5 s (Restart=on-failure, no start limit): a few error lines at boot.
systemctl enable smartscale-agent.service
systemctl start --no-block smartscale-agent.service

log "joining the cluster"
env AWS_REGION="$REGION" /usr/local/bin/smartscale-agent --config /etc/smartscale/agent.yaml join

# Already running; this makes sure of it (a no-op unless someone stopped it meanwhile).
systemctl enable --now smartscale-agent.service
log "worker bootstrap complete"
