#!/usr/bin/env bash
# Every test SmartScale has, in one command (README "test command"; .ci/run calls it):
#   1. what the tests run on (idempotent; prints what it installs): moto in a venv, Debian's
#      prometheus; scripts/check-infra.sh adds shellcheck and the npm packages;
#   2. the binaries the end-to-end tests start, then all Rust tests (unit, test world, end to end)
#      with cargo-nextest; every backend a test needs is started by the test on 127.0.0.1 and
#      stopped by PID when it ends;
#   3. the AWS model's own tests (pytest), and the infrastructure checks (Pulumi mocks, tsc,
#      shell and unit-file linting, dashboard queries against real Prometheus).
set -euo pipefail
cd "$(dirname "$0")/.."
backends=${SMARTSCALE_BACKENDS_DIR:-/tmp/smartscale-backends}
failed=()

step() { printf '\n=== %s\n' "$*"; }

step "backends"
scripts/setup-backends.sh

step "build the binaries the end-to-end tests run"
cargo build --workspace --bins
target=${CARGO_TARGET_DIR:-target}
# They must run on the instances' AMI (Ubuntu 24.04, glibc 2.39; docs/deploy.md).
scripts/check-glibc.sh "$target/debug/smartscale-agent" "$target/debug/smartscale-controller" || failed+=("glibc")

if cargo nextest --version >/dev/null 2>&1; then
    step "Rust tests (cargo nextest)"
    cargo nextest run --workspace --no-fail-fast || failed+=("rust")
else
    step "Rust tests (cargo test; install cargo-nextest for per-test processes and timing)"
    cargo test --workspace --no-fail-fast || failed+=("rust")
fi

step "AWS model tests (pytest)"
"$backends/venv/bin/python" -m pytest -q tests/aws_model || failed+=("aws-model")

step "infrastructure checks"
scripts/check-infra.sh || failed+=("infrastructure")

if [ ${#failed[@]} -gt 0 ]; then
    printf '\ntest-all: FAILED: %s\n' "${failed[*]}"
    exit 1
fi
printf '\ntest-all: all suites passed\n'
