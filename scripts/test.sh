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
# The Prometheus alert rules: syntax, and their unit tests (each alert fires on its series).
if command -v promtool >/dev/null 2>&1; then
  promtool check rules docs/alerts/adclick-rules.yml
  (cd docs/alerts && promtool test rules adclick-rules.test.yml)
fi
cargo test --workspace
