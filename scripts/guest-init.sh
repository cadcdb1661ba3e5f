#!/bin/sh
# PID 1 of the cgroup v2 guest (scripts/make-guest.sh puts it at /init).
# Runs /payload/run with only the unified cgroup v2 hierarchy mounted, prints
# "KEEL-GUEST-EXIT <code>" on the console and powers the guest off.
#
# With `keel.systemd` on the kernel command line, systemd becomes PID 1
# after the switch_root instead (it mounts /proc, /sys, /dev, /run and the
# unified hierarchy itself) and starts only keel-payload.service, which runs
# this script as `guest-init.sh payload`.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

run_payload() {
    echo "keel-guest: kernel $(uname -r), cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
    code=127
    if [ -x /payload/run ]; then
        cd /payload && /payload/run </dev/null
        code=$?
    else
        echo "keel-guest: no /payload/run"
    fi
    sync
    echo "KEEL-GUEST-EXIT $code"
    poweroff -f
}

if [ "$1" = payload ]; then
    ip link set lo up 2>/dev/null || true
    run_payload
fi

if [ ! -e /.keel-switched ]; then
    # The initramfs root cannot be pivot_root'ed away from (runc needs to):
    # copy it into a tmpfs and make that the root.
    mount -t proc proc /proc
    mount -t tmpfs -o mode=0755 tmpfs /newroot
    for e in /*; do
        case "$e" in /newroot | /proc) continue ;; esac
        cp -a "$e" /newroot/
    done
    mkdir -p /newroot/proc /newroot/newroot
    touch /newroot/.keel-switched
    insmod /lib/keel-modules/overlay.ko 2>/dev/null || echo "keel-guest: no overlayfs module"
    systemd=
    grep -qw keel.systemd /proc/cmdline && systemd=1
    umount /proc
    if [ -n "$systemd" ]; then
        exec switch_root /newroot /lib/systemd/systemd --unit=keel-payload.service --log-target=console --show-status=no
    fi
    exec switch_root /newroot /init
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# Every controller for the children, as systemd sets it up on a v2 host.
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
done
hostname "$(cat /etc/hostname)"
ip link set lo up 2>/dev/null || true

run_payload
