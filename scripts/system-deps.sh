#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages scdl-fs needs to build and run (libhdf5 for reading .h5ad,
# pkg-config to find it, fuse3 for fusermount3) plus any extra packages named as arguments.
# As root it runs apt-get; otherwise it prints the exact install line and fails.
set -euo pipefail
PKGS=(libhdf5-dev pkg-config fuse3 "$@")
command -v dpkg >/dev/null 2>&1 || { echo "system-deps: no dpkg: install ${PKGS[*]} yourself" >&2; exit 0; }
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
((${#missing[@]})) || exit 0
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
  echo "system-deps: missing packages; run:" >&2
  echo "sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
