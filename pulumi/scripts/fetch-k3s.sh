#!/usr/bin/env bash
# Downloads a K3s release (amd64 binary and install.sh) into pulumi/.k3s/<version>/ for the stack
# to upload to its own bucket, and checks both against the SHA-256 pins in pulumi/k3s-releases.json.
#
#   pulumi/scripts/fetch-k3s.sh v1.33.4+k3s1          download and verify against the pins
#   pulumi/scripts/fetch-k3s.sh --pin v1.35.1+k3s1    pin a new release: the binary must match the
#                                                     release's sha256sum-amd64.txt; review, commit
#
# Needs curl, sha256sum and python3. Run it on the machine you run `pulumi up` from.
set -euo pipefail

pin=0
if [[ ${1:-} == --pin ]]; then
  pin=1
  shift
fi
version=${1:?usage: fetch-k3s.sh [--pin] VERSION (e.g. v1.33.4+k3s1)}
[[ $version =~ ^v[0-9]+\.[0-9]+\.[0-9]+\+k3s[0-9]+$ ]] || { echo "not a K3s version: $version" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pins=$here/k3s-releases.json
dir=$here/.k3s/$version
tag=${version//+/%2B}
mkdir -p "$dir"

curl -fsSL --retry 3 -o "$dir/k3s" "https://github.com/k3s-io/k3s/releases/download/${tag}/k3s"
curl -fsSL --retry 3 -o "$dir/sha256sum-amd64.txt" "https://github.com/k3s-io/k3s/releases/download/${tag}/sha256sum-amd64.txt"
curl -fsSL --retry 3 -o "$dir/install.sh" "https://raw.githubusercontent.com/k3s-io/k3s/${tag}/install.sh"
chmod 0755 "$dir/k3s"

bin_sha=$(sha256sum "$dir/k3s" | cut -d' ' -f1)
script_sha=$(sha256sum "$dir/install.sh" | cut -d' ' -f1)
release_sha=$(awk '$2 == "k3s" { print $1 }' "$dir/sha256sum-amd64.txt")
if [[ $bin_sha != "$release_sha" ]]; then
  echo "the k3s binary's SHA-256 $bin_sha does not match the release's sha256sum-amd64.txt ($release_sha)" >&2
  exit 1
fi

if ((pin)); then
  python3 - "$pins" "$version" "$bin_sha" "$script_sha" <<'PY'
import json, sys
path, version, k3s, script = sys.argv[1:]
pins = json.load(open(path))
pins[version] = {"k3s": k3s, "install.sh": script}
json.dump(dict(sorted(pins.items())), open(path, "w"), indent=2)
open(path, "a").write("\n")
PY
  echo "pinned $version in $pins: k3s $bin_sha, install.sh $script_sha (review and commit)"
  exit 0
fi

want=$(python3 -c 'import json,sys; p=json.load(open(sys.argv[1])).get(sys.argv[2]); print(p["k3s"], p["install.sh"]) if p else print("")' "$pins" "$version")
if [[ -z $want ]]; then
  echo "$version is not pinned in $pins; pin it with --pin after checking the release" >&2
  exit 1
fi
if [[ "$bin_sha $script_sha" != "$want" ]]; then
  echo "downloaded files do not match the pins for $version: got k3s $bin_sha install.sh $script_sha, pinned $want" >&2
  exit 1
fi
echo "k3s $version in $dir matches the pins"
