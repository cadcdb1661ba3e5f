#!/usr/bin/env bash
# Builds a working CRIU into $KEEL_PREFIX/criu/bin/criu, idempotently, and
# prints its path on the last line of stdout:
#     criu=$(bash scripts/install-criu.sh | tail -1)
#
# Why a build: bookworm's criu 3.17 fails `criu check` on newer kernels (it does
# not know the [vvar_vclock] area) and sid's binary package needs glibc 2.38.
# So this takes the upstream tarball of Debian sid's *source* package (fetched
# through a private apt configuration that never touches /etc/apt or the
# system's package lists), builds only the binary against bookworm's libraries
# and checks it with `criu check`. See /work/shared/criu.md.
#
# The binary is built with NETWORK_LOCK_DEFAULT=NETWORK_LOCK_NFTABLES (as
# Fedora's package is): CRIU's stock default locks a container's network with
# the external iptables-restore program, which bookworm does not install, and
# runc 1.1 has no flag to choose the method, so `runc checkpoint` of a
# container with its own network namespace would fail with "Locking network
# failed". The nftables method runs in-process through libnftables.
#
# Run as root. Non-interactive. All chatter goes to stderr.
set -euo pipefail

KEEL_PREFIX=${KEEL_PREFIX:-/var/lib/keel-dev}
export DEBIAN_FRONTEND=noninteractive
exec </dev/null

criu_bin="$KEEL_PREFIX/criu/bin/criu"
# Records how the installed binary was built; a binary built differently
# (e.g. by an older version of this script) is rebuilt.
build_flags=(NETWORK_LOCK_DEFAULT=NETWORK_LOCK_NFTABLES)
stamp="$KEEL_PREFIX/criu/build-flags"

log() { echo "install-criu: $*" >&2; }
die() { echo "install-criu: ERROR: $*" >&2; exit 1; }

# --- 0. Already there and working? -------------------------------------------
if [ -x "$criu_bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${build_flags[*]}" ] &&
   "$criu_bin" check >/dev/null 2>&1; then
    log "$("$criu_bin" --version | tr '\n' ' ')already installed, 'criu check' passes"
    echo "$criu_bin"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root (criu check and apt-get need it)"

# --- 1. Build dependencies from bookworm ----------------------------------------
deps=(gcc make pkg-config xz-utils
      libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler python3-protobuf
      libnl-3-dev libnl-route-3-dev libnet1-dev libcap-dev libbsd-dev libnftables-dev
      libgnutls28-dev uuid-dev)
need=()
for p in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    mkdir -p "$KEEL_PREFIX"
    apt_log="$KEEL_PREFIX/install-criu-apt.log"
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$apt_log" 2>&1 || {
        tail -30 "$apt_log" >&2
        die "apt-get install of the build dependencies failed; full log: $apt_log"
    }
else
    log "build dependencies already installed"
fi

# --- 2. CRIU's source from Debian sid, through a private apt configuration ------
apt_dir="$KEEL_PREFIX/apt-sid-src"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/src"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || die "$keyring missing (package debian-archive-keyring)"
echo "deb-src [signed-by=$keyring] http://deb.debian.org/debian sid main" >"$apt_dir/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=-"
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
          -o "Dir::State::Status=/dev/null" -o "APT::Get::List-Cleanup=0"
          -o "APT::Sandbox::User=root")

find_orig() {
    ls -1 "$apt_dir"/src/criu_*.orig.tar.* 2>/dev/null | grep -v '\.asc$' | sort -V | tail -1
}

orig=$(find_orig || true)
if [ -z "$orig" ]; then
    log "fetching CRIU source package from Debian sid into $apt_dir/src"
    apt-get "${apt_opts[@]}" update -qq >&2 || die "apt-get update of the private sid deb-src list failed"
    # The .debian.tar.xz has been seen to answer 404, making apt-get exit
    # non-zero even though the upstream tarball arrived: tolerate that.
    (cd "$apt_dir/src" && apt-get "${apt_opts[@]}" source --download-only criu >&2) ||
        log "apt-get source exited non-zero (tolerated: only the upstream tarball is needed)"
    orig=$(find_orig || true)
    [ -n "$orig" ] || die "no criu_*.orig.tar.* in $apt_dir/src after apt-get source"
fi
log "upstream source: $orig"

# --- 3. Build only the binary ------------------------------------------------------
build="$KEEL_PREFIX/criu-build"
rm -rf "$build" && mkdir -p "$build"
tar -xf "$orig" -C "$build" --strip-components=1 || {
    rm -f "$orig"   # a truncated download: fetch it again next time
    die "cannot unpack $orig (removed; run again to re-fetch it)"
}
log "building (make -j2 ${build_flags[*]} criu) in $build"
start=$(date +%s)
make -C "$build" -j2 "${build_flags[@]}" criu >"$build/build.log" 2>&1 || {
    tail -40 "$build/build.log" >&2
    die "CRIU build failed; full log: $build/build.log"
}
log "built in $(( $(date +%s) - start ))s"
[ -x "$build/criu/criu" ] || die "build finished but $build/criu/criu is missing"

mkdir -p "$(dirname "$criu_bin")"
install -m 0755 "$build/criu/criu" "$criu_bin.new"
mv -f "$criu_bin.new" "$criu_bin"
echo "${build_flags[*]}" >"$stamp"
rm -rf "$build"

# --- 4. Check it -------------------------------------------------------------------
"$criu_bin" --version >&2
if ! "$criu_bin" check >&2; then
    die "'$criu_bin check' failed on this kernel ($(uname -r)); the binary is left in place for inspection"
fi
log "'criu check' passes"
echo "$criu_bin"
