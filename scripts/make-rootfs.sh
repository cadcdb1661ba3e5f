#!/usr/bin/env bash
# Prints the path of a busybox root filesystem built from busybox-static
# (made once, atomically, so parallel callers are safe).
set -euo pipefail
dest=${KEEL_ROOTFS:-/var/lib/keel-dev/rootfs}
if [ ! -x "$dest/bin/busybox" ]; then
    [ -x /bin/busybox ] || { echo "busybox-static is missing: run scripts/install-deps.sh" >&2; exit 1; }
    tmp=$(mktemp -d "$(dirname "$dest")/rootfs.tmp.XXXXXX")
    mkdir -p "$tmp"/{bin,proc,sys,dev,tmp,etc,root}
    cp /bin/busybox "$tmp/bin/busybox"
    for applet in $("$tmp/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$tmp/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$tmp/etc/passwd"
    echo 'root:x:0:' >"$tmp/etc/group"
    chmod 1777 "$tmp/tmp"
    mv -T "$tmp" "$dest" 2>/dev/null || rm -rf "$tmp"
fi
echo "$dest"
