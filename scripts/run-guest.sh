#!/usr/bin/env bash
# Runs a command inside the cgroup v2 guest (scripts/make-guest.sh) under
# qemu's TCG emulation and returns its output (the guest's serial console, on
# stdout) and its exit status.
#
#   scripts/run-guest.sh [--add SRC[:DEST]]... [--mem MIB] [--timeout SECS] -- CMD [ARG...]
#
#   --add SRC[:DEST]  copy SRC into the guest at DEST (default /payload/<name of SRC>);
#                     a directory is copied whole
#   --mem MIB         guest memory (4096)
#   --timeout SECS    kill the guest after SECS (600): exit 124
#   --systemd         boot with systemd as PID 1 (the command runs in a
#                     one-shot service; only the unified hierarchy, as systemd mounts it)
#
# CMD runs as root in /payload, with the guest's containerd binaries at the
# host's paths. Exit: CMD's status; 124 on timeout; 125 if the guest did not
# report one (a panic, a crash of its init).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mem=4096 timeout=600 adds=() append=""
while [ $# -gt 0 ]; do
    case "$1" in
        --add) adds+=("$2"); shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --systemd) append=" keel.systemd systemd.log_level=warning"; shift ;;
        --) shift; break ;;
        *) echo "run-guest: unknown argument $1 (the command comes after --)" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "run-guest: no command (after --)" >&2; exit 2; }
g=$(bash "$here/make-guest.sh")
kernel=$(ls "$g"/kernel/boot/vmlinuz-* | head -1)

work=$(mktemp -d /tmp/keel-guest.XXXXXX)
qpid=""
cleanup() {
    [ -n "$qpid" ] && kill -9 "$qpid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/tree/payload"
for a in "${adds[@]}"; do
    src=${a%%:*} dest=${a#*:}
    [ "$dest" = "$a" ] && dest="/payload/$(basename "$src")"
    mkdir -p "$work/tree$(dirname "$dest")"
    cp -a "$(realpath "$src")" "$work/tree$dest"
done
{
    echo '#!/bin/sh'
    printf 'exec'
    printf ' %q' "$@"
    echo
} >"$work/tree/payload/run"
chmod 0755 "$work/tree/payload/run"
(cd "$work/tree" && find . -print0 | cpio --null -o -H newc --quiet) >"$work/payload.cpio"
cat "$g/base.cpio" "$work/payload.cpio" >"$work/initrd"

: >"$work/console" # before tail follows it
# KVM guests do not run on this kind of VM (they hang or abort on an MSR):
# plain emulation, two vCPUs.
qemu-system-x86_64 -accel tcg,thread=multi -smp 2 -m "$mem" -nographic -no-reboot -nodefaults \
    -serial stdio -kernel "$kernel" -initrd "$work/initrd" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init$append" </dev/null >"$work/console" 2>&1 &
qpid=$!
# The console, live, for whoever runs this.
tail -n +1 -f "$work/console" --pid "$qpid" &
tailpid=$!
deadline=$((SECONDS + timeout))
while kill -0 "$qpid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "run-guest: no end within ${timeout}s: killed" >&2
        kill -9 "$qpid" 2>/dev/null || true
        wait "$tailpid" 2>/dev/null || true
        exit 124
    fi
    sleep 0.2
done
wait "$tailpid" 2>/dev/null || true
qpid=""
code=$(tr -d '\r' <"$work/console" | awk '/^KEEL-GUEST-EXIT [0-9]+$/{c=$2} END{print c}')
[ -n "$code" ] || { echo "run-guest: the guest reported no exit status" >&2; exit 125; }
exit "$code"
