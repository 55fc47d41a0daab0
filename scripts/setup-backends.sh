#!/usr/bin/env bash
# Install what the test world runs on, idempotently, and say what was done:
#   - a Python venv with tests/aws_model/requirements.txt (moto[server] pinned) in
#     ${SMARTSCALE_BACKENDS_DIR:-/tmp/smartscale-backends}/venv;
#   - Debian's prometheus package (prometheus + promtool), if either is missing;
#   - the real Kubernetes control plane (tests/controlplane: etcd, kube-apiserver,
#     kube-controller-manager, kube-scheduler in one `kube-world` binary) built from the Go module
#     proxy into ${SMARTSCALE_BACKENDS_DIR}/bin, cached by its go.mod/go.sum (cold: ~5 min on 2 cores),
#     amazon-ec2-metadata-mock (tests/aemm, ~40 s cold) and the Lambda Runtime Interface
#     Emulator (tests/lambda-rie).
# Nothing is started here: tests and `smartscale-testworld up` start their own processes.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
requirements="$repo/tests/aws_model/requirements.txt"
backends=${SMARTSCALE_BACKENDS_DIR:-/tmp/smartscale-backends}
venv="$backends/venv"
stamp="$venv/.requirements.sha256"

say() { printf 'setup-backends: %s\n' "$*"; }
die() { printf 'setup-backends: error: %s\n' "$*" >&2; exit 1; }

[ -f "$requirements" ] || die "missing $requirements"
command -v python3 >/dev/null || die "python3 is not installed (apt-get install -y python3 python3-venv)"

# --- Python venv with moto -------------------------------------------------------------
mkdir -p "$backends"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && "$venv/bin/python" -c 'import moto, werkzeug' 2>/dev/null; then
    say "venv $venv already has $(basename "$requirements") installed ($("$venv/bin/python" -c 'import moto; print("moto", moto.__version__)'))"
else
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv" || die "python3 -m venv failed (on Debian: apt-get install -y python3-venv)"
        say "created venv $venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" >"$stamp"
    say "installed $requirements into $venv ($("$venv/bin/python" -c 'import moto; print("moto", moto.__version__)'))"
fi

# --- Prometheus ----------------------------------------------------------------------------
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    say "prometheus already installed ($(prometheus --version 2>&1 | head -n1))"
else
    command -v apt-get >/dev/null || die "prometheus is missing and apt-get is not available; install prometheus and promtool 2.42+ yourself"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "prometheus is missing; run as root or install sudo"
        sudo="sudo"
    fi
    say "installing Debian's prometheus package (apt-get install -y prometheus)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # Debian's post-install may start a system Prometheus on :9090; the test world uses its own
    # instances on free loopback ports, so it does not need it and leaves it alone.
    say "installed prometheus ($(prometheus --version 2>&1 | head -n1))"
fi

# --- Go programs: the Kubernetes control plane -----------------------------------------------
# The version stamped into the binaries is the one go.mod pins (kubectl's version skew checks read it).
kube_version=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$repo/tests/controlplane/go.mod" | head -n1)
[ -n "$kube_version" ] || die "tests/controlplane/go.mod does not require k8s.io/kubernetes"
kube_minor=$(echo "$kube_version" | cut -d. -f2)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor -X $pkg.gitTreeState=clean"
done
SMARTSCALE_BACKENDS_DIR=$backends "$repo/scripts/build-go-binary.sh" kube-world "$repo/tests/controlplane" . -- -ldflags="$ldflags"
# The AWS-maintained IMDS mock (amazon-ec2-metadata-mock), pinned in tests/aemm/go.mod.
SMARTSCALE_BACKENDS_DIR=$backends "$repo/scripts/build-go-binary.sh" aemm "$repo/tests/aemm" github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock
# The AWS Lambda Runtime Interface Emulator, which runs the controller's Lambda mode (tests/lambda-rie).
SMARTSCALE_BACKENDS_DIR=$backends "$repo/scripts/build-go-binary.sh" aws-lambda-rie "$repo/tests/lambda-rie" github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie

say "done: SMARTSCALE_BACKENDS_DIR=$backends (python: $venv/bin/python; binaries: $backends/bin)"
