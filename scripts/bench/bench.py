#!/usr/bin/env python3
"""Keel vs containerd-shim-runc-v2, side by side, on a private containerd.

Called by scripts/bench.sh (which installs the dependencies, finds the rootfs
and makes the work directory); only the Python standard library is used.

Everything runs under WORK (a temp dir): containerd's root, state, socket,
config and log, a PATH dir with the shims, the FIFOs, the runc floor bundle.
A private namespace keeps the containers apart from any other containerd's.
`bench.py --cleanup WORK` undoes whatever a run left behind (bench.sh's trap
calls it after every run, which is a no-op once the run cleaned up itself).
"""

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time

KEEL = "keel"
RUNC = "runc-v2"
SHIMS = (KEEL, RUNC)
RUNTIME = {KEEL: "io.containerd.keel.v1", RUNC: "io.containerd.runc.v2"}
# Kubernetes' pod grouping key: both shims serve every container carrying the
# same value from one shim process.
POD_ANNOTATION = "io.kubernetes.cri.sandbox-id"
SHIM_BIN = {KEEL: "containerd-shim-keel-v1", RUNC: "containerd-shim-runc-v2"}
C2_BIN = os.path.join(os.environ.get("KEEL_PREFIX", "/var/lib/keel-dev"), "containerd2/usr/bin")
CMD_TIMEOUT = 60  # seconds for any one ctr/runc command


class Interrupted(Exception):
    pass


class Failed(Exception):
    pass


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def now_ns():
    return time.perf_counter_ns()


def median(xs):
    return statistics.median(xs) if xs else None


def p90(xs):
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]  # nearest rank


def words(args):
    """The command words of a ctr argv (no flags), for messages."""
    out = []
    for a in args:
        if a.startswith("-") or "/" in a:
            break
        out.append(a)
    return " ".join(out[:2])


def last_line(text):
    """The last line of an error output: the one that says what failed."""
    text = (text or "").strip()
    return text.splitlines()[-1][:300] if text else ""


# ---------------------------------------------------------------- the daemon

class Env:
    """The private containerd and how to talk to it.

    It is the integration tests' own daemon (tests/harness, through its
    keel-lab binary): the same config, layout and clean-up as every test's.
    """

    def __init__(self, work, major, shim_path, lab, runc_shim=None):
        self.work = work
        self.lab = lab
        self.lab_dir = os.path.join(work, "containerd")
        self.major = major
        self.ns = f"keel-bench-{os.getpid()}"
        self.shim_path = shim_path
        self.runc_shim = runc_shim or (f"{C2_BIN}/containerd-shim-runc-v2" if major == 2
                                       else "/usr/bin/containerd-shim-runc-v2")
        self.sock = self.fifo = self.ctr_bin = self.containerd = self.path = None

    def start(self):
        argv = [self.lab, "up", "--line", "2" if self.major == 2 else "1.6", "--dir", self.lab_dir,
                "--shim", self.shim_path, "--runc-shim", self.runc_shim, "--ns", self.ns, "--log-level", "info"]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise Failed(f"keel-lab up: exit {r.returncode}: {r.stderr.strip()[-2000:]}")
        try:
            d = json.loads(r.stdout)
        except ValueError as e:
            raise Failed(f"keel-lab up printed no description ({e}): {r.stdout[:200]!r}")
        self.sock, self.fifo, self.ctr_bin = d["sock"], d["fifo_dir"], d["ctr"]
        self.containerd, self.path, self.containerd_pid = d["containerd"], d["path"], d["pid"]

    def ctr_argv(self, args):
        return [self.ctr_bin, "--address", self.sock, "--namespace", self.ns] + args

    def ctr(self, args, check=True, timeout=CMD_TIMEOUT):
        try:
            r = subprocess.run(self.ctr_argv(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, timeout=timeout, env=dict(os.environ, PATH=self.path))
        except subprocess.TimeoutExpired:
            if check:
                raise Failed(f"ctr {words(args)}: timed out after {timeout} s")
            return subprocess.CompletedProcess(args, 124, "", "timeout")
        if check and r.returncode != 0:
            raise Failed(f"ctr {words(args)}: exit {r.returncode}: {last_line(r.stderr or r.stdout)}")
        return r

    def timed_ctr(self, args):
        """Runs one ctr command; returns milliseconds, raises Failed."""
        t0 = now_ns()
        self.ctr(args)
        return (now_ns() - t0) / 1e6

    def run_detached(self, shim, cid, argv, flags=()):
        # ctr's --rootfs is a boolean: the path after it is the positional "image".
        self.ctr(["run", "-d", "--fifo-dir", self.fifo, "--runtime", RUNTIME[shim]] + list(flags)
                 + ["--rootfs", ROOTFS, cid] + argv)

    def tasks(self):
        """{id: status} of this namespace's tasks."""
        r = self.ctr(["task", "ls"], check=False, timeout=20)
        out = {}
        for line in r.stdout.splitlines()[1:]:
            f = line.split()
            if len(f) >= 3:
                out[f[0]] = f[2]
        return out

    def remove(self, ids, timeout=CMD_TIMEOUT):
        """Kills and deletes tasks and containers (best effort), 25 per ctr call."""
        ids = list(ids)
        for i in range(0, len(ids), 25):
            chunk = ids[i:i + 25]
            self.ctr(["task", "delete", "-f"] + chunk, check=False, timeout=timeout)
            self.ctr(["container", "delete"] + chunk, check=False, timeout=timeout)

    def shims(self, kind):
        """{container id: pid} of the serving shims of this daemon for one kind."""
        found = {}
        for d, argv in proc_argvs():
            if not argv or os.path.basename(argv[0]) != SHIM_BIN[kind]:
                continue
            if not has_flag(argv, "address", self.sock) or "start" in argv or "delete" in argv:
                continue
            found[flag_value(argv, "id") or d] = int(d)
        return found


def proc_argvs():
    """(pid as a string, argv) of every process that can still be read."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        yield d, argv


def flag_value(argv, name):
    for i, a in enumerate(argv):
        for p in ("-" + name, "--" + name):
            if a == p and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(p + "="):
                return a[len(p) + 1:]
    return None


def has_flag(argv, name, value):
    return flag_value(argv, name) == value


def proc_mem(pid):
    """RSS, PSS, USS (KiB), threads, open fds of one process."""
    m = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":"):
                try:
                    m[parts[0][:-1]] = int(parts[1])
                except ValueError:
                    pass
    threads = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    return {"rss_kib": m.get("Rss"), "pss_kib": m.get("Pss"),
            "uss_kib": m.get("Private_Clean", 0) + m.get("Private_Dirty", 0), "anon_kib": m.get("Anonymous"),
            "threads": threads, "fds": fds}


# ---------------------------------------------------------------- the rows

class Results:
    def __init__(self):
        self.rows = []      # (key, label, unit, {shim: value}, {shim: error}, shared)
        self.raw = {}
        self.extra = {}

    def add(self, key, label, unit, values, errors=None, shared=False):
        self.rows.append({"key": key, "label": label, "unit": unit, "values": values,
                          "errors": errors or {}, "shared": shared})


def guarded(fn, *a):
    """Runs one measurement for one shim: (value, None) or (None, error text)."""
    try:
        return fn(*a), None
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise
    except Failed as e:
        return None, str(e)
    except Exception as e:  # a bug in the bench must not lose the other rows
        return None, f"{type(e).__name__}: {e}"


def bench_lifecycle(env, res, rounds):
    log(f"lifecycle: ctr run --rm /bin/true, {rounds} interleaved rounds")
    times = {s: [] for s in SHIMS}
    errs = {}
    for i in range(rounds):
        for s in SHIMS:
            cid = f"lc-{s}-{i}"
            try:
                times[s].append(env.timed_ctr(["run", "--rm", "--fifo-dir", env.fifo, "--runtime", RUNTIME[s],
                                               "--rootfs", ROOTFS, cid, "/bin/true"]))
            except Failed as e:
                errs.setdefault(s, []).append(str(e))
                env.remove([cid])
    res.raw["lifecycle_ms"] = times
    add_latency(res, "lifecycle", "ctr run --rm /bin/true", times, errs, rounds)


def add_latency(res, key, what, times, errs, rounds):
    errors = {s: f"{len(e)}/{rounds} failed: {e[0]}" for s, e in errs.items()}
    ok = {s: times[s] if not errs.get(s) else [] for s in SHIMS}
    res.add(f"{key}_median_ms", f"{what}: median", "ms", {s: median(ok[s]) for s in SHIMS}, errors)
    res.add(f"{key}_p90_ms", f"{what}: p90", "ms", {s: p90(ok[s]) for s in SHIMS}, errors)


def bench_exec(env, res, rounds):
    log(f"exec: ctr task exec /bin/true into a running sleep, {rounds} interleaved rounds")
    times = {s: [] for s in SHIMS}
    errs = {}
    up = {}
    for s in SHIMS:
        try:
            env.run_detached(s, f"ex-{s}", ["/bin/sleep", "3600"])
            up[s] = True
        except Failed as e:
            errs[s] = [f"start sleep container: {e}"]
    for i in range(rounds):
        for s in SHIMS:
            if not up.get(s):
                continue
            try:
                times[s].append(env.timed_ctr(["task", "exec", "--fifo-dir", env.fifo, "--exec-id", f"x{i}",
                                               f"ex-{s}", "/bin/true"]))
            except Failed as e:
                errs.setdefault(s, []).append(str(e))
    env.remove([f"ex-{s}" for s in SHIMS])
    res.raw["exec_ms"] = times
    add_latency(res, "exec", "ctr task exec /bin/true", times, errs, rounds)


def start_parallel(env, shim, m, tag):
    """Starts m sleep containers at once; returns the wall time (ms) until all run."""
    ids = [f"par-{shim}-{tag}-{i}" for i in range(m)]
    envp = dict(os.environ, PATH=env.path)
    t0 = now_ns()
    procs = [subprocess.Popen(env.ctr_argv(["run", "-d", "--fifo-dir", env.fifo, "--runtime", RUNTIME[shim],
                                            "--rootfs", ROOTFS, cid, "/bin/sleep", "3600"]),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=envp)
             for cid in ids]
    try:
        errors = []
        deadline = time.time() + 120
        for p in procs:
            try:
                _, err = p.communicate(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
                err = b"timed out"
            if p.returncode != 0:
                errors.append(last_line(err.decode(errors="replace")))
        if errors:
            raise Failed(f"{len(errors)}/{m} ctr run -d failed: {errors[0]}")
        while True:
            st = env.tasks()
            if all(st.get(c) == "RUNNING" for c in ids):
                break
            if time.time() > deadline:
                n = sum(st.get(c) == "RUNNING" for c in ids)
                raise Failed(f"only {n}/{m} running after 120 s")
            time.sleep(0.005)
        return (now_ns() - t0) / 1e6
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        env.remove(ids)


def bench_parallel(env, res, m, rounds):
    log(f"parallel start: {m} x ctr run -d at once, until all RUNNING, {rounds} interleaved rounds")
    times = {s: [] for s in SHIMS}
    errs = {}
    for r in range(rounds):
        for s in SHIMS:
            v, e = guarded(start_parallel, env, s, m, r)
            if e:
                errs.setdefault(s, []).append(e)
            else:
                times[s].append(v)
    res.raw["parallel_start_ms"] = times
    errors = {s: f"{len(e)}/{rounds} rounds failed: {e[0]}" for s, e in errs.items()}
    res.add("parallel_start_ms", f"start {m} containers at once: wall (median of {rounds})", "ms",
            {s: (median(times[s]) if not errs.get(s) else None) for s in SHIMS}, errors)


def idle_shims(env, prefix, n, flags=lambda shim: ()):
    """Starts n sleep containers per shim, named prefix-SHIM-i, with the extra
    `ctr run` flags flags(shim); returns ({shim: [proc_mem sample of each serving shim]},
    {shim: error}) and removes the containers again."""
    samples, errs = {}, {}
    for s in SHIMS:
        try:
            for i in range(n):
                env.run_detached(s, f"{prefix}-{s}-{i}", ["/bin/sleep", "3600"], flags(s))
        except Failed as e:
            errs[s] = str(e)
    time.sleep(2)  # let the shims settle (lazy allocations, GC)
    for s in SHIMS:
        if s in errs:
            continue
        mine = [pid for cid, pid in env.shims(s).items() if cid.startswith(f"{prefix}-{s}-")]
        try:
            samples[s] = [proc_mem(pid) for pid in mine]
        except OSError as e:
            errs[s] = f"read /proc: {e}"
    env.remove([f"{prefix}-{s}-{i}" for s in SHIMS for i in range(n)])
    return samples, errs


def bench_idle(env, res, k):
    log(f"idle memory: {k} sleep containers per shim")
    samples, errs = idle_shims(env, "idle", k)
    values = {}
    for s, got in samples.items():
        res.raw.setdefault("idle_shims", {})[s] = got
        if len(got) != k:
            errs[s] = f"found {len(got)} serving shims for {k} containers"
        if got:
            values[s] = {f: statistics.mean(x[f] for x in got) for f in got[0]}
    for f, label, unit in (("rss_kib", "RSS", "KiB"), ("pss_kib", "PSS", "KiB"), ("uss_kib", "USS", "KiB"),
                           ("threads", "threads", ""), ("fds", "open fds", "")):
        res.add(f"idle_{f}", f"idle shim {label} (mean of {k})", unit,
                {s: values[s][f] if s in values and s not in errs else None for s in SHIMS}, errs)


def bench_pod(env, res, n):
    """A pod of n idle containers in one shim: the CRI sandbox-id annotation,
    which both shims honour (as they do for a Kubernetes pod); the shim's
    memory divided by n is what each container of the pod costs."""
    log(f"pod: {n} sleep containers grouped by {POD_ANNOTATION}, per shim")
    # One pod per shim kind, named by the annotation's value.
    samples, errs = idle_shims(env, "pod", n, lambda s: ["--annotation", f"{POD_ANNOTATION}=pod-{s}"])
    values = {}
    for s, got in samples.items():
        res.raw.setdefault("pod_shims", {})[s] = got
        if not got:
            # Not a pod that costs nothing: its shim was not found.
            errs[s] = f"found no shim serving the {n} containers of pod-{s}"
            continue
        values[s] = {"shims": len(got)}
        for f in ("rss_kib", "pss_kib", "uss_kib"):
            values[s][f] = sum(x[f] for x in got) / n
    res.add("pod_shims", f"{n}-container pod: shims serving it", "",
            {s: values[s]["shims"] for s in values}, errs)
    for f, label in (("rss_kib", "RSS"), ("pss_kib", "PSS"), ("uss_kib", "USS")):
        res.add(f"pod_{f}_per_container", f"{n}-container pod: shim {label} per container", "KiB",
                {s: values[s][f] for s in values}, errs)


def bench_floor(env, res, rounds):
    log(f"floor: runc run /bin/true with a minimal bundle, {rounds} rounds")
    bundle = os.path.join(env.work, "floor-bundle")
    root = os.path.join(env.work, "floor-runc-root")
    os.makedirs(bundle, exist_ok=True)
    os.makedirs(root, exist_ok=True)
    runc = shutil.which("runc", path=env.path)
    times, err = [], None
    try:
        if not runc:
            raise Failed("runc not found")
        r = subprocess.run([runc, "spec"], cwd=bundle, capture_output=True, text=True, timeout=CMD_TIMEOUT)
        if r.returncode:
            raise Failed(f"runc spec: {last_line(r.stderr)}")
        cfgp = os.path.join(bundle, "config.json")
        with open(cfgp) as f:
            spec = json.load(f)
        spec["root"] = {"path": ROOTFS, "readonly": True}
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["/bin/true"]
        with open(cfgp, "w") as f:
            json.dump(spec, f)
        for i in range(rounds + 1):
            t0 = now_ns()
            r = subprocess.run([runc, "--root", root, "run", "--bundle", bundle, f"floor-{i}"],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CMD_TIMEOUT)
            dt = (now_ns() - t0) / 1e6
            if r.returncode:
                raise Failed(f"runc run: exit {r.returncode}: {last_line(r.stderr)}")
            if i:  # the first one warms the caches
                times.append(dt)
    except (Failed, OSError, subprocess.TimeoutExpired) as e:
        err = str(e)
    res.raw["floor_ms"] = times
    res.extra["floor_median_ms"] = median(times) if not err else None
    res.add("floor_median_ms", f"bare `runc run` /bin/true, no shim: median", "ms",
            {s: (median(times) if not err else None) for s in SHIMS}, {s: err for s in SHIMS} if err else {},
            shared=True)


def bench_sizes(env, res):
    log("binary sizes")
    vals, stripped, errs = {}, {}, {}
    for s, path in ((KEEL, env.shim_path), (RUNC, env.runc_shim)):
        try:
            vals[s] = os.path.getsize(path)
            copy = os.path.join(env.work, f"stripped-{SHIM_BIN[s]}")
            r = subprocess.run(["strip", "-o", copy, path], capture_output=True, text=True, timeout=CMD_TIMEOUT)
            if r.returncode:
                raise Failed(f"strip: {last_line(r.stderr)}")
            stripped[s] = os.path.getsize(copy)
            os.unlink(copy)
        except (Failed, OSError) as e:
            errs[s] = str(e)
    res.add("binary_bytes", "shim binary size (as installed)", "bytes", vals, errs)
    res.add("binary_stripped_bytes", "shim binary size (stripped)", "bytes", stripped, errs)


def bench_exec_growth(env, res, n):
    log(f"exec growth: {n} sequential execs into one container per shim (interleaved)")
    out = {}
    errs = {}
    for s in SHIMS:
        try:
            env.run_detached(s, f"grow-{s}", ["/bin/sleep", "36000"])
        except Failed as e:
            errs[s] = f"start: {e}"
    pid = {}
    times = {s: [] for s in SHIMS}
    first = {}
    t_start = time.time()
    for i in range(n):
        for s in SHIMS:
            if s in errs:
                continue
            try:
                times[s].append(env.timed_ctr(["task", "exec", "--fifo-dir", env.fifo, "--exec-id", f"g{i}",
                                               f"grow-{s}", "/bin/true"]))
                if i == 0:
                    pid[s] = env.shims(s).get(f"grow-{s}")
                    if not pid[s]:
                        raise Failed("shim process not found")
                    first[s] = proc_mem(pid[s])
            except (Failed, OSError) as e:
                errs[s] = f"exec #{i + 1}: {e}"
        if (i + 1) % 250 == 0:
            log(f"  {i + 1}/{n} execs ({time.time() - t_start:.0f} s)")
    for s in SHIMS:
        if s in errs:
            continue
        try:
            time.sleep(0.2)
            last = proc_mem(pid[s])
        except OSError as e:
            errs[s] = str(e)
            continue
        out[s] = {"after_first": first[s], "after_last": last,
                  "exec_ms_first_100_median": median(times[s][:100]),
                  "exec_ms_last_100_median": median(times[s][-100:])}
    env.remove([f"grow-{s}" for s in SHIMS])
    res.raw["exec_growth_ms"] = times
    res.extra["exec_growth"] = {"execs": n, "shims": out, "errors": errs}

    def pick(f, when):
        return {s: out[s][when][f] for s in out}

    def pct(f):
        return {s: 100.0 * (out[s]["after_last"][f] - out[s]["after_first"][f]) / out[s]["after_first"][f]
                for s in out if out[s]["after_first"][f]}

    res.add("growth_rss_first_kib", f"exec growth: shim RSS after exec #1", "KiB", pick("rss_kib", "after_first"), errs)
    res.add("growth_rss_last_kib", f"exec growth: shim RSS after exec #{n}", "KiB", pick("rss_kib", "after_last"), errs)
    res.add("growth_rss_pct", f"exec growth: RSS change", "%", pct("rss_kib"), errs)
    res.add("growth_pss_first_kib", f"exec growth: shim PSS after exec #1", "KiB", pick("pss_kib", "after_first"), errs)
    res.add("growth_pss_last_kib", f"exec growth: shim PSS after exec #{n}", "KiB", pick("pss_kib", "after_last"), errs)
    res.add("growth_pss_pct", f"exec growth: PSS change", "%", pct("pss_kib"), errs)
    # PSS (and USS) move when other processes map the same binary; anonymous
    # memory (heap, stacks) is the shim's own whatever else runs.
    res.add("growth_anon_first_kib", f"exec growth: shim anon memory after exec #1", "KiB",
            pick("anon_kib", "after_first"), errs)
    res.add("growth_anon_last_kib", f"exec growth: shim anon memory after exec #{n}", "KiB",
            pick("anon_kib", "after_last"), errs)
    res.add("growth_anon_pct", f"exec growth: anon memory change", "%", pct("anon_kib"), errs)
    res.add("growth_fds_last", f"exec growth: shim open fds after #1 -> #{n}", "",
            {s: f"{out[s]['after_first']['fds']} -> {out[s]['after_last']['fds']}" for s in out}, errs)
    res.add("growth_threads_last", f"exec growth: shim threads after #1 -> #{n}", "",
            {s: f"{out[s]['after_first']['threads']} -> {out[s]['after_last']['threads']}" for s in out}, errs)
    res.add("growth_exec_ms", f"exec growth: exec median, first 100 -> last 100", "ms",
            {s: f"{out[s]['exec_ms_first_100_median']:.1f} -> {out[s]['exec_ms_last_100_median']:.1f}" for s in out},
            errs)


# ---------------------------------------------------------------- reporting

def cmd_out(argv, env=None):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL, env=env)
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({e})"


def busy_builders():
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() in ("rustc", "cargo", "cc1", "ld", "go", "cc1plus"):
                        n += 1
            except OSError:
                pass
    return n


def versions(env):
    pathenv = dict(os.environ, PATH=env.path)
    v = {
        "containerd": cmd_out([env.containerd, "--version"]),
        "ctr": cmd_out([env.ctr_bin, "--version"]),
        "containerd_version": (cmd_out([env.containerd, "--version"]).split() + ["?"] * 3)[2],
        "runc": cmd_out([shutil.which("runc", path=env.path) or "runc", "--version"], pathenv).splitlines()[0],
        "runc_path": shutil.which("runc", path=env.path),
        "keel_shim": " ".join(cmd_out([env.shim_path, "-v"]).split()),
        "keel_shim_path": env.shim_path,
        "keel_shim_mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(env.shim_path))),
        "runc_v2_shim": " ".join(cmd_out([env.runc_shim, "-v"]).split()),
        "runc_v2_shim_path": env.runc_shim,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
    }
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    head = cmd_out(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
    dirty = cmd_out(["git", "-C", repo, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"])
    v["runc_version"] = (v["runc"].split() + ["?"] * 3)[2]
    v["keel_git"] = head + (" + uncommitted changes in src/" if dirty else "")
    newest = 0
    for d, _, files in os.walk(os.path.join(repo, "src")):
        for f in files:
            newest = max(newest, os.path.getmtime(os.path.join(d, f)))
    for f in ("Cargo.toml", "Cargo.lock"):
        if os.path.exists(os.path.join(repo, f)):
            newest = max(newest, os.path.getmtime(os.path.join(repo, f)))
    if env.shim_path == os.path.realpath(os.path.join(repo, "target/x86_64-unknown-linux-gnu/release", SHIM_BIN[KEEL])) \
            and newest > os.path.getmtime(env.shim_path):
        v["keel_shim_mtime"] += "  (OLDER than the newest file in src/: rebuild with --build)"
    return v


def fmt(v, unit):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if unit == "ms":
        return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
    if unit == "%":
        return f"{v:+.1f}%"
    if unit == "bytes":
        return f"{v / 1048576:.2f}"
    if unit == "KiB":
        return f"{v / 1024:.2f}"
    return f"{v:.1f}" if isinstance(v, float) and v != int(v) else f"{int(v)}"


def ratio(row):
    a, b = row["values"].get(KEEL), row["values"].get(RUNC)
    if row["shared"] or not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or row["unit"] == "%":
        return None
    if b == 0:
        return None
    return a / b


SHOWN_UNIT = {"KiB": "MiB", "bytes": "MiB"}


def shown_label(r):
    unit = SHOWN_UNIT.get(r["unit"], r["unit"])
    return r["label"] + (f" ({unit})" if unit and unit != "%" else "")


def print_table(res, meta):
    w0 = max(len(shown_label(r)) for r in res.rows)
    print()
    print(f"Keel vs containerd-shim-runc-v2 on containerd {meta['versions']['containerd_version']}, "
          f"runc {meta['versions']['runc_version']}")
    print(f"load average at start: {meta['load_start']}   (builders running: {meta['builders_start']})")
    print()
    head = f"{'':<{w0}}  {'keel':>14}  {'runc-v2':>14}  {'keel/runc-v2':>12}"
    print(head)
    print("-" * len(head))
    for r in res.rows:
        label = shown_label(r)
        cells = []
        for s in SHIMS:
            cells.append("FAILED" if r["errors"].get(s) else fmt(r["values"].get(s), r["unit"]))
        q = ratio(r)
        rq = "(shared)" if r["shared"] else (f"{q:.2f}" if q is not None else "-")
        print(f"{label:<{w0}}  {cells[0]:>14}  {cells[1]:>14}  {rq:>12}")
    print("-" * len(head))
    fails = [(r["label"], s, r["errors"][s]) for r in res.rows for s in SHIMS if r["errors"].get(s)]
    seen = set()
    for label, s, e in fails:
        if (s, e) in seen:
            continue
        seen.add((s, e))
        print(f"FAILED {s}: {label}: {e}")
    for what in ("leftover_tasks", "leftover_shims"):
        if meta.get(what):
            print(f"WARNING {what.replace('_', ' ')} after all rows: {meta[what]}")
    print(f"load average at end:   {meta['load_end']}   (builders running: {meta['builders_end']})")
    print(f"elapsed: {meta['elapsed_s']:.0f} s; rounds {meta['rounds']}, parallel {meta['containers']} x "
          f"{meta['parallel_rounds']}, idle {meta['idle']}")
    print("versions:")
    for k, v in meta["versions"].items():
        if k not in ("containerd_version", "runc_version"):
            print(f"  {k:<20} {v}")


# ---------------------------------------------------------------- cleanup

def cleanup(work, lab, quiet=False):
    """Undoes everything a run under WORK started; safe to call repeatedly."""
    if not os.path.isdir(work):
        return
    lab_dir = os.path.join(work, "containerd")
    # Tasks, containers, the daemon, leftover shims, runtime state, cgroups,
    # dead shim sockets and mounts: the tests' clean-up, through keel-lab.
    if os.path.exists(os.path.join(lab_dir, "lab.json")):
        r = subprocess.run([lab, "down", "--dir", lab_dir], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=600)
        if not quiet:
            for line in (r.stderr or "").splitlines():
                log(line)
        if r.returncode != 0:
            log(f"cleanup: keel-lab down: exit {r.returncode}")
    # Floor containers.
    froot = os.path.join(work, "floor-runc-root")
    if os.path.isdir(froot):
        for cid in os.listdir(froot):
            subprocess.run(["runc", "--root", froot, "delete", "-f", cid], capture_output=True, timeout=30)
    # Mounts under WORK, deepest first.
    mounts = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].encode().decode("unicode_escape")
                if mp == work or mp.startswith(work + "/"):
                    mounts.append(mp)
    except OSError:
        pass
    for mp in sorted(mounts, key=len, reverse=True):
        if subprocess.run(["umount", mp], capture_output=True).returncode:
            subprocess.run(["umount", "-l", mp], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- main

def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def main():
    global ROOTFS
    ap = argparse.ArgumentParser(prog="bench.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--containerd", default="1.6", choices=["1", "1.6", "2", "2.x"])
    ap.add_argument("--rounds", type=int, default=20, help="rounds of the lifecycle, exec and floor rows (20)")
    ap.add_argument("--containers", type=int, default=20, help="containers started at once (20)")
    ap.add_argument("--parallel-rounds", type=int, default=10, help="rounds of the parallel start (10)")
    ap.add_argument("--idle", type=int, default=10, help="idle containers per shim for memory (10)")
    ap.add_argument("--pod", type=int, default=5, help="containers in the grouped pod (5)")
    ap.add_argument("--exec-growth", type=int, default=0, metavar="N", help="N execs into one container (off)")
    ap.add_argument("--rows", default="classic,scale,probe",
                    help="which rows: classic (one at a time, 20 at once, idle), scale, probe (all)")
    ap.add_argument("--scale", default="10,100,300", metavar="N,..", help="idle containers of the scale row")
    ap.add_argument("--probe-containers", type=int, default=20, metavar="K")
    ap.add_argument("--probe-period", type=float, default=2.0, metavar="S")
    ap.add_argument("--probe-duration", type=float, default=60.0, metavar="S")
    ap.add_argument("--probe-rounds", type=int, default=3, metavar="R",
                    help="interleaved rounds the probing is split into (3)")
    ap.add_argument("--probe-execs", type=int, default=10000, metavar="N",
                    help="execs into one container after the probe row (0: none)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--shim", help="Keel binary (target/x86_64-unknown-linux-gnu/release/containerd-shim-keel-v1)")
    ap.add_argument("--runc-shim", metavar="PATH",
                    help="the containerd-shim-runc-v2 to compare with (the containerd line's own)")
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--lab", required=True, help="the harness's keel-lab binary")
    ap.add_argument("--cleanup", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.cleanup:
        cleanup(a.work, a.lab, quiet=False)
        return 0
    for name in ("rounds", "containers", "parallel_rounds", "idle", "pod", "probe_containers", "probe_rounds"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    rows = set(a.rows.split(","))
    if not rows or rows - {"classic", "scale", "probe"}:
        ap.error(f"--rows {a.rows!r}: want a comma-separated list of classic, scale, probe")
    try:
        scale = [int(x) for x in a.scale.split(",") if x]
    except ValueError:
        ap.error(f"--scale {a.scale!r}: want numbers such as 10,100,300")
    if "scale" in rows and (not scale or min(scale) < 10):
        ap.error("--scale: every N must be at least 10 (the start rate is over the last 10)")
    if a.probe_period <= 0 or a.probe_duration <= 0:
        ap.error("--probe-period and --probe-duration must be positive")
    # node.py imports this module by name: let it find this run's globals.
    sys.modules["bench"] = sys.modules[__name__]
    import node
    ROOTFS = a.rootfs
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    major = 2 if a.containerd.startswith("2") else 1
    env = Env(a.work, major, os.path.realpath(a.shim), a.lab, a.runc_shim and os.path.realpath(a.runc_shim))
    res = Results()
    t0 = time.time()
    meta = {"containerd_major": "2.x" if major == 2 else "1.6", "rows": sorted(rows), "scale": scale,
            "probe": {"containers": a.probe_containers, "period_s": a.probe_period, "duration_s": a.probe_duration,
                      "rounds": a.probe_rounds, "execs": a.probe_execs},
            "rounds": a.rounds, "containers": a.containers,
            "parallel_rounds": a.parallel_rounds, "idle": a.idle, "pod": a.pod, "exec_growth": a.exec_growth,
            "load_start": cmd_out(["uptime"]), "builders_start": busy_builders(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    code = 0
    try:
        env.start()
        meta["versions"] = versions(env)
        log(f"containerd {meta['versions']['containerd']} up at {env.sock}, namespace {env.ns}")
        # Warm-up: one unmeasured run per shim (page cache, first-shim costs).
        for s in SHIMS:
            try:
                env.ctr(["run", "--rm", "--fifo-dir", env.fifo, "--runtime", RUNTIME[s], "--rootfs", ROOTFS,
                         f"warm-{s}", "/bin/true"])
            except Failed as e:
                log(f"warm-up with {s} failed: {e}")
                env.remove([f"warm-{s}"])
        if "classic" in rows:
            bench_lifecycle(env, res, a.rounds)
            bench_exec(env, res, a.rounds)
            bench_floor(env, res, a.rounds)
            floor = res.extra.get("floor_median_ms")
            lc = next(r for r in res.rows if r["key"] == "lifecycle_median_ms")
            res.add("lifecycle_over_floor_ms", "ctr run --rm median minus the bare runc floor", "ms",
                    {s: lc["values"][s] - floor for s in SHIMS
                     if floor is not None and lc["values"].get(s) is not None}, lc["errors"])
            bench_parallel(env, res, a.containers, a.parallel_rounds)
            bench_idle(env, res, a.idle)
            bench_pod(env, res, a.pod)
            bench_sizes(env, res)
        if a.exec_growth > 0:
            bench_exec_growth(env, res, a.exec_growth)
        if "scale" in rows:
            node.bench_scale(env, res, scale)
        if "probe" in rows:
            node.bench_probe(env, res, a.probe_containers, a.probe_period, a.probe_duration, a.probe_execs,
                             a.probe_rounds)
        leftovers = env.tasks()
        if leftovers:
            log(f"warning: tasks left behind by the rows: {leftovers}")
            meta["leftover_tasks"] = leftovers
        # Every container is gone: their shims should exit on their own.
        deadline = time.time() + 5
        while time.time() < deadline and any(env.shims(s) for s in SHIMS):
            time.sleep(0.1)
        for s in SHIMS:
            left = env.shims(s)
            if left:
                log(f"warning: {len(left)} {s} shims still up 5 s after their containers were deleted: {left}")
                meta.setdefault("leftover_shims", {})[s] = left
    except (KeyboardInterrupt, Interrupted) as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log(f"interrupted ({str(e) or 'SIGINT'})")
        code = 130
    except Failed as e:
        log(f"error: {e}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("cleaning up")
        cleanup(a.work, a.lab)
    if code:
        return code
    meta["load_end"] = cmd_out(["uptime"])
    meta["builders_end"] = busy_builders()
    meta["elapsed_s"] = time.time() - t0
    print_table(res, meta)
    if a.json:
        doc = {"meta": meta,
               "rows": [{"key": r["key"], "label": r["label"], "unit": r["unit"],
                         "keel": r["values"].get(KEEL), "runc_v2": r["values"].get(RUNC),
                         "ratio_keel_over_runc_v2": ratio(r), "shared": r["shared"],
                         "failed": {s: e for s, e in r["errors"].items() if e}} for r in res.rows],
               "extra": res.extra, "raw": res.raw}
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        log(f"wrote {a.json}")
    failed = any(r["errors"] for r in res.rows)
    return 2 if failed else 0


ROOTFS = None

if __name__ == "__main__":
    sys.exit(main())
