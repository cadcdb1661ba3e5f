#!/usr/bin/env bash
# Builds the Debian package: target/x86_64-unknown-linux-gnu/debian/keel_<version>-1_amd64.deb
# (cargo-deb is installed by scripts/install-deps.sh). Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# Built the way `cargo test --release` builds it: cargo unifies the
# dev-dependencies' features into a binary built for the tests, so a plain
# `cargo build` would package a binary the test suite never ran.
cargo test --release --no-run >&2
cargo deb --no-build --target x86_64-unknown-linux-gnu 2>/dev/null | tail -1
