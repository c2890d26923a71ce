#!/usr/bin/env bash
# The venv of annbatch 0.3.1 for bench/batches.sh, kept apart from the test environment (it
# needs Python >= 3.12 and pulls its own anndata, zarr and dask): bench-data/annbatch-venv.
# Uses PYTHON312 if set, else python3.12 on PATH, else pyenv's 3.12. Prints the venv's python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/bench-data/annbatch-venv"
if [[ ! -x "$VENV/bin/python" ]]; then
  PY312="${PYTHON312:-$(command -v python3.12 2>/dev/null || true)}"
  if ! "$PY312" --version >/dev/null 2>&1; then PY312="$(ls -d "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1)"; fi
  [[ -n "$PY312" ]] || { echo "annbatch-env: no Python 3.12 (set PYTHON312)" >&2; exit 2; }
  "$PY312" -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q annbatch==0.3.1 >&2
fi
echo "$VENV/bin/python"
