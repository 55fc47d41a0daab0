# Shared by the server and worker bootstrap scripts and the worker's join script; inserted by the
# renderer (pulumi/src/userdata.ts). Uses REGION, set at the top of each script. Nothing here
# downloads from the internet: AWS calls go through smartscale-aws (userdata/smartscale-aws.py,
# Python standard library, written by each bootstrap script before use). The download functions are
# in artifacts.sh.

AWS_HELPER=/usr/local/lib/smartscale/aws

log() {
  printf '%s smartscale-bootstrap: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}

# retry ATTEMPTS DELAY_SECONDS COMMAND... : run COMMAND until it succeeds, at most ATTEMPTS times.
retry() {
  local attempts=$1 delay=$2 n=1
  shift 2
  until "$@"; do
    if ((n >= attempts)); then
      log "giving up after ${n} attempts: $1"
      return 1
    fi
    log "attempt ${n}/${attempts} failed: $1; retrying in ${delay}s"
    sleep "$delay"
    n=$((n + 1))
  done
}

# wait_for WHAT TIMEOUT_SECONDS COMMAND... : poll COMMAND every 5 s until it succeeds.
wait_for() {
  local what=$1 timeout=$2 start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - start >= timeout)); then
      log "timed out after ${timeout}s waiting for ${what}"
      return 1
    fi
    sleep 5
  done
}

# IMDSv2 only (HttpTokens=required, hop limit 1): every read takes a session token first.
imds_get() {
  local token
  token=$(curl -sf --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \
    http://169.254.169.254/latest/api/token) || return 1
  curl -sf --max-time 5 -H "X-aws-ec2-metadata-token: ${token}" "http://169.254.169.254/latest/meta-data/$1"
}

# saws ARGS... : smartscale-aws in this region (it retries throttling, server faults and IAM that
# has not propagated yet, for up to 5 minutes unless --timeout says otherwise).
saws() {
  "$AWS_HELPER" --region "$REGION" "$@"
}
