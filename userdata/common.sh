# Shared by the server and worker bootstrap scripts; inserted by the renderer (pulumi/src/userdata.ts).
# Uses REGION and K3S_VERSION, set at the top of each script.

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

# The AWS CLI is not on the Ubuntu 24.04 image: install it as Canonical publishes it (snap),
# or from the distribution on Debian-like images without snapd.
ensure_aws_cli() {
  if command -v aws >/dev/null 2>&1; then
    return 0
  fi
  if command -v snap >/dev/null 2>&1; then
    retry 10 5 snap wait system seed.loaded
    retry 5 10 snap install aws-cli --classic
    export PATH="/snap/bin:${PATH}"
  else
    retry 5 10 apt-get update -q
    retry 5 10 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q awscli
  fi
  command -v aws >/dev/null 2>&1
}

# fetch_verified BUCKET KEY VERSION_ID SHA256 DEST MODE : download one pinned object version and
# install it only if its SHA-256 matches the one recorded at deploy time.
fetch_verified() {
  local bucket=$1 key=$2 version=$3 sha=$4 dest=$5 mode=$6 tmp actual
  tmp=$(mktemp "${dest}.XXXXXX")
  if ! retry 10 6 aws s3api get-object --region "$REGION" --bucket "$bucket" --key "$key" \
    --version-id "$version" "$tmp" >/dev/null; then
    rm -f "$tmp"
    return 1
  fi
  actual=$(sha256sum "$tmp" | cut -d' ' -f1)
  if [[ "$actual" != "$sha" ]]; then
    log "SHA-256 mismatch for s3://${bucket}/${key} (version ${version}): expected ${sha}, got ${actual}"
    rm -f "$tmp"
    return 1
  fi
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
  log "installed ${dest} (sha256 ${sha})"
}

# read_secret_to_file SECRET_ID DEST : the secret goes from the AWS CLI's stdout straight into a
# 0600 file; it never appears in a command line, an environment variable or the log.
read_secret_to_file() {
  local secret_id=$1 dest=$2 tmp
  tmp=$(mktemp "${dest}.XXXXXX")
  chmod 0600 "$tmp"
  if ! retry 10 6 aws secretsmanager get-secret-value --region "$REGION" --secret-id "$secret_id" \
    --query SecretString --output text >"$tmp"; then
    rm -f "$tmp"
    return 1
  fi
  if [[ ! -s "$tmp" ]]; then
    log "secret ${secret_id} is empty"
    rm -f "$tmp"
    return 1
  fi
  mv -f "$tmp" "$dest"
}

# install_k3s ROLE [ENV=VALUE...] : the pinned K3s release's own install script, which verifies the
# k3s binary against the release's sha256sum file.
install_k3s() {
  local role=$1 script
  shift
  script=$(mktemp /tmp/k3s-install.XXXXXX)
  retry 10 6 curl -sfL --max-time 60 -o "$script" \
    "https://raw.githubusercontent.com/k3s-io/k3s/${K3S_VERSION}/install.sh"
  env INSTALL_K3S_VERSION="$K3S_VERSION" "$@" sh "$script" "$role"
  rm -f "$script"
}
