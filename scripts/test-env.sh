#!/usr/bin/env bash
# Make the Python environment scdl-fs's tests need (idempotent; fast when already done).
#
#   scripts/test-env.sh            -> last line of stdout: path of the venv's python; everything else on stderr
#
# What it sets up:
#   system packages (Debian): libhdf5-dev pkg-config fuse3, openssh-server openssh-client sshfs (the shared-storage
#         test runs a loopback sshd), + python3-venv if `python3 -m venv` fails
#   venv  ${SCDL_FS_TEST_VENV:-$HOME/.cache/scdl-fs/test-venv}   pinned anndata/h5py/numpy/scipy/pandas/pyarrow,
#         pytest, safetensors (the batch files), and the small runtime deps of bionemo-scdl 0.1.3
#   <venv>/bionemo-0.0.5, <venv>/bionemo-0.1.3   each bionemo-scdl installed with --no-deps --target, so the two
#         are never importable together: put ONE of them (and tests/oracle/torch_stub) first on sys.path.
# A stamp file records the wanted spec; when it matches, nothing is installed again.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SCDL_FS_TEST_VENV:-$HOME/.cache/scdl-fs/test-venv}"
BASE_PYTHON="${SCDL_FS_TEST_PYTHON:-python3}"
STUB="$ROOT/tests/oracle/torch_stub"

PKGS=(anndata==0.12.19 h5py==3.16.0 numpy==2.4.6 scipy==1.17.1 pandas==2.3.3 pyarrow==26.0.1 pytest
      pydantic==2.14.3 email-validator==2.4.0 tqdm==4.70.1 pooch==1.9.0 psutil==7.2.2 PyYAML==6.0.3 platformdirs==4.14.7
      safetensors==0.8.0)
BIONEMO_VERSIONS=(0.0.5 0.1.3)
SYS_PKGS=(libhdf5-dev pkg-config fuse3 openssh-server openssh-client sshfs)

log() { echo "test-env: $*" >&2; }

# ---------------------------------------------------------------------------------------------- system packages
missing=()
if command -v dpkg >/dev/null 2>&1; then
  for p in "${SYS_PKGS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [[ ! -x "$VENV/bin/python" ]]; then
    probe="$(mktemp -d)"
    if ! "$BASE_PYTHON" -m venv "$probe/v" >/dev/null 2>&1; then
      missing+=(python3-venv)
    fi
    rm -rf "$probe"
  fi
else
  log "no dpkg here: not checking system packages (${SYS_PKGS[*]})"
fi
if ((${#missing[@]})); then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  else
    log "missing system packages; run:"
    echo "sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# ---------------------------------------------------------------------------------------------- venv
stub_hash="$(cd "$STUB" && find . -type f -name '*.py' | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)"
want="scdl-fs-test-env v1|$("$BASE_PYTHON" -c 'import sys; print(sys.version.split()[0])')|${PKGS[*]}|bionemo-scdl ${BIONEMO_VERSIONS[*]}|stub $stub_hash"
stamp="$VENV/.scdl-fs-test-env"

have_all() {
  [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$VENV/bin/python" ]] || return 1
  local v
  for v in "${BIONEMO_VERSIONS[@]}"; do [[ -d "$VENV/bionemo-$v/bionemo/scdl" ]] || return 1; done
}
if have_all; then
  log "up to date ($VENV)"
  echo "$VENV/bin/python"
  exit 0
fi

t0=$(date +%s)
log "setting up $VENV"
rm -f "$stamp"
mkdir -p "$(dirname "$VENV")"
[[ -x "$VENV/bin/python" ]] || "$BASE_PYTHON" -m venv "$VENV" >&2
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$PY" -m pip install -q "${PKGS[@]}" >&2

# The venv itself must hold neither bionemo nor a real torch: each would shadow or mix with the per-version dirs.
if "$PY" -c 'import importlib.util as u, sys; sys.exit(0 if (u.find_spec("torch") or u.find_spec("bionemo")) else 1)'; then
  log "removing torch / bionemo-scdl from the venv itself"
  "$PY" -m pip uninstall -y -q torch bionemo-scdl >&2 || true
fi

for v in "${BIONEMO_VERSIONS[@]}"; do
  rm -rf "$VENV/bionemo-$v"
  "$PY" -m pip install -q --no-deps --no-compile --target "$VENV/bionemo-$v" "bionemo-scdl==$v" >&2
done

# ---------------------------------------------------------------------------------------------- verify
for v in "${BIONEMO_VERSIONS[@]}"; do
  PYTHONDONTWRITEBYTECODE=1 "$PY" - "$VENV/bionemo-$v" "$STUB" "$v" >&2 <<'EOF'
import importlib.metadata as md
import sys

target, stub, want = sys.argv[1:4]
sys.path[:0] = [target, stub]
import torch

assert getattr(torch, "SCDL_FS_TORCH_STUB", False), f"not the stub: {torch.__file__}"
from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset  # noqa: F401
import bionemo.scdl

assert bionemo.scdl.__path__[0].startswith(target), bionemo.scdl.__path__
got = md.version("bionemo-scdl")
assert got == want, f"wanted bionemo-scdl {want}, got {got}"
print(f"test-env: bionemo-scdl {got} imports SingleCellMemMapDataset from {target}")
EOF
done

echo "$want" >"$stamp"
log "done in $(($(date +%s) - t0)) s"
echo "$PY"
