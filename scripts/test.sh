#!/usr/bin/env bash
# The whole test suite: installs what it needs (system packages via apt-get when root, the Python
# oracle environment in a venv), then runs every Rust test (unit, integration, the real binary
# against the Python oracle and bionemo-scdl, and the mounted filesystem).
#
#   scripts/test.sh [cargo test args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo not found: install a Rust toolchain (https://rustup.rs) and re-run" >&2
  exit 1
fi

# System packages and the Python environment (numpy, scipy, anndata, bionemo-scdl 0.0.5 + 0.1.3).
SCDL_FS_PYTHON="$(bash scripts/test-env.sh | tail -n 1)"
export SCDL_FS_PYTHON
echo "test.sh: Python oracle environment: $SCDL_FS_PYTHON" >&2

# Mounts use FUSE over io_uring where the kernel has it (Linux >= 6.14): offer it (root only; it
# only offers the feature, each mount opts in), then run the mount tests again over /dev/fuse.
URING_PARAM=/sys/module/fuse/parameters/enable_uring
if [[ -w "$URING_PARAM" ]]; then
  echo Y > "$URING_PARAM"
fi
cargo test --release --all-targets "$@"
if [[ $# -eq 0 && -e "$URING_PARAM" ]]; then
  echo "test.sh: the mount tests again, over /dev/fuse (--no-io-uring)" >&2
  SCDL_FS_NO_IO_URING=1 cargo test --release --test mount
fi

# The oracle's own tests: it must pass on a reference archive and catch each kind of corruption.
"$SCDL_FS_PYTHON" -m pytest -q tests/oracle
