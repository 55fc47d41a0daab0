#!/usr/bin/env bash
# Checks that release binaries run on the AMI that SmartScale deploys.
#
#   scripts/check-glibc.sh [--max-glibc X.Y] BINARY...
#
# The binaries are built on Debian 12 (glibc 2.36) and linked dynamically against glibc; no musl
# target is available on the build machines. They run on an AMI whose glibc is at least the highest
# GLIBC_x.y symbol version they need. SmartScale deploys Canonical's Ubuntu 24.04 LTS (glibc 2.39),
# so the default limit is 2.39; pass --max-glibc (or set SMARTSCALE_AMI_GLIBC) when you pin another
# AMI with smartscale:amiId (Debian 12: 2.36, Amazon Linux 2023: 2.34).
#
# For each binary it reports and checks:
#   - that it is an x86-64 ELF (the AMI is amd64);
#   - static binaries: nothing else to check;
#   - dynamic binaries: the highest GLIBC_x.y version required (readelf -V) <= the limit; shared
#     libraries it needs (NEEDED) beyond glibc, libgcc and libstdc++ are listed as a note, since
#     whether an image has them depends on its package set.
# Exit status: 0 if every binary passes, 1 if any fails, 2 on usage errors.
set -euo pipefail

max_glibc=${SMARTSCALE_AMI_GLIBC:-2.39}
# Libraries of glibc (libc6), libgcc-s1 and libstdc++6, on every Ubuntu 24.04 / Debian 12 image.
base_libs=(libc.so.6 libm.so.6 libdl.so.2 librt.so.1 libpthread.so.0 libutil.so.1 libgcc_s.so.1
  libstdc++.so.6 ld-linux-x86-64.so.2)

usage() {
  echo "usage: $0 [--max-glibc X.Y] BINARY..." >&2
  exit 2
}

bins=()
while (($# > 0)); do
  case $1 in
    --max-glibc)
      [[ $# -ge 2 ]] || usage
      max_glibc=$2
      shift 2
      ;;
    --max-glibc=*)
      max_glibc=${1#*=}
      shift
      ;;
    -h | --help) usage ;;
    -*) usage ;;
    *)
      bins+=("$1")
      shift
      ;;
  esac
done
((${#bins[@]} > 0)) || usage
[[ $max_glibc =~ ^[0-9]+\.[0-9]+$ ]] || {
  echo "error: --max-glibc must look like 2.39, got '${max_glibc}'" >&2
  exit 2
}
command -v readelf >/dev/null || {
  echo "error: readelf not found (Debian package binutils)" >&2
  exit 2
}

# version_le A B: true when version A <= version B.
version_le() {
  [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" == "$1" ]]
}

failures=0
for bin in "${bins[@]}"; do
  problems=()
  if [[ ! -f "$bin" ]]; then
    echo "FAIL  ${bin}: no such file"
    failures=$((failures + 1))
    continue
  fi
  if [[ "$(head -c 4 "$bin" | od -An -tx1 | tr -d ' \n')" != "7f454c46" ]]; then
    echo "FAIL  ${bin}: not an ELF file"
    failures=$((failures + 1))
    continue
  fi

  machine=$(readelf -h "$bin" | sed -n 's/^ *Machine: *//p')
  if [[ "$machine" != *"X86-64"* ]]; then
    problems+=("built for '${machine}', the AMI is x86-64")
  fi

  interp=$(readelf -l "$bin" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
  needed=$(readelf -d "$bin" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  if [[ -z "$interp" && -z "$needed" ]]; then
    if ((${#problems[@]} == 0)); then
      echo "ok    ${bin}: static ${machine} executable, no glibc requirement"
    else
      echo "FAIL  ${bin}: ${problems[*]}"
      failures=$((failures + 1))
    fi
    continue
  fi

  glibc=$(readelf -V --wide "$bin" | grep -oE 'Name: GLIBC_[0-9]+\.[0-9]+(\.[0-9]+)?' |
    sed 's/Name: GLIBC_//' | sort -uV | tail -n1 || true)
  glibcxx=$(readelf -V --wide "$bin" | grep -oE 'Name: GLIBCXX_[0-9.]+' |
    sed 's/Name: GLIBCXX_//' | sort -uV | tail -n1 || true)
  if [[ -n "$glibc" ]] && ! version_le "$glibc" "$max_glibc"; then
    problems+=("needs GLIBC_${glibc} > ${max_glibc}")
  fi
  missing=()
  while read -r lib; do
    [[ -z "$lib" ]] && continue
    found=false
    for base in "${base_libs[@]}"; do
      if [[ "$lib" == "$base" ]]; then
        found=true
        break
      fi
    done
    $found || missing+=("$lib")
  done <<<"$needed"
  note=""
  if ((${#missing[@]} > 0)); then
    note="note: also needs ${missing[*]}; make sure the AMI has them"
  fi

  summary="dynamic ${machine}, max GLIBC_${glibc:-none} (limit ${max_glibc}), needs $(echo "$needed" | tr '\n' ' ')"
  [[ -n "$glibcxx" ]] && summary+="(GLIBCXX_${glibcxx}) "
  if ((${#problems[@]} == 0)); then
    echo "ok    ${bin}: ${summary% }"
    [[ -z "$note" ]] || echo "      ${note}"
  else
    echo "FAIL  ${bin}: ${summary% }: $(
      IFS=';'
      echo "${problems[*]}"
    )"
    failures=$((failures + 1))
  fi
done

echo "$((${#bins[@]} - failures)) passed, ${failures} failed"
((failures == 0))
