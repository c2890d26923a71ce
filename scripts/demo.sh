#!/usr/bin/env bash
# The main job on a built-in default: builds scdl-fs and converts the bundled example
# (tests/fixtures/h5ad/csr_f32.h5ad, 40 cells x 30 genes) into an SCDL archive, then describes it.
#
#   scripts/demo.sh [INPUT.h5ad|DIR] [OUTPUT]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/system-deps.sh"
command -v cargo >/dev/null 2>&1 || { echo "demo: install a Rust toolchain (https://rustup.rs) first" >&2; exit 1; }
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
INPUT="${1:-$ROOT/tests/fixtures/h5ad/csr_f32.h5ad}"
OUTPUT="${2:-$(mktemp -d)/archive}"
"$ROOT/target/release/scdl-fs" convert "$INPUT" "$OUTPUT"
"$ROOT/target/release/scdl-fs" info "$OUTPUT"
