#!/usr/bin/env bash
# Checks the systemd units and examples in systemd/ with `systemd-analyze verify`, without a
# running systemd and without installing anything outside a temporary directory:
#
#   - scdl-fs@.service, as the instances scdl-fs@mnt-scdl.service and one whose path needs
#     escaping, from a copy whose ExecStart points at a stub executable (verify checks that the
#     binary exists; /usr/local/bin/scdl-fs need not be installed here);
#   - mnt-scdl.mount as it is;
#   - fstab.example, turned into a mount unit by systemd-fstab-generator, verified, and compared
#     with mnt-scdl.mount (same What, Where, Type, Options);
#   - scdl-fs.env.example: KEY=VALUE lines only, SCDL_FS_STORE set.
#
# As root it installs the Debian package `systemd` (which provides systemd-analyze) when missing;
# otherwise it prints the install line and fails. Exits non-zero with the verifier's message on
# any error or warning about these units.
#
#   scripts/verify-units.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UNITS="$ROOT/systemd"
TEMPLATE="$UNITS/scdl-fs@.service"
MOUNT="$UNITS/mnt-scdl.mount"
FSTAB="$UNITS/fstab.example"
ENVFILE="$UNITS/scdl-fs.env.example"
BINARY=/usr/local/bin/scdl-fs

fail() { echo "verify-units: $*" >&2; exit 1; }

for f in "$TEMPLATE" "$MOUNT" "$FSTAB" "$ENVFILE"; do
  [[ -f "$f" ]] || fail "missing $f"
done

if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "verify-units: installing systemd (for systemd-analyze)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends systemd >&2
  else
    fail "systemd-analyze not found; run: sudo apt-get install -y systemd"
  fi
fi
command -v systemd-analyze >/dev/null 2>&1 || fail "systemd-analyze still not found"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/verify-units.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/bin" "$TMP/units" "$TMP/gen"

# Options this systemd-analyze understands (older releases lack some).
VERIFY=(systemd-analyze verify --man=no)
help="$(systemd-analyze --help 2>&1 || true)"
[[ "$help" == *--generators* ]] && VERIFY+=(--generators=no)
[[ "$help" == *--recursive-errors* ]] && VERIFY+=(--recursive-errors=no)

# Runs the verifier on unit files; any error or warning that names one of them fails.
verify() {
  local out rc=0 names=() u
  out="$(cd "$TMP/units" && "${VERIFY[@]}" "$@" 2>&1)" || rc=$?
  for u in "$@"; do names+=("$(basename "$u")"); done
  local ours
  ours="$(printf '%s\n' "$out" | grep -F -e "$TMP" "${names[@]/#/-e}" || true)"
  if ((rc != 0)) || [[ -n "$ours" ]]; then
    printf '%s\n' "$out" >&2
    fail "systemd-analyze verify failed on: ${names[*]}"
  fi
  [[ -z "$out" ]] || printf 'verify-units: (not about our units) %s\n' "$out" >&2
  echo "ok: ${*}"
}

# The template, with its binary replaced by a stub that exists.
printf '#!/bin/sh\nexit 0\n' > "$TMP/bin/scdl-fs"
chmod +x "$TMP/bin/scdl-fs"
grep -q "^ExecStart=$BINARY " "$TEMPLATE" || fail "$TEMPLATE: ExecStart does not run $BINARY"
sed "s#$BINARY#$TMP/bin/scdl-fs#g" "$TEMPLATE" > "$TMP/units/scdl-fs@.service"
instances=()
for mnt in /mnt/scdl /srv/scdl-data/cells; do
  inst="$(systemd-escape --path "$mnt")"
  [[ "$(systemd-escape --unescape --path "$inst")" == "$mnt" ]] || fail "escaping $mnt"
  ln -s "scdl-fs@.service" "$TMP/units/scdl-fs@$inst.service"
  instances+=("scdl-fs@$inst.service")
done
verify "${instances[@]}"

# The mount unit, as it is (its name must match Where=; verify checks that).
cp "$MOUNT" "$TMP/units/"
verify "$(basename "$MOUNT")"

# The fstab line: what systemd makes of it must be a valid unit equal to mnt-scdl.mount.
GENERATOR=""
for g in /usr/lib/systemd/system-generators/systemd-fstab-generator \
         /lib/systemd/system-generators/systemd-fstab-generator; do
  [[ -x "$g" ]] && { GENERATOR="$g"; break; }
done
if [[ -n "$GENERATOR" ]]; then
  SYSTEMD_FSTAB="$FSTAB" SYSTEMD_PROC_CMDLINE="" SYSTEMD_LOG_LEVEL=warning \
    "$GENERATOR" "$TMP/gen" "$TMP/gen" "$TMP/gen" || fail "systemd-fstab-generator failed on $FSTAB"
  generated="$TMP/gen/$(basename "$MOUNT")"
  [[ -f "$generated" ]] || fail "$FSTAB: systemd-fstab-generator made no $(basename "$MOUNT")"
  keys() { grep -E '^(What|Where|Type|Options)=' "$1" | sort; }
  if ! diff <(keys "$MOUNT") <(keys "$generated") >&2; then
    fail "$FSTAB and $MOUNT describe different mounts (diff above: < unit, > fstab)"
  fi
  mkdir -p "$TMP/units/fstab"
  cp "$generated" "$TMP/units/fstab/"
  verify "fstab/$(basename "$MOUNT")"  # the unit generated from fstab.example
else
  echo "verify-units: no systemd-fstab-generator; $FSTAB not checked" >&2
fi

# The environment file example: comments, blank lines and KEY=VALUE only.
if bad="$(grep -nvE '^[[:space:]]*(#.*)?$|^[A-Za-z_][A-Za-z0-9_]*=' "$ENVFILE")"; then
  fail "$ENVFILE: not KEY=VALUE: $bad"
fi
grep -qE '^SCDL_FS_STORE=/' "$ENVFILE" || fail "$ENVFILE: no SCDL_FS_STORE=/..."
echo "ok: $(basename "$ENVFILE")"
echo "verify-units: all units verified"
