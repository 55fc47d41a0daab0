#!/bin/bash
# SmartScale K3s server bootstrap. Rendered by pulumi/src/userdata.ts from userdata/server.sh.tpl.
# It holds no secret: the K3s token and the Grafana admin password are read from Secrets Manager
# at boot straight into 0600 files.
#
# Steps: token -> k3s config -> verified manifests (Prometheus, kube-state-metrics, node-exporter,
# Grafana, dashboards, controller RBAC) -> k3s server -> Grafana admin Secret -> controller.
set -euo pipefail
umask 077

REGION='@@REGION@@'
CLUSTER_ID='@@CLUSTER_ID@@'
ARTIFACT_BUCKET='@@ARTIFACT_BUCKET@@'
CONTROLLER_KEY='@@CONTROLLER_KEY@@'
CONTROLLER_VERSION_ID='@@CONTROLLER_VERSION_ID@@'
CONTROLLER_SHA256='@@CONTROLLER_SHA256@@'
TOKEN_SECRET_ID='@@TOKEN_SECRET_ID@@'
GRAFANA_SECRET_ID='@@GRAFANA_SECRET_ID@@'
K3S_VERSION='@@K3S_VERSION@@'

@@BLOCK:COMMON_FUNCTIONS@@

K3S_DIR=/etc/rancher/k3s
MANIFEST_DIR=/var/lib/rancher/k3s/server/manifests
ETC_DIR=/etc/smartscale

log "starting server bootstrap (cluster ${CLUSTER_ID})"
PRIVATE_IP=$(retry 10 2 imds_get local-ipv4)
PUBLIC_IP=$(imds_get public-ipv4 || true)
ensure_aws_cli

# 1. The join token: Secrets Manager -> 0600 file, which k3s reads through token-file.
install -d -m 0700 "$K3S_DIR"
read_secret_to_file "$TOKEN_SECRET_ID" "${K3S_DIR}/token"
{
  echo "token-file: ${K3S_DIR}/token"
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

# 2. Manifests that K3s applies at start: HelmCharts for the monitoring stack, the dashboards
# ConfigMap and the controller's ServiceAccount/RBAC. Each is a pinned S3 version, SHA-256 checked.
install -d -m 0700 "$MANIFEST_DIR"
@@BLOCK:MANIFEST_FETCHES@@
# Prometheus keeps its TSDB on the server's disk (hostPath), written as nobody (65534).
install -d -m 0755 /var/lib/smartscale
install -d -m 0700 -o 65534 -g 65534 /var/lib/smartscale/prometheus

# 3. K3s server.
install_k3s server
wait_for "the Kubernetes API" 600 k3s kubectl get --raw /readyz

# 4. Grafana admin password: Secrets Manager -> 0600 file -> Kubernetes Secret (through a pipe,
# not an argument); the file is removed.
wait_for "namespace monitoring" 600 k3s kubectl get namespace monitoring
install -d -m 0700 /run/smartscale
read_secret_to_file "$GRAFANA_SECRET_ID" /run/smartscale/grafana-admin-password
k3s kubectl -n monitoring create secret generic grafana-admin \
  --from-literal=admin-user=admin \
  --from-file=admin-password=/run/smartscale/grafana-admin-password \
  --dry-run=client -o yaml | k3s kubectl apply -f - >/dev/null
rm -f /run/smartscale/grafana-admin-password

# 5. Controller: own system user, verified binary, config, an API token generated here, and a
# kubeconfig for its ServiceAccount (read-only RBAC), not the cluster-admin one.
if ! id smartscale >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin smartscale
fi
fetch_verified "$ARTIFACT_BUCKET" "$CONTROLLER_KEY" "$CONTROLLER_VERSION_ID" "$CONTROLLER_SHA256" \
  /usr/local/bin/smartscale-controller 0755
install -d -m 0750 -o root -g smartscale "$ETC_DIR"

cat >"${ETC_DIR}/controller.yaml" <<'SMARTSCALE_EOF'
@@BLOCK:CONTROLLER_CONFIG@@
SMARTSCALE_EOF
chgrp smartscale "${ETC_DIR}/controller.yaml"
chmod 0640 "${ETC_DIR}/controller.yaml"

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

cat >/etc/systemd/system/smartscale-controller.service <<'SMARTSCALE_EOF'
@@BLOCK:CONTROLLER_UNIT@@
SMARTSCALE_EOF
systemctl daemon-reload
systemctl enable --now smartscale-controller.service
log "server bootstrap complete"
