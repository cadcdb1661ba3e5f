#!/usr/bin/env bash
# Builds a one-layer OCI image of the busybox root filesystem (the one
# scripts/make-rootfs.sh prints) as an OCI image-layout tar, ready for
# `ctr image import`, and prints the tar's path on the last line of stdout:
#     tar=$(bash scripts/make-image.sh | tail -1)
#
# The image is named keel.test/busybox:latest (index annotation
# io.containerd.image.name; org.opencontainers.image.ref.name is "latest"),
# for the host's platform, with PATH set and `sh` as its command. The layer is
# an uncompressed tar made deterministically (sorted, mtime 0, uid/gid 0), so
# the same rootfs always gives the same digests.
#
# Made once, atomically (built beside the target and renamed into place), so
# parallel callers are safe; KEEL_IMAGE_TAR overrides where it goes. Needs only
# python3's standard library. All chatter goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

rootfs=$(bash scripts/make-rootfs.sh | tail -1)
dest=${KEEL_IMAGE_TAR:-/var/lib/keel-dev/image/busybox-oci.tar}
if [ -s "$dest" ]; then
    echo "$dest"
    exit 0
fi
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp "$dest.tmp.XXXXXX")
trap 'rm -f "$tmp"' EXIT

case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    armv7l) arch=arm ;;
    *) arch=$(uname -m) ;;
esac

# /usr/bin/python3 first: a pyenv shim on PATH may not be usable by root.
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3) || { echo "make-image: python3 is missing" >&2; exit 1; }

"$py" - "$rootfs" "$tmp" "$arch" <<'PY'
import hashlib, io, json, os, sys, tarfile

rootfs, out, arch = sys.argv[1], sys.argv[2], sys.argv[3]

def layer_tar(root):
    """An uncompressed, deterministic tar of `root` (paths relative to it)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        entries = []
        for d, dirs, files in os.walk(root):
            dirs.sort()
            for n in sorted(dirs + files):
                entries.append(os.path.join(d, n))
        for p in entries:
            rel = os.path.relpath(p, root)
            ti = t.gettarinfo(p, arcname=rel)
            ti.mtime = 0
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            if ti.isreg():
                with open(p, "rb") as f:
                    t.addfile(ti, f)
            else:
                t.addfile(ti)
    return buf.getvalue()

def desc(media_type, data, **extra):
    d = {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}
    d.update(extra)
    return d

def dumps(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

layer = layer_tar(rootfs)
layer_d = desc("application/vnd.oci.image.layer.v1.tar", layer)
config = dumps({
    "architecture": arch,
    "os": "linux",
    "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
    "rootfs": {"type": "layers", "diff_ids": [layer_d["digest"]]},
    "history": [{"created_by": "keel scripts/make-image.sh (busybox rootfs)"}],
})
config_d = desc("application/vnd.oci.image.config.v1+json", config)
manifest = dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": config_d,
    "layers": [layer_d],
})
manifest_d = desc(
    "application/vnd.oci.image.manifest.v1+json", manifest,
    platform={"architecture": arch, "os": "linux"},
    annotations={
        "io.containerd.image.name": "keel.test/busybox:latest",
        "org.opencontainers.image.ref.name": "latest",
    },
)
index = dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_d]})

with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as t:
    def add(name, data):
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
        t.addfile(ti, io.BytesIO(data))
    add("oci-layout", dumps({"imageLayoutVersion": "1.0.0"}))
    add("index.json", index)
    for d, data in ((layer_d, layer), (config_d, config), (manifest_d, manifest)):
        add("blobs/sha256/" + d["digest"].split(":", 1)[1], data)
print("make-image: keel.test/busybox:latest, manifest %s, layer %d bytes" % (manifest_d["digest"], len(layer)), file=sys.stderr)
PY
chmod 0644 "$tmp"
mv -f "$tmp" "$dest"
trap - EXIT
echo "$dest"
