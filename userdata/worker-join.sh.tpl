#!/bin/bash
# SmartScale worker join. Rendered by pulumi/src/userdata.ts from userdata/worker-join.sh.tpl and
# installed by the worker bootstrap (worker.sh.tpl) as /usr/local/lib/smartscale/join. The steps
# that need the cluster, after everything was downloaded and installed: wait for the K3s agent
# token, start the agent's `run` unit, `smartscale-agent join` (it writes k3s's config with the
# token, starts k3s-agent, waits for the Node to be Ready and completes the launch lifecycle action
# with CONTINUE). It downloads nothing.
#
#   join --bootstrap  run by the bootstrap at the first boot of an instance launched straight into
#                     service: a launch action waits for it.
#   join              run by smartscale-join.service at every boot of a worker of a warm-pool group.
#                     While the target lifecycle state is Warmed:* (the first boot of an instance
#                     launched into a Running pool, which stays up until the group pulls it in), it
#                     waits. Then, if a launch action waits (started from the pool, or returned to it
#                     on scale-in and started again), it joins; otherwise (an ordinary reboot) it
#                     starts k3s-agent, which is never enabled in a warm-pool group so that no
#                     instance becomes a Node before its launch action's join.
#
# The launch action is heartbeated first and every HEARTBEAT_INTERVAL until the join answers it
# (the agent heartbeats it too); a failure before the join abandons it at once.
set -euo pipefail
umask 022

REGION='@@REGION@@'
ASG_NAME='@@ASG_NAME@@'
LAUNCH_HOOK_NAME='@@LAUNCH_HOOK_NAME@@'
HEARTBEAT_INTERVAL='@@HEARTBEAT_INTERVAL@@'
AGENT_TOKEN_SECRET_ID='@@AGENT_TOKEN_SECRET_ID@@'
AGENT_TOKEN_WAIT_SECONDS='@@AGENT_TOKEN_WAIT_SECONDS@@'
WARM_POLL_SECONDS=5

@@BLOCK:COMMON_FUNCTIONS@@

MODE=boot
if [[ ${1:-} == --bootstrap ]]; then
  MODE=bootstrap
fi
INSTANCE_ID=""
HEARTBEATS=""
JOINING=""
# Whether a failure abandons the launch action: from the start when the bootstrap runs this, at
# boot only once a launch action is known to wait.
ABANDON_ON_FAILURE=""

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
    log "join failed (exit ${rc})"
    if [[ -n "$INSTANCE_ID" && -n "$ABANDON_ON_FAILURE" && -z "$JOINING" ]]; then
      saws --timeout 60 lifecycle --asg "$ASG_NAME" --hook "$LAUNCH_HOOK_NAME" --instance "$INSTANCE_ID" abandon ||
        log "could not abandon the launch lifecycle action; it times out to ABANDON"
    fi
  fi
  exit "$rc"
}
trap on_exit EXIT

if [[ $MODE == bootstrap ]]; then
  ABANDON_ON_FAILURE=1
fi
INSTANCE_ID=$(retry 10 2 imds_get instance-id)

# In the warm pool (a Running pool's instance stays up there): not a Node until the group pulls
# this instance in, when the target state turns InService and a launch action waits again.
if [[ $MODE == boot ]]; then
  state=$(retry 10 2 imds_get autoscaling/target-lifecycle-state)
  if [[ $state == Warmed:* ]]; then
    log "in the warm pool (target ${state}); waiting to be put in service"
    while [[ $state == Warmed:* ]]; do
      sleep "$WARM_POLL_SECONDS"
      state=$(retry 10 2 imds_get autoscaling/target-lifecycle-state)
    done
    log "target lifecycle state ${state}"
  fi
fi

hb=0
launch_action heartbeat || hb=$?
if ((hb == 0)); then
  ABANDON_ON_FAILURE=1
  heartbeat_loop &
  HEARTBEATS=$!
elif ((hb == 3)) && [[ $MODE == boot ]]; then
  # An ordinary reboot of a worker that joined at an earlier boot.
  if [[ -e /etc/rancher/k3s/config.yaml ]]; then
    log "no launch lifecycle action waits for ${INSTANCE_ID}: a reboot; starting k3s-agent"
    systemctl start --no-block k3s-agent.service
  else
    log "no launch lifecycle action waits for ${INSTANCE_ID}, and this worker never joined: nothing to do"
  fi
  exit 0
elif ((hb == 3)); then
  log "no launch lifecycle action waits for ${INSTANCE_ID}; nothing to heartbeat"
else
  exit "$hb"
fi

# The server publishes the agent token once K3s runs (a new cluster's first workers boot while
# the server still installs): wait for it rather than fail, heartbeating meanwhile.
log "waiting for the K3s agent token"
saws --timeout "$AGENT_TOKEN_WAIT_SECONDS" secret-wait --id "$AGENT_TOKEN_SECRET_ID"

# The drain daemon starts before the join: from the moment k3s registers the Node, pods can land
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
log "joined"
