#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing (protoc, Tansu), then checks
# formatting, lints, and runs every test, including those against a real broker process.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export TANSU_BIN=${TANSU_BIN:-$(scripts/tansu.sh install)}
export ADCLICK_REQUIRE_TANSU=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
