#!/usr/bin/env bash
# Builds the cgroup v2 guest (issue 17) under /var/lib/keel-dev/guest, from
# Debian packages and this machine's own binaries, once (idempotent: a stamp
# records what it was built from; a change rebuilds it).
#
#   kernel/boot/vmlinuz-*   Debian's linux-image-cloud-amd64 (every cgroup v2
#                           controller; qemu TCG boots it in seconds)
#   base.cpio               an uncompressed initramfs: busybox, containerd 1.6
#                           (containerd, ctr, containerd-shim-runc-v2), runc,
#                           crun, the containerd 2.x prefix, the busybox rootfs,
#                           each binary with the shared libraries ldd names,
#                           GNU tar (the CRI tests build images with it),
#                           systemd (PID 1 when the kernel command line says
#                           keel.systemd) with systemctl and its unit files,
#                           and /init
#
# /init copies the initramfs into a tmpfs and switch_roots there (runc's
# pivot_root fails on an initramfs root), mounts only the unified cgroup v2
# hierarchy with every controller enabled for its children, then runs
# /payload/run (added by scripts/run-guest.sh as a second cpio archive) and
# powers off, printing "KEEL-GUEST-EXIT <code>" on the serial console.
#
# Prints the guest directory. Needs root (apt, dpkg -x).
set -euo pipefail
prefix=${KEEL_PREFIX:-/var/lib/keel-dev}
g="$prefix/guest"
mkdir -p "$g/debs"

need_pkg() {
    dpkg -s "$1" >/dev/null 2>&1 && return 0
    echo "make-guest: apt-get install $1" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >&2
}
need_pkg qemu-system-x86
need_pkg cpio
need_pkg busybox-static
need_pkg systemd

# The kernel: the package linux-image-cloud-amd64 depends on, unpacked.
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$kpkg" ] || { echo "make-guest: apt knows no linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
if ! ls "$g/kernel/boot/vmlinuz-"*cloud* >/dev/null 2>&1 || [ "$(cat "$g/kernel.pkg" 2>/dev/null)" != "$kpkg" ]; then
    echo "make-guest: fetching $kpkg" >&2
    (cd "$g/debs" && rm -f "${kpkg}"_*.deb && apt-get download "$kpkg" >&2)
    rm -rf "$g/kernel"
    dpkg -x "$g/debs/${kpkg}"_*.deb "$g/kernel"
    echo "$kpkg" >"$g/kernel.pkg"
fi

# What goes in: a change to any of it rebuilds the archive.
c2="$prefix/containerd2/usr/bin"
bins=(/usr/bin/containerd /usr/bin/ctr /usr/bin/containerd-shim-runc-v2 /usr/sbin/runc /usr/bin/crun
      /lib/systemd/systemd /bin/systemctl /bin/tar)
for b in "$c2"/*; do bins+=("$b"); done
for b in "${bins[@]}"; do [ -x "$b" ] || { echo "make-guest: $b is missing: run scripts/install-deps.sh" >&2; exit 1; }; done
rootfs=$(bash "$(dirname "$0")/make-rootfs.sh")
init_src="$(dirname "$0")/guest-init.sh"
stamp=$( (sha256sum "$0" "$init_src" /bin/busybox "${bins[@]}"; find "$rootfs" -type f | sort | xargs sha256sum) | awk "{print \$1}" | sha256sum | cut -c1-16)
if [ -s "$g/base.cpio" ] && [ "$(cat "$g/base.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$g"
    exit 0
fi

echo "make-guest: building the initramfs" >&2
tree="$g/tree"
rm -rf "$tree"
mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,proc,sys,dev,run,tmp,etc,var/lib,root,newroot,payload}
cp /bin/busybox "$tree/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ -e "$tree/bin/$applet" ] || ln -s busybox "$tree/bin/$applet"
done
copy_with_libs() {
    install -D -m 0755 "$1" "$tree$1"
    # ldd prints "name => /path (addr)" and "/lib64/ld-linux... (addr)".
    ldd "$1" 2>/dev/null | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}' | while read -r lib; do
        [ -e "$tree$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$tree$lib"
    done
}
for b in "${bins[@]}"; do copy_with_libs "$b"; done
mkdir -p "$tree$prefix"
cp -a "$rootfs" "$tree$rootfs"
cp -a "$prefix/containerd2" "$tree$prefix/containerd2"
install -m 0755 "$init_src" "$tree/init"
# overlayfs is a module of the cloud kernel (the CRI tests' snapshotter).
install -D -m 0644 "$(ls "$g"/kernel/lib/modules/*/kernel/fs/overlayfs/overlay.ko | head -1)" "$tree/lib/keel-modules/overlay.ko"
# systemd as PID 1 (keel.systemd): its units, and one of ours that runs the
# payload and nothing else (no default dependencies: no sysinit, no getty).
mkdir -p "$tree/lib/systemd" "$tree/etc/systemd/system" "$tree/usr/lib"
cp -a /lib/systemd/system "$tree/lib/systemd/system"
cp -L /usr/lib/os-release "$tree/usr/lib/os-release"
ln -s ../usr/lib/os-release "$tree/etc/os-release"
: >"$tree/etc/machine-id"
cat >"$tree/etc/systemd/system/keel-payload.service" <<'UNIT'
[Unit]
Description=Keel guest payload
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart=/init payload
TimeoutStartSec=infinity
StandardInput=null
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
UNIT
echo "keel-guest" >"$tree/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$tree/etc/passwd"
printf 'root:x:0:\n' >"$tree/etc/group"
# CRI copies these into a host-network sandbox.
printf '127.0.0.1 localhost keel-guest\n::1 localhost\n' >"$tree/etc/hosts"
: >"$tree/etc/resolv.conf"
(cd "$tree" && find . -print0 | cpio --null -o -H newc --quiet) >"$g/base.cpio.new"
mv "$g/base.cpio.new" "$g/base.cpio"
rm -rf "$tree"
echo "$stamp" >"$g/base.stamp"
echo "make-guest: $(du -h "$g/base.cpio" | cut -f1) initramfs" >&2
echo "$g"
