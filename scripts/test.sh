#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs the unit tests and
# the integration tests (real containerd 1.6 and 2.x, real runc) through cargo,
# then the cgroup v2 suite inside a qemu guest (scripts/test-guest.sh).
# Each integration test starts and cleans up its own private containerd.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/install-deps.sh
# The field's habits (youki and rust-extensions run both in CI): one format,
# and no clippy warning in the shim, keel-containerd or the tests.
cargo fmt --all --check
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
bash scripts/make-rootfs.sh >/dev/null
# The Debian package that tests/package.rs inspects and installs.
bash scripts/package.sh >/dev/null
# CRIU for the real checkpoint/restore tests; without it they skip, loudly.
bash scripts/install-criu.sh >/dev/null || echo "test.sh: CRIU unavailable: checkpoint/restore tests will skip" >&2
# Two at a time: the machine has two cores, and every test drives real containers.
# --no-fail-fast: one failing suite must not hide the others' results.
rc=0
cargo test --release --no-fail-fast -- --test-threads "${KEEL_TEST_THREADS:-2}" "$@" || rc=$?
# The cgroup v2 suite, in the qemu guest (this host is cgroup v1 hybrid);
# KEEL_SKIP_VM=1 skips it, loudly. Not filtered by "$@".
bash scripts/test-guest.sh || rc=$?
exit "$rc"
