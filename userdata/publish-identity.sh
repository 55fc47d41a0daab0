#!/bin/bash
# smartscale-publish-identity (Lambda mode only): stores the controller function's Kubernetes identity
# in Secrets Manager as the JSON controller/src/lambda/kubernetes.rs reads:
#
#   {"server": SERVER_URL, "ca_crt": "<base64 PEM>", "token": "<ServiceAccount token>"}
#
# SERVER_URL is the K3s API at this server's private address, port 6443 (in its certificate's
# SANs: tls-san). ca_crt and token come from the Secret kube-system/smartscale-controller-token
# (kubernetes.io/service-account-token, userdata/manifests/smartscale.yaml), which K3s's token
# controller fills: its ca.crt is K3s's server CA, already base64 as a kubeconfig's
# certificate-authority-data wants it. Installed by the server bootstrap as
# /usr/local/lib/smartscale/publish-identity; the bootstrap runs it at first boot and
# smartscale-identity.service at every later boot. Each run stores the current values as a new
# version (AWSCURRENT), so running it again is harmless.
#
# Environment (/etc/smartscale/identity.env): AWS_REGION, IDENTITY_SECRET_ID, SERVER_URL; and
# IDENTITY_WAIT_SECONDS, how long to wait for K3s to fill the Secret (default 600).
#
# The token goes from kubectl's stdout into a variable of this shell and from there through a pipe
# (printf is a builtin) into the helper's stdin: never into an argument, a process's environment,
# a file or the log.
set -euo pipefail
umask 077

: "${AWS_REGION:?}" "${IDENTITY_SECRET_ID:?}" "${SERVER_URL:?}"
WAIT=${IDENTITY_WAIT_SECONDS:-600}
AWS_HELPER=/usr/local/lib/smartscale/aws
SA_SECRET=smartscale-controller-token

log() {
  printf '%s smartscale-publish-identity: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}

# field KEY : one base64 value of the token Secret's data, empty while K3s has not filled it.
field() {
  k3s kubectl -n kube-system get secret "$SA_SECRET" -o "jsonpath={.data.$1}" 2>/dev/null
}

# The function accepts an https API address only.
if [[ ${SERVER_URL%%://*} != https || ! ${SERVER_URL#*://} =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]]; then
  log "SERVER_URL must be https, a host and a port, not ${SERVER_URL}"
  exit 1
fi

deadline=$((SECONDS + WAIT))
token_b64=''
ca=''
until token_b64=$(field token) && [[ -n $token_b64 ]] && ca=$(field 'ca\.crt') && [[ -n $ca ]]; do
  if ((SECONDS >= deadline)); then
    log "timed out after ${WAIT}s waiting for K3s to fill kube-system/${SA_SECRET}"
    exit 1
  fi
  sleep 5
done
token=$(printf '%s' "$token_b64" | base64 -d)
unset token_b64

# Only characters JSON carries as they are, so the printf below builds valid JSON: a token is a
# JWT (base64url and dots), the CA standard base64.
if [[ ! $token =~ ^[A-Za-z0-9._-]+$ ]]; then
  log "kube-system/${SA_SECRET}: the token is not a JWT (not shown)"
  exit 1
fi
if [[ ! $ca =~ ^[A-Za-z0-9+/]+=*$ ]]; then
  log "kube-system/${SA_SECRET}: ca.crt is not base64"
  exit 1
fi

printf '{"server":"%s","ca_crt":"%s","token":"%s"}' "$SERVER_URL" "$ca" "$token" |
  "$AWS_HELPER" --region "$AWS_REGION" secret-put --id "$IDENTITY_SECRET_ID" --src -
unset token
log "published the controller's identity (${SERVER_URL}, CA, ServiceAccount token) to ${IDENTITY_SECRET_ID}"
