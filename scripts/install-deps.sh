#!/usr/bin/env bash
# Installs everything Keel's demo, tests and benchmark need on a fresh Debian
# bookworm machine, idempotently:
#   - bookworm packages: containerd 1.6, runc, crun, busybox-static, tools,
#     protobuf-compiler (protoc, which k8s-cri's build script runs for the tests);
#   - cargo-deb, for the Debian package;
#   - containerd 2.x from Debian sid, unpacked (not installed) into
#     $KEEL_PREFIX/containerd2 with `dpkg -x`, so it never replaces the system's.
#   - the cgroup v2 guest of the test command (scripts/make-guest.sh: a
#     kernel and an initramfs under $KEEL_PREFIX/guest), unless KEEL_SKIP_VM=1.
# Nothing here starts a daemon.
set -euo pipefail

KEEL_PREFIX=${KEEL_PREFIX:-/var/lib/keel-dev}
export DEBIAN_FRONTEND=noninteractive

need_pkgs=()
for p in containerd runc crun busybox-static procps iproute2 util-linux psmisc protobuf-compiler; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${need_pkgs[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# containerd 2.x: a private apt state so sid never leaks into the system's lists.
c2="$KEEL_PREFIX/containerd2"
if [ ! -x "$c2/usr/bin/containerd" ]; then
    echo "install-deps: fetching containerd 2.x from Debian sid into $c2"
    apt_dir="$KEEL_PREFIX/apt-sid"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/debs"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    echo "deb [signed-by=$keyring] http://deb.debian.org/debian sid main" >"$apt_dir/sources.list"
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=-"
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives"
              -o "Dir::State::Status=/dev/null" -o "APT::Get::List-Cleanup=0")
    apt-get "${apt_opts[@]}" update -qq
    (cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" download containerd)
    rm -rf "$c2.tmp" && mkdir -p "$c2.tmp"
    dpkg -x "$apt_dir"/debs/containerd_*.deb "$c2.tmp"
    rm -rf "$c2" && mv "$c2.tmp" "$c2"
fi
# cargo-deb makes the Debian package (scripts/package.sh).
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo deb --version >/dev/null 2>&1; then
    echo "install-deps: cargo install cargo-deb"
    cargo install --locked --quiet cargo-deb
fi
"$c2/usr/bin/containerd" --version
containerd --version
runc --version | head -1
crun --version | head -1
if [ "${KEEL_SKIP_VM:-}" != 1 ]; then
    bash "$(dirname "$0")/make-guest.sh" >/dev/null
fi
