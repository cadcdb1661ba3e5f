#!/usr/bin/env bash
# Benchmarks Keel (io.containerd.keel.v1) against containerd-shim-runc-v2
# (io.containerd.runc.v2) side by side, in interleaved rounds, on a private
# containerd (its own root, state, socket and config in a temp dir; the
# system's containerd, if any, is never touched). Run as root; needs no stdin.
#
#   scripts/bench.sh [--containerd 1.6|2] [--rows classic,scale,probe]
#                    [--rounds N] [--containers M] [--parallel-rounds R] [--idle K]
#                    [--pod N] [--exec-growth N] [--scale N,N,..]
#                    [--probe-containers K] [--probe-period S] [--probe-duration S] [--probe-rounds R]
#                    [--probe-execs N] [--json FILE] [--plot DIR]
#                    [--build] [--shim PATH] [--runc-shim PATH]
#
#   --containerd 2     containerd 2.x (from /var/lib/keel-dev/containerd2) instead of 1.6
#   --rounds N         rounds of the lifecycle, exec and bare-runc rows (20)
#   --containers M     containers started at once for the parallel-start row (20)
#   --parallel-rounds R  rounds of the parallel start (10: fewer move the median with the load)
#   --idle K           idle `sleep` containers per shim for the memory rows (10)
#   --pod N            containers of the grouped pod (io.kubernetes.cri.sandbox-id,
#                      one shim for all) for the per-container memory rows (5)
#   --exec-growth N    also N sequential execs into one container per shim:
#                      shim RSS/PSS after the first and the Nth (off; try 1000)
#   --rows LIST        which rows (all three by default): classic (the rows below),
#                      scale (N idle containers, alone and 5 to a pod), probe
#                      (exec probes under load, then a long exec series)
#   --scale N,..       the scale row's N (10,100,300; each run for both shims,
#                      one kind at a time, and again grouped in N/5 pods)
#   --probe-containers K  containers exec-probed at once (20)
#   --probe-period S   seconds between two probes of one container (2)
#   --probe-duration S seconds of probing (60), split into
#   --probe-rounds R   interleaved rounds per shim (3; each figure is the median)
#   --probe-execs N    then N execs into one container per shim: shim memory
#                      after the first and the last (10000; 0: skip)
#   --json FILE        also write every figure (and the raw samples) as JSON
#   --plot DIR         also draw PNG charts into DIR (matplotlib, installed
#                      into a virtual environment under /var/lib/keel-dev)
#   --build            `cargo build --release` first (default: only if the binary is missing)
#   --shim PATH        the Keel binary (target/x86_64-unknown-linux-gnu/release/containerd-shim-keel-v1)
#   --runc-shim PATH   the containerd-shim-runc-v2 to compare with (default: the
#                      containerd line's own; e.g. --containerd 2 --runc-shim
#                      /usr/bin/containerd-shim-runc-v2 pits Keel against the
#                      faster 1.6 Go shim on containerd 2.x, as issue 8's baseline does)
#
# Rows: `ctr run --rm /bin/true` median/p90; `ctr task exec /bin/true` into a
# running container median/p90; bare `runc run /bin/true` (the floor, no shim);
# M containers started at once with `ctr run -d`, wall time until all RUN;
# per-shim RSS/PSS/USS/threads/fds with K idle containers; shims and shim
# memory per container for an N-container pod; binary sizes.
# Exit: 0 all rows measured, 2 some row failed (shown as FAILED), 1 setup
# error, 130 interrupted. Everything started is cleaned up on any exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

build=0 shim="$repo/target/x86_64-unknown-linux-gnu/release/containerd-shim-keel-v1"
plot="" json=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --build) build=1 ;;
        --shim) shim=$(realpath "$2"); shift ;;
        --shim=*) shim=$(realpath "${1#--shim=}") ;;
        --runc-shim) args+=(--runc-shim "$(realpath "$2")"); shift ;;
        --json) json=$(realpath -m "$2"); shift ;;
        --json=*) json=$(realpath -m "${1#--json=}") ;;
        --plot) plot=$(realpath -m "$2"); shift ;;
        --plot=*) plot=$(realpath -m "${1#--plot=}") ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$1") ;;
    esac
    shift
done

[ "$(id -u)" = 0 ] || { echo "bench.sh: must run as root" >&2; exit 1; }
bash "$repo/scripts/install-deps.sh" >&2
rootfs=$(bash "$repo/scripts/make-rootfs.sh")
if [ "$build" = 1 ] || [ ! -x "$shim" ]; then
    (cd "$repo" && PATH="$HOME/.cargo/bin:$PATH" cargo build --release) >&2
fi
[ -x "$shim" ] || { echo "bench.sh: no Keel binary at $shim" >&2; exit 1; }
# The tests' private containerd (tests/harness), which bench.py starts and cleans up through.
lab="$repo/target/x86_64-unknown-linux-gnu/release/keel-lab"
if [ "$build" = 1 ] || [ ! -x "$lab" ]; then
    (cd "$repo" && PATH="$HOME/.cargo/bin:$PATH" cargo build --release -p keel-harness --bin keel-lab) >&2
fi

# The system python, not a pyenv shim that may be missing under sudo.
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)

# matplotlib for --plot, in its own virtual environment (made once).
venv="${KEEL_PREFIX:-/var/lib/keel-dev}/plot-venv"
if [ -n "$plot" ] && ! "$venv/bin/python" -c "import matplotlib" 2>/dev/null; then
    echo "bench.sh: installing matplotlib into $venv" >&2
    "$py" -c "import venv" 2>/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    rm -rf "$venv"
    "$py" -m venv "$venv" >&2
    "$venv/bin/pip" install -q "matplotlib>=3.8,<4" >&2 ||
        { echo "bench.sh: cannot install matplotlib into $venv (no PyPI?); run without --plot" >&2; exit 1; }
fi
json_tmp=""
if [ -n "$plot" ] && [ -z "$json" ]; then
    json=$(mktemp /tmp/keel-bench-json.XXXXXX) json_tmp=1
fi
[ -n "$json" ] && args+=(--json "$json")

work=$(mktemp -d /tmp/keel-bench.XXXXXX)
cleanup() {
    trap - EXIT INT TERM HUP
    # bench.py cleans up after itself; this catches what a killed bench.py left.
    [ -d "$work" ] && "$py" "$here/bench/bench.py" --cleanup --work "$work" --lab "$lab" --rootfs "$rootfs" || true
    rm -rf "$work"
    if [ -n "$json_tmp" ]; then rm -f "$json"; fi
}
trap cleanup EXIT

# In the background, so that a signal to this script alone (not only a Ctrl-C
# to the whole group) reaches bench.py at once; it cleans up and exits 130.
"$py" "$here/bench/bench.py" --work "$work" --lab "$lab" --rootfs "$rootfs" --shim "$shim" "${args[@]}" </dev/null &
pypid=$!
trap 'kill -TERM "$pypid" 2>/dev/null || true' INT TERM HUP
set +e
while :; do
    wait "$pypid"
    kill -0 "$pypid" 2>/dev/null || break
done
wait "$pypid"
rc=$?
if [ -n "$plot" ] && [ -s "$json" ] && [ "$rc" -le 2 ]; then
    "$venv/bin/python" "$here/bench/plot.py" "$json" "$plot" || rc=1
fi
exit $rc
