#!/bin/bash
# SmartScale K3s server bootstrap, first boot only. Rendered by pulumi/src/userdata.ts from
# userdata/server.sh.tpl. It holds no secret, downloads nothing from the internet (pinned object
# versions of the stack's bucket, SHA-256 checked, through the VPC's S3 endpoint), and carries
# nothing that a later `pulumi up` may change: the controller binary, its config and the K3s
# manifests come from SSM Parameter Store through smartscale-sync, which runs here now and then
# every minute (systemd timer), so an update reaches this server without replacing it.
#
# Steps: server token + a new agent token password -> k3s config -> controller user and units ->
# sync (manifests, controller, its config) -> k3s server -> agent token published -> Grafana admin
# Secret -> daemon mode: controller (API token, ServiceAccount kubeconfig) started; Lambda mode:
# the controller's identity published for the function, the daemon left disabled -> sync timer.
set -euo pipefail
umask 077

REGION='@@REGION@@'
CLUSTER_ID='@@CLUSTER_ID@@'
ARTIFACT_BUCKET='@@ARTIFACT_BUCKET@@'
K3S_VERSION='@@K3S_VERSION@@'
K3S_BINARY_KEY='@@K3S_BINARY_KEY@@'
K3S_BINARY_VERSION_ID='@@K3S_BINARY_VERSION_ID@@'
K3S_BINARY_SHA256='@@K3S_BINARY_SHA256@@'
K3S_INSTALL_KEY='@@K3S_INSTALL_KEY@@'
K3S_INSTALL_VERSION_ID='@@K3S_INSTALL_VERSION_ID@@'
K3S_INSTALL_SHA256='@@K3S_INSTALL_SHA256@@'
SERVER_TOKEN_SECRET_ID='@@SERVER_TOKEN_SECRET_ID@@'
AGENT_TOKEN_SECRET_ID='@@AGENT_TOKEN_SECRET_ID@@'
GRAFANA_SECRET_ID='@@GRAFANA_SECRET_ID@@'
RELEASE_PARAM='@@RELEASE_PARAM@@'
CONTROLLER_CONFIG_PARAM='@@CONTROLLER_CONFIG_PARAM@@'
# daemon: smartscale-controller.service runs the controller here; lambda: an AWS Lambda function
# does, with the identity this server publishes into CONTROLLER_IDENTITY_SECRET_ID (empty in daemon mode).
CONTROLLER_MODE='@@CONTROLLER_MODE@@'
CONTROLLER_IDENTITY_SECRET_ID='@@CONTROLLER_IDENTITY_SECRET_ID@@'

@@BLOCK:COMMON_FUNCTIONS@@
@@BLOCK:ARTIFACT_FUNCTIONS@@

install -d -m 0755 /usr/local/lib/smartscale
cat >"$AWS_HELPER" <<'SMARTSCALE_EOF'
@@BLOCK:AWS_HELPER@@
SMARTSCALE_EOF
chmod 0755 "$AWS_HELPER"

K3S_DIR=/etc/rancher/k3s
K3S_SERVER_DIR=/var/lib/rancher/k3s/server
ETC_DIR=/etc/smartscale

log "starting server bootstrap (cluster ${CLUSTER_ID})"
PRIVATE_IP=$(retry 10 2 imds_get local-ipv4)
PUBLIC_IP=$(imds_get public-ipv4 || true)

# 1. Tokens, both 0600 files that k3s reads. The server token (cluster admin) comes from Secrets
# Manager, readable by this role only. Workers get a separate agent token: its password is made
# here; K3s writes the full token (K10<CA hash>::node:<password>) once it runs (step 5).
install -d -m 0700 "$K3S_DIR"
saws secret-get --id "$SERVER_TOKEN_SECRET_ID" --dest "${K3S_DIR}/token"
if [[ ! -s "${K3S_DIR}/agent-token" ]]; then
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"${K3S_DIR}/agent-token"
fi
chmod 0600 "${K3S_DIR}/agent-token"
{
  echo "token-file: ${K3S_DIR}/token"
  echo "agent-token-file: ${K3S_DIR}/agent-token"
  echo 'write-kubeconfig-mode: "0600"'
  echo "node-ip: ${PRIVATE_IP}"
  echo "tls-san:"
  echo "  - ${PRIVATE_IP}"
  if [[ -n "$PUBLIC_IP" ]]; then
    echo "  - ${PUBLIC_IP}"
  fi
  # Workloads go to the autoscaled workers; only add-ons and monitoring tolerate this taint.
  echo "node-taint:"
  echo "  - CriticalAddonsOnly=true:NoExecute"
  echo "disable:"
  echo "  - traefik"
  echo "  - servicelb"
  echo "secrets-encryption: true"
} >"${K3S_DIR}/config.yaml"

# 2. The controller's own system user and config directory (smartscale-sync writes into it), its
# unit (started in step 7; smartscale-sync restarts it only once it runs) and smartscale-sync's.
if ! id smartscale >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin smartscale
fi
install -d -m 0750 -o root -g smartscale "$ETC_DIR"
cat >/etc/systemd/system/smartscale-controller.service <<'SMARTSCALE_EOF'
@@BLOCK:CONTROLLER_UNIT@@
SMARTSCALE_EOF
cat >"${ETC_DIR}/sync.env" <<SMARTSCALE_EOF
AWS_REGION=${REGION}
RELEASE_PARAM=${RELEASE_PARAM}
CONTROLLER_CONFIG_PARAM=${CONTROLLER_CONFIG_PARAM}
SMARTSCALE_EOF
chmod 0600 "${ETC_DIR}/sync.env"
cat >/etc/systemd/system/smartscale-sync.service <<'SMARTSCALE_EOF'
@@BLOCK:SYNC_SERVICE@@
SMARTSCALE_EOF
cat >/etc/systemd/system/smartscale-sync.timer <<'SMARTSCALE_EOF'
@@BLOCK:SYNC_TIMER@@
SMARTSCALE_EOF
IDENTITY_PUBLISHER=/usr/local/lib/smartscale/publish-identity
if [[ $CONTROLLER_MODE == lambda ]]; then
  cat >"$IDENTITY_PUBLISHER" <<'SMARTSCALE_EOF'
@@BLOCK:IDENTITY_PUBLISHER@@
SMARTSCALE_EOF
  chmod 0700 "$IDENTITY_PUBLISHER"
  cat >/etc/systemd/system/smartscale-identity.service <<'SMARTSCALE_EOF'
@@BLOCK:IDENTITY_UNIT@@
SMARTSCALE_EOF
fi
systemctl daemon-reload

# 3. The release: K3s manifests (applied by K3s at start and whenever they change: HelmCharts for
# the monitoring stack with its rules, the dashboards, the controller's RBAC), the controller
# binary and its config.
install -d -m 0700 "${K3S_SERVER_DIR}/manifests"
# Prometheus keeps its TSDB on the server's disk (hostPath), written as nobody (65534).
install -d -m 0755 /var/lib/smartscale
install -d -m 0700 -o 65534 -g 65534 /var/lib/smartscale/prometheus
saws sync --release-param "$RELEASE_PARAM" --config-param "$CONTROLLER_CONFIG_PARAM"

# 4. K3s server.
install_k3s server
wait_for "the Kubernetes API" 600 k3s kubectl get --raw /readyz

# 5. The agent token, once checked: secure format with this cluster's CA hash (a joining worker
# authenticates the server with it before it sends the token), and not the server token.
agent_token_ready() {
  local ca_hash
  ca_hash=$(sha256sum "${K3S_SERVER_DIR}/tls/server-ca.crt" | cut -d' ' -f1)
  grep -Eq "^K10${ca_hash}::[a-z]+:.+$" "${K3S_SERVER_DIR}/agent-token" &&
    ! cmp -s "${K3S_SERVER_DIR}/agent-token" "${K3S_SERVER_DIR}/token"
}
wait_for "K3s's agent token in the secure format" 300 agent_token_ready
saws secret-put --id "$AGENT_TOKEN_SECRET_ID" --src "${K3S_SERVER_DIR}/agent-token"

# 6. Grafana admin password: Secrets Manager -> 0600 file -> Kubernetes Secret (through a pipe,
# not an argument); the file is removed.
wait_for "namespace monitoring" 600 k3s kubectl get namespace monitoring
install -d -m 0700 /run/smartscale
saws secret-get --id "$GRAFANA_SECRET_ID" --dest /run/smartscale/grafana-admin-password
k3s kubectl -n monitoring create secret generic grafana-admin \
  --from-literal=admin-user=admin \
  --from-file=admin-password=/run/smartscale/grafana-admin-password \
  --dry-run=client -o yaml | k3s kubectl apply -f - >/dev/null
rm -f /run/smartscale/grafana-admin-password

# 7. The controller.
if [[ $CONTROLLER_MODE == lambda ]]; then
  # Lambda mode: the function runs the controller. It reads its Kubernetes identity (API address,
  # CA, ServiceAccount token) from Secrets Manager, published here once K3s has filled the token
  # Secret, and again at every boot by smartscale-identity.service. The daemon stays disabled (and
  # smartscale-sync's try-restart leaves a stopped unit stopped), so only the function acts.
  IDENTITY_ENV=("AWS_REGION=${REGION}" "IDENTITY_SECRET_ID=${CONTROLLER_IDENTITY_SECRET_ID}"
    "SERVER_URL=https://${PRIVATE_IP}:6443" "IDENTITY_WAIT_SECONDS=600")
  printf '%s\n' "${IDENTITY_ENV[@]}" >"${ETC_DIR}/identity.env"
  chmod 0600 "${ETC_DIR}/identity.env"
  env "${IDENTITY_ENV[@]}" "$IDENTITY_PUBLISHER"
  systemctl enable smartscale-identity.service
  systemctl disable --now smartscale-controller.service
else
  # Daemon mode: an API token generated here, and a kubeconfig for the controller's
  # ServiceAccount (read-only RBAC), not the cluster-admin one.
  if [[ ! -s "${ETC_DIR}/api-token" ]]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"${ETC_DIR}/api-token"
  fi
  chown smartscale:smartscale "${ETC_DIR}/api-token"
  chmod 0600 "${ETC_DIR}/api-token"

  sa_token_ready() {
    [[ -n "$(k3s kubectl -n kube-system get secret smartscale-controller-token -o jsonpath='{.data.token}')" ]]
  }
  wait_for "the controller's ServiceAccount token" 600 sa_token_ready
  SA_TOKEN=$(k3s kubectl -n kube-system get secret smartscale-controller-token -o jsonpath='{.data.token}' | base64 -d)
  SA_CA=$(k3s kubectl -n kube-system get secret smartscale-controller-token -o jsonpath='{.data.ca\.crt}')
  cat >"${ETC_DIR}/kubeconfig" <<SMARTSCALE_EOF
apiVersion: v1
kind: Config
clusters:
  - name: k3s
    cluster:
      server: https://127.0.0.1:6443
      certificate-authority-data: ${SA_CA}
users:
  - name: smartscale-controller
    user:
      token: ${SA_TOKEN}
contexts:
  - name: smartscale-controller
    context:
      cluster: k3s
      user: smartscale-controller
current-context: smartscale-controller
SMARTSCALE_EOF
  unset SA_TOKEN SA_CA
  chown smartscale:smartscale "${ETC_DIR}/kubeconfig"
  chmod 0600 "${ETC_DIR}/kubeconfig"

  cat >"${ETC_DIR}/controller.env" <<SMARTSCALE_EOF
AWS_REGION=${REGION}
KUBECONFIG=${ETC_DIR}/kubeconfig
SMARTSCALE_EOF
  chmod 0640 "${ETC_DIR}/controller.env"
  chgrp smartscale "${ETC_DIR}/controller.env"

  systemctl enable --now smartscale-controller.service
fi

# 8. From now on every `pulumi up` reaches this server through smartscale-sync.
systemctl enable --now smartscale-sync.timer
log "server bootstrap complete (controller: ${CONTROLLER_MODE})"
