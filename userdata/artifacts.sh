# Downloads of the server and worker bootstrap scripts (after common.sh); inserted by the renderer
# (pulumi/src/userdata.ts). Uses ARTIFACT_BUCKET and the K3S_* values set at the top of each script.
# Every file comes from the stack's bucket through the VPC's S3 endpoint, as a pinned object version
# with its SHA-256 checked; nothing from the internet.

# fetch_verified KEY VERSION_ID SHA256 DEST MODE : one pinned object version of the stack's bucket,
# installed only if its SHA-256 matches the one recorded at deploy time.
fetch_verified() {
  saws s3-get --bucket "$ARTIFACT_BUCKET" --key "$1" --version-id "$2" --sha256 "$3" --dest "$4" --mode "$5"
}

# install_k3s ROLE [ENV=VALUE...] : the pinned k3s binary and k3s's own install script, both from
# the bucket; the script is told not to download anything (INSTALL_K3S_SKIP_DOWNLOAD).
install_k3s() {
  local role=$1
  shift
  fetch_verified "$K3S_BINARY_KEY" "$K3S_BINARY_VERSION_ID" "$K3S_BINARY_SHA256" /usr/local/bin/k3s 0755
  fetch_verified "$K3S_INSTALL_KEY" "$K3S_INSTALL_VERSION_ID" "$K3S_INSTALL_SHA256" /usr/local/lib/smartscale/k3s-install.sh 0700
  env INSTALL_K3S_SKIP_DOWNLOAD=true INSTALL_K3S_VERSION="$K3S_VERSION" "$@" \
    sh /usr/local/lib/smartscale/k3s-install.sh "$role"
}
