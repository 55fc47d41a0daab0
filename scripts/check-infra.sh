#!/usr/bin/env bash
# Checks everything under pulumi/, userdata/ and dashboards/ offline, without AWS or a Pulumi CLI:
#
#   1. pulumi:     npm ci (when node_modules is missing or stale), tsc --noEmit, npm test (mocha
#                  unit tests of the program under Pulumi mocks)
#   2. userdata:   render the server/worker UserData, units, server manifest and controller config
#                  with sample values, exactly as the program does; shellcheck the scripts; run the
#                  rendered worker bootstrap with its outside effects stubbed (order, heartbeats,
#                  no internet, ABANDON on failure) and the server's (the agent token it
#                  publishes, the sync before K3s); the smartscale-aws helper against the test
#                  world's AWS model with moto's signature checks on; check the manifest (YAML,
#                  promtool check/test rules on the shipped alert and cost rules, the scrape
#                  configs' relabelling in a real Prometheus); systemd-analyze verify + offline
#                  security score of the units (skipped, with a message, where systemd-analyze is
#                  missing)
#   3. rules:      promtool test rules on dashboards/rules/alerts.test.yml (every alert fires on
#                  data that should fire it and stays quiet otherwise)
#   4. glibc:      scripts/check-glibc.sh self-test, and the release binaries if they are built
#   5. dashboards: every panel query against a real Prometheus backfilled with promtool, and the
#                  values of the worker signals and cost panels
#
# Exit status 0 only if every step passes. The last line is "check-infra: N passed, N failed".
# Installs shellcheck and prometheus from Debian when missing (needs root and apt-get), and the test
# world's Python venv (tests/aws_model/requirements.txt, from PyPI) when it is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/smartscale-check-infra.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
skipped=0
summary=()

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# step NAME COMMAND... : run one step, record pass/fail and its time.
step() {
  local name=$1 start rc
  shift
  echo
  echo "==> ${name}"
  start=$(now)
  set +e
  (
    set -e
    "$@"
  )
  rc=$?
  set -e
  if ((rc == 0)); then
    passed=$((passed + 1))
    summary+=("ok    ${name} ($(elapsed "$start"))")
  else
    failed=$((failed + 1))
    summary+=("FAIL  ${name} ($(elapsed "$start"), exit ${rc})")
  fi
}

skip() {
  skipped=$((skipped + 1))
  summary+=("skip  $1: $2")
  echo
  echo "==> $1: skipped: $2"
}

ensure_debian_packages() {
  local missing=()
  command -v shellcheck >/dev/null || missing+=(shellcheck)
  { command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing+=(prometheus)
  ((${#missing[@]} == 0)) && return 0
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "missing ${missing[*]} and cannot install them (need root and apt-get)" >&2
    return 1
  fi
  echo "installing ${missing[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# PyYAML for userdata/check_manifest.py; without it that check says it skipped.
ensure_pyyaml() {
  python3 -c 'import yaml' 2>/dev/null && return 0
  python3 -m pip install --quiet --disable-pip-version-check pyyaml >/dev/null 2>&1 ||
    echo "could not install PyYAML; the manifest check will be skipped"
}

# ----------------------------------------------------------------------------- pulumi

pulumi_deps() {
  cd "$ROOT/pulumi"
  # npm ci when node_modules is missing or older than the lockfile.
  if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
    npm ci --no-audit --no-fund --loglevel=error
  else
    echo "node_modules up to date"
  fi
}

pulumi_tsc() {
  cd "$ROOT/pulumi"
  npx --no-install tsc --noEmit
}

pulumi_test() {
  cd "$ROOT/pulumi"
  npm test --silent
}

# ----------------------------------------------------------------------------- userdata

render_samples() {
  cd "$ROOT/pulumi"
  npx --no-install ts-node --transpile-only scripts/render-samples.ts "$WORK/rendered"
}

check_manifest() {
  ensure_pyyaml
  python3 "$ROOT/userdata/check_manifest.py" "$WORK/rendered/smartscale.yaml"
}

# Every shell script of the repository: the rendered UserData, scripts/ (the test world's builds,
# CI's steps), CI itself and the k3s fetcher.
shellcheck_scripts() {
  local files=("$WORK"/rendered/*.sh "$ROOT"/scripts/*.sh "$ROOT/.ci/run" "$ROOT/pulumi/scripts/fetch-k3s.sh")
  shellcheck --version | sed -n 2p
  shellcheck -s bash -S style "${files[@]}"
  echo "shellcheck clean: ${#files[@]} scripts (${files[*]##*/})"
}

worker_bootstrap() {
  python3 "$ROOT/userdata/test_worker_bootstrap.py" "$WORK/rendered"
}

server_bootstrap() {
  python3 "$ROOT/userdata/test_server_bootstrap.py" "$WORK/rendered"
}

# The test world's venv (moto and boto3 pinned): the one scripts/setup-backends.sh made, else our own.
aws_venv() {
  local venv=${SMARTSCALE_BACKENDS_DIR:-/tmp/smartscale-backends}/venv
  if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import moto, boto3' 2>/dev/null; then
    echo "$venv"
    return 0
  fi
  venv=${XDG_CACHE_HOME:-$HOME/.cache}/smartscale-check-infra/venv
  if ! [[ -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import moto, boto3' 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/tests/aws_model/requirements.txt" >&2
  fi
  echo "$venv"
}

aws_helper() {
  local venv
  venv=$(aws_venv)
  "$venv/bin/python" "$ROOT/userdata/test_smartscale_aws.py"
}

alert_rules() {
  cd "$ROOT/dashboards/rules"
  promtool check rules alerts.yml
  promtool test rules alerts.test.yml
}

# systemd-analyze verify of one unit in the offline root; it exits 0 even when it ignores a bad
# directive, so any output is a failure.
verify_unit() {
  local root=$1 unit=$2 out rc=0
  out=$(systemd-analyze --root="$root" verify "$root/etc/systemd/system/$unit" 2>&1) || rc=1
  if [[ -n "$out" ]]; then
    echo "$out"
    return 1
  fi
  echo "systemd-analyze verify ${unit}: clean"
  return "$rc"
}

systemd_checks() {
  local root=$WORK/sysroot out rc=0 unit
  # An offline root with the distribution's units (for sysinit.target and friends) and stand-ins
  # for the two binaries, which verify requires to exist.
  mkdir -p "$root/usr/local/bin" "$root/usr/local/lib/smartscale" "$root/etc/systemd/system" "$root/usr/lib/systemd"
  cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
  for b in bin/smartscale-agent bin/smartscale-controller lib/smartscale/aws lib/smartscale/publish-identity lib/smartscale/join; do
    printf '#!/bin/sh\n' >"$root/usr/local/$b"
    chmod 0755 "$root/usr/local/$b"
  done
  cp "$WORK"/rendered/*.service "$WORK"/rendered/*.timer "$root/etc/systemd/system/"
  # The warm-pool join unit continues the bootstrap as root, unsandboxed (it starts k3s-agent,
  # like cloud-init's user data it takes over from): verified, but no exposure threshold.
  for unit in smartscale-sync.timer smartscale-join.service; do
    verify_unit "$root" "$unit" || rc=1
  done
  for unit in smartscale-agent.service smartscale-controller.service smartscale-sync.service smartscale-identity.service; do
    verify_unit "$root" "$unit" || rc=1
    # Exposure score on systemd's 0-10 scale must stay <= 2.5 (threshold is in tenths).
    if ! out=$(systemd-analyze --root="$root" security --offline=true --threshold=25 \
      "$root/etc/systemd/system/$unit" 2>&1); then
      echo "$out" | tail -20
      rc=1
    fi
    echo "$out" | grep -o 'Overall exposure level.*' || true
  done
  return "$rc"
}

# ----------------------------------------------------------------------------- glibc

glibc_checks() {
  local rc=0 target=${CARGO_TARGET_DIR:-$ROOT/target} profile bins=()
  "$ROOT/scripts/check-glibc.sh" /usr/bin/ls || rc=1
  if "$ROOT/scripts/check-glibc.sh" --max-glibc 2.0 /usr/bin/ls >/dev/null; then
    echo "check-glibc.sh accepted /usr/bin/ls with a 2.0 limit: the check does not work"
    rc=1
  else
    echo "check-glibc.sh rejects /usr/bin/ls against glibc 2.0, as it should"
  fi
  # The release binaries are what gets deployed; without them, a debug build links the same glibc.
  for profile in release debug; do
    for b in smartscale-agent smartscale-controller; do
      [[ -x "$target/$profile/$b" ]] && bins+=("$target/$profile/$b")
    done
    if ((${#bins[@]} > 0)); then
      [[ $profile == release ]] || echo "no release build under ${target}; checking the ${profile} build instead"
      "$ROOT/scripts/check-glibc.sh" "${bins[@]}" || rc=1
      return "$rc"
    fi
  done
  echo "no smartscale binaries under ${target} (set CARGO_TARGET_DIR if they are elsewhere); after"
  echo "cargo build --release run: scripts/check-glibc.sh target/release/smartscale-{agent,controller}"
  return "$rc"
}

# ----------------------------------------------------------------------------- main

total_start=$(now)
step "debian packages (shellcheck, prometheus)" ensure_debian_packages
step "pulumi: npm ci" pulumi_deps
step "pulumi: tsc --noEmit" pulumi_tsc
step "pulumi: npm test (mocha, Pulumi mocks)" pulumi_test
step "userdata: render with sample values" render_samples
step "userdata: shellcheck" shellcheck_scripts
step "userdata: worker bootstrap, stubbed (heartbeats first, no internet, ABANDON)" worker_bootstrap
step "userdata: server bootstrap, stubbed (agent token checked before it is published)" server_bootstrap
step "userdata: smartscale-aws against the AWS model (signatures checked)" aws_helper
step "userdata: server manifest (YAML, rules, relabelling in Prometheus)" check_manifest
if command -v systemd-analyze >/dev/null && [[ -d /usr/lib/systemd/system ]]; then
  step "userdata: systemd-analyze verify + security" systemd_checks
else
  skip "userdata: systemd-analyze" "systemd-analyze or /usr/lib/systemd/system not available on this machine"
fi
step "rules: promtool test rules (alerts)" alert_rules
step "glibc: scripts/check-glibc.sh" glibc_checks
step "dashboards: every query and the cost and signal values against Prometheus" python3 "$ROOT/dashboards/test_queries.py"

echo
echo "==> summary"
printf '%s\n' "${summary[@]}"
echo "total $(elapsed "$total_start")"
((skipped == 0)) || echo "(${skipped} step(s) skipped, see above)"
echo "check-infra: ${passed} passed, ${failed} failed"
((failed == 0))
