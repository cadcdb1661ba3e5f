#!/usr/bin/env bash
# The cgroup v2 suite (tests/cgroup_v2.rs) on a real unified-hierarchy
# kernel: builds the suite and the shim here, boots the guest of
# scripts/make-guest.sh twice under qemu (once with runc's cgroupfs driver,
# once with systemd as PID 1 for the systemd driver), runs the suite's test
# binary inside and prints one result line per guest. Exit 0 only when both
# pass.
#
#   KEEL_SKIP_VM=1   skip (printed as skipped) where qemu cannot run at all
#   KEEL_GUEST_THREADS   test threads inside the guest (2)
#   extra arguments  passed to the test binary in both guests (a filter)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if [ "${KEEL_SKIP_VM:-}" = 1 ]; then
    echo "test-guest: cgroup v2 suite SKIPPED (KEEL_SKIP_VM=1): nothing on the unified hierarchy was tested"
    exit 0
fi
t0=$SECONDS
bash scripts/make-guest.sh >/dev/null
built=$SECONDS
exe=$(cargo test --release --test cgroup_v2 --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cgroup_v2":
        print(m["executable"])')
[ -x "$exe" ] || { echo "test-guest: cargo built no cgroup_v2 test binary (cargo test --release --test cgroup_v2 --no-run)" >&2; exit 1; }
shim=target/x86_64-unknown-linux-gnu/release/containerd-shim-keel-v1
[ -x "$shim" ] || { echo "test-guest: $shim is missing" >&2; exit 1; }

logs=target/guest-logs
mkdir -p "$logs"
threads=${KEEL_GUEST_THREADS:-2}
fail=0
# run_suite NAME RUN-GUEST-FLAGS... -- TEST-ARGS...
run_suite() {
    local name=$1 flags=() start=$SECONDS code=0
    shift
    while [ "$1" != -- ]; do flags+=("$1"); shift; done
    shift
    local log="$logs/$name.log"
    bash scripts/run-guest.sh "${flags[@]}" --timeout 1500 \
        --add "$exe:/payload/cgroup_v2" --add "$shim:/payload/containerd-shim-keel-v1" -- \
        env KEEL_SHIM=/payload/containerd-shim-keel-v1 RUST_BACKTRACE=1 /payload/cgroup_v2 --test-threads "$threads" "$@" >"$log" 2>&1 || code=$?
    local result
    result=$(tr -d '\r' <"$log" | grep -E '^test result: ' | tail -1 || true)
    tr -d '\r' <"$log" | grep -E '^test .* \.\.\. ' || true
    if [ "$code" -ne 0 ] || [ -z "$result" ]; then
        fail=1
        case $code in
            124) why="the guest did not finish within 1500 s" ;;
            125) why="the guest reported no exit status (qemu could not boot it, or its init died)" ;;
            *) why="exit $code" ;;
        esac
        echo "---- $log (last 150 lines) ----"
        tr -d '\r' <"$log" | tail -150
        echo "test-guest: cgroup v2 suite, $name: FAILED ($why) ${result#test result: } in $((SECONDS - start)) s; full console in $log"
    else
        echo "test-guest: cgroup v2 suite, $name: ${result#test result: } in $((SECONDS - start)) s"
    fi
}

# The plain guest: cgroupfs driver, everything but the systemd scenarios.
run_suite cgroupfs -- --skip systemd_ "$@"
# systemd as PID 1: the systemd driver's scenarios.
run_suite systemd --systemd -- systemd_ "$@"
echo "test-guest: guest ready in $((built - t0)) s, both suites done in $((SECONDS - t0)) s"
exit "$fail"
