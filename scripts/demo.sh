#!/usr/bin/env bash
# The demo: installs what is missing, builds Keel, starts a private containerd
# (its own root, state, socket and config under $DEMO_DIR; the system's
# containerd, if any, is never touched), and runs containers through Keel.
# Everything it starts is stopped on exit.
#   KEEL_CONTAINERD=2 scripts/demo.sh   uses containerd 2.x instead of 1.6.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh >/dev/null
cargo build --release --quiet
rootfs=$(bash scripts/make-rootfs.sh)

DEMO_DIR=$(mktemp -d /tmp/keel-demo.XXXXXX)
if [ "${KEEL_CONTAINERD:-1}" = 2 ]; then
    bin=/var/lib/keel-dev/containerd2/usr/bin; version=3
else
    bin=/usr/bin; version=2
fi
mkdir -p "$DEMO_DIR/bin"
ln -s "$PWD/target/x86_64-unknown-linux-gnu/release/containerd-shim-keel-v1" "$DEMO_DIR/bin/"
cat >"$DEMO_DIR/config.toml" <<TOML
version = $version
root = "$DEMO_DIR/root"
state = "$DEMO_DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]
[grpc]
  address = "$DEMO_DIR/containerd.sock"
TOML
PATH="$DEMO_DIR/bin:$PATH" "$bin/containerd" --config "$DEMO_DIR/config.toml" >"$DEMO_DIR/containerd.log" 2>&1 &
cpid=$!
ctr() { "$bin/ctr" --address "$DEMO_DIR/containerd.sock" "$@"; }
cleanup() {
    set +x
    ctr task kill -s KILL demo-sleeper >/dev/null 2>&1 || true
    sleep 0.3
    ctr task delete demo-sleeper >/dev/null 2>&1 || true
    ctr container delete demo-sleeper >/dev/null 2>&1 || true
    kill "$cpid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
    umount -R "$DEMO_DIR/root" 2>/dev/null || true
    rm -rf "$DEMO_DIR"
}
trap cleanup EXIT
for _ in $(seq 50); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done

echo "== containerd $("$bin/containerd" --version | awk '{print $3}'), runtime io.containerd.keel.v1"
set -x
ctr run --runtime io.containerd.keel.v1 --rm --rootfs "$rootfs" demo-hello \
    /bin/sh -c 'echo "hello from a container run by Keel (pid $$ in its own namespace)"; exit 3' || echo "exit code: $?"
echo abc | ctr run --runtime io.containerd.keel.v1 --rm --rootfs "$rootfs" demo-stdin /bin/head -n 1
ctr run -d --runtime io.containerd.keel.v1 --rootfs "$rootfs" demo-sleeper /bin/sleep 1000
ctr task exec --exec-id demo-exec demo-sleeper /bin/sh -c 'echo "exec inside: $(hostname)"'
ctr task ps demo-sleeper
ctr task ls
