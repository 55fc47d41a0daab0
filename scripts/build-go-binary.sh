#!/usr/bin/env bash
# Builds one Go program of the test world from the Go module proxy, once, and caches it:
#
#   scripts/build-go-binary.sh NAME MODULE_DIR [PACKAGE] [-- extra go build flags]
#
# NAME        the binary's name, e.g. kube-world; it lands at $SMARTSCALE_BACKENDS_DIR/bin/NAME
# MODULE_DIR  a Go module of this repository (go.mod + go.sum pinned), e.g. tests/controlplane
# PACKAGE     what to build inside it (default "."), e.g. github.com/aws/amazon-ec2-metadata-mock/cmd
#
# The build is keyed by the module's files, the Go version and the flags: a second run with the
# same key does nothing. It builds into a temporary directory and renames into place, so a failed
# or interrupted build never leaves a file the next run would take for finished. Errors: one line
# saying what and how to fix it, exit 1.
set -euo pipefail

die() { printf 'build-go-binary: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'build-go-binary: %s\n' "$*"; }

[ $# -ge 2 ] || die "usage: $0 NAME MODULE_DIR [PACKAGE] [-- go build flags]"
name=$1 module=$2
shift 2
package=.
if [ $# -gt 0 ] && [ "$1" != "--" ]; then package=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" = "--" ]; then shift; fi
flags=("$@")

command -v go >/dev/null || die "the Go toolchain is not installed or not on PATH (install Go 1.24+; the polyglot machine has it at /usr/local/go/bin)"
if [ ! -f "$module/go.mod" ] || [ ! -f "$module/go.sum" ]; then die "$module has no go.mod/go.sum"; fi

backends=${SMARTSCALE_BACKENDS_DIR:-/tmp/smartscale-backends}
cache="$backends/go/$name"
bin="$backends/bin"
mkdir -p "$cache" "$bin"

key=$( {
    go version
    printf '%s\n' "$package" "${flags[@]+"${flags[@]}"}"
    (cd "$module" && find . -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) -print0 \
        | sort -z | xargs -0 sha256sum)
} | sha256sum | cut -c1-16)
out="$cache/$key/$name"

if [ -x "$out" ]; then
    ln -sfn "$out" "$bin/$name.tmp" && mv -T "$bin/$name.tmp" "$bin/$name"
    say "$name is built already ($out)"
    exit 0
fi

tmp=$(mktemp -d "$cache/.building-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log="$cache/build-$key.log"
say "building $name from $module ($package); log: $log"
started=$(date +%s)
if ! (cd "$module" && GOFLAGS=-mod=readonly go build -trimpath "${flags[@]+"${flags[@]}"}" -o "$tmp/$name" "$package") >"$log" 2>&1; then
    reason=$(grep -m1 -E 'dial tcp|proxy|no required module|missing go.sum entry|cannot find|requires go|error' "$log" || tail -n1 "$log")
    die "building $name failed: $reason (full log: $log; a module download error means the Go module proxy is unreachable: check GOPROXY and the network)"
fi
mkdir -p "$cache/$key"
mv "$tmp/$name" "$out"
ln -sfn "$out" "$bin/$name.tmp" && mv -T "$bin/$name.tmp" "$bin/$name"
say "built $name in $(( $(date +%s) - started )) s ($out)"
