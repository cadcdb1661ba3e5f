"""The node-scale rows of bench.py: N idle containers (alone and grouped in
pods), a steady load of exec probes, and a long series of execs into one
container, Keel and runc-v2 side by side on the same private containerd.

Exec probes and Tasks.Get go through containerd's API from the harness's
keel-lab (one long-lived connection per container, as kubelet keeps one),
not through a ctr process per call, so that the whole-machine CPU of a probe
is what a node pays: containerd, the shim and the OCI runtime.
"""

import json
import os
import statistics
import subprocess
import time

from bench import (KEEL, RUNC, SHIMS, RUNTIME, POD_ANNOTATION, Failed, log, median, now_ns, proc_mem)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def p99(xs):
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, -(-99 * len(s) // 100) - 1)]  # nearest rank


def lab(env, args, timeout):
    """keel-lab ARGS --dir <the daemon's dir>: its JSON answer."""
    r = subprocess.run([env.lab] + args + ["--dir", env.lab_dir], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise Failed(f"keel-lab {args[0]}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout)


def proc_ticks(pid):
    """(own utime+stime, reaped children's cutime+cstime) of pid, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime is field 14, stime 15, cutime 16, cstime 17.
    own = int(fields[11]) + int(fields[12])
    children = int(fields[13]) + int(fields[14])
    return own / CLK_TCK, children / CLK_TCK


def machine_busy():
    """Seconds of CPU the whole machine spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:]
    v = [int(x) for x in cpu]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    steal = v[7] if len(v) > 7 else 0
    return (sum(v[:8]) - idle - steal) / CLK_TCK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def shim_pids(env, s):
    return sorted(set(env.shims(s).values()))


def shim_mem(env, s):
    """Summed RSS/PSS/USS (KiB), threads and fds of every serving shim of kind s."""
    tot = {"shims": 0, "rss_kib": 0, "pss_kib": 0, "uss_kib": 0, "anon_kib": 0, "threads": 0, "fds": 0}
    for pid in shim_pids(env, s):
        try:
            m = proc_mem(pid)
        except OSError:
            continue
        tot["shims"] += 1
        for k in ("rss_kib", "pss_kib", "uss_kib", "anon_kib", "threads", "fds"):
            tot[k] += m.get(k) or 0
    return tot


def shim_cpu(env, s):
    """{pid: (own, children) CPU seconds} of the serving shims of kind s."""
    out = {}
    for pid in shim_pids(env, s):
        try:
            out[pid] = proc_ticks(pid)
        except OSError:
            continue
    return out


def cpu_delta(before, after):
    """(own, children) CPU seconds the shims present at both ends used in
    between: a shim that came or went (the previous row's, exiting) would
    otherwise add its whole life, or take it away."""
    both = before.keys() & after.keys()
    return (sum(after[p][0] - before[p][0] for p in both), sum(after[p][1] - before[p][1] for p in both))


def start_all(env, s, ids, flags_of):
    """ctr run -d each id one after another; returns each start's ms."""
    times = []
    for i, cid in enumerate(ids):
        t0 = now_ns()
        env.run_detached(s, cid, ["/bin/sleep", "36000"], flags_of(i))
        times.append((now_ns() - t0) / 1e6)
    return times


def remove_all(env, ids):
    """Kills and deletes every task and container (25 ids per ctr call); ms."""
    t0 = now_ns()
    env.remove(ids, timeout=300)
    ms = (now_ns() - t0) / 1e6
    left = [c for c in env.tasks() if c in set(ids)]
    if left:
        raise Failed(f"{len(left)} tasks still listed after delete: {left[:3]}")
    return ms


def wait_shims_gone(env, s, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline and env.shims(s):
        time.sleep(0.1)


def scale_once(env, s, n, grouped):
    tag = f"{'pod' if grouped else 'sc'}{n}-{s}"
    ids = [f"{tag}-{i}" for i in range(n)]
    flags_of = (lambda i: ["--annotation", f"{POD_ANNOTATION}={tag}-pod{i // 5}"]) if grouped else (lambda i: [])
    try:
        starts = start_all(env, s, ids, flags_of)
        time.sleep(2)  # lazy allocations, Go's GC
        mem = shim_mem(env, s)
        out = {"n": n, "grouped": grouped, "start_ms": starts,
               "start_rate_last10_per_s": 10 / (sum(starts[-10:]) / 1e3) if len(starts) >= 10 else None,
               "mem": mem, "containerd_rss_kib": rss_kib(env.containerd_pid)}
        ls = []
        for _ in range(5):
            t0 = now_ns()
            r = env.ctr(["task", "ls"], timeout=120)
            ls.append((now_ns() - t0) / 1e6)
            listed = len(r.stdout.splitlines()) - 1
        if listed != n:
            raise Failed(f"ctr task ls lists {listed} tasks, started {n}")
        out["task_ls_ms"] = ls
        sample = ids[:: max(1, n // 10)][:10]
        got = lab(env, ["get", "--ids", ",".join(sample), "--rounds", "5"], timeout=300)
        if got["errors"]:
            raise Failed(f"Tasks.Get: {got['errors'][0]}")
        out["get_ms"] = got["ms"]
    finally:
        out_rm = None
        try:
            out_rm = remove_all(env, ids)
        finally:
            wait_shims_gone(env, s)
    out["remove_all_ms"] = out_rm
    return out


def bench_scale(env, res, ns, grouped_too=True):
    """Scale row: for each N, N idle containers per shim (one shim kind at a
    time, the order alternating by N), then the same grouped 5 to a pod."""
    modes = [False, True] if grouped_too else [False]
    data = {}
    for grouped in modes:
        for j, n in enumerate(ns):
            order = SHIMS if j % 2 == 0 else tuple(reversed(SHIMS))
            for s in order:
                what = f"{n} containers{' in ' + str(n // 5) + ' pods' if grouped else ''}"
                log(f"scale: {what} with {s}")
                t0 = time.time()
                try:
                    data[(grouped, n, s)] = scale_once(env, s, n, grouped)
                except Failed as e:
                    data[(grouped, n, s)] = {"error": str(e)}
                    log(f"scale: {what} with {s} failed: {e}")
                log(f"scale: {what} with {s}: {time.time() - t0:.0f} s")
    res.raw["scale"] = {f"{'pod' if g else 'plain'}-{n}-{s}": v for (g, n, s), v in data.items()}
    for grouped in modes:
        for n in ns:
            cell = {s: data.get((grouped, n, s), {}) for s in SHIMS}
            errs = {s: cell[s]["error"] for s in SHIMS if "error" in cell[s]}
            ok = {s: cell[s] for s in SHIMS if "error" not in cell[s]}
            pre = f"{'pod' if grouped else 'scale'}{n}"
            name = f"{n} idle{' in ' + str(n // 5) + ' pods' if grouped else ''}"

            def add(key, label, unit, f):
                res.add(f"{pre}_{key}", f"{name}: {label}", unit, {s: f(v) for s, v in ok.items()}, errs)

            add("shims", "shim processes", "", lambda v: v["mem"]["shims"])
            for m, lab_ in (("rss_kib", "RSS"), ("pss_kib", "PSS"), ("uss_kib", "USS")):
                add(f"{m}_sum", f"shim {lab_} summed", "KiB", lambda v, m=m: v["mem"][m])
                add(f"{m}_per_container", f"shim {lab_} per container", "KiB", lambda v, m=m: v["mem"][m] / n)
            add("threads", "shim threads summed", "", lambda v: v["mem"]["threads"])
            add("containerd_rss_kib", "containerd RSS", "KiB", lambda v: v["containerd_rss_kib"])
            add("task_ls_ms", "ctr task ls (median of 5)", "ms", lambda v: median(v["task_ls_ms"]))
            add("get_ms", "Tasks.Get (shim State) median", "ms", lambda v: median(v["get_ms"]))
            add("get_p99_ms", "Tasks.Get (shim State) p99", "ms", lambda v: p99(v["get_ms"]))
            add("start_rate", "start rate of the last 10", "/s", lambda v: v["start_rate_last10_per_s"])
            add("remove_all_ms", f"kill + delete all {n}", "ms", lambda v: v["remove_all_ms"])


def probe_window(env, s, ids, period, duration):
    """One round for one shim: an idle baseline, then `duration` seconds of
    probes into `ids`; CPU per probe by part, latencies."""
    # What the machine and the shims burn with no probes, once what came
    # before has settled.
    time.sleep(2)
    b0, c0 = machine_busy(), shim_cpu(env, s)
    t0 = time.time()
    time.sleep(5)
    idle_s = time.time() - t0
    idle_machine = (machine_busy() - b0) / idle_s
    idle_shim = cpu_delta(c0, shim_cpu(env, s))[0] / idle_s
    m0, c0, cd0 = machine_busy(), shim_cpu(env, s), proc_ticks(env.containerd_pid)[0]
    if len(c0) != len(ids):
        raise Failed(f"{len(c0)} serving {s} shims for {len(ids)} containers")
    t0 = time.time()
    got = lab(env, ["probe", "--ids", ",".join(ids), "--period", str(period), "--duration", str(duration)],
              timeout=duration + 300)
    elapsed = time.time() - t0
    m1, c1, cd1 = machine_busy(), shim_cpu(env, s), proc_ticks(env.containerd_pid)[0]
    own, children = cpu_delta(c0, c1)
    probes = len(got["ms"])
    if got["errors"]:
        raise Failed(f"{len(got['errors'])} probes failed: {got['errors'][0]}")
    if not probes:
        raise Failed("no probe ran")
    return {"probes": probes, "elapsed_s": elapsed, "ms": got["ms"],
            "shim_cpu_ms": 1e3 * max(0.0, own - idle_shim * elapsed) / probes,
            "runtime_cpu_ms": 1e3 * children / probes,
            "containerd_cpu_ms": 1e3 * (cd1 - cd0) / probes,
            "machine_cpu_ms": 1e3 * max(0.0, (m1 - m0) - idle_machine * elapsed) / probes,
            "idle_machine_cpu_per_s": idle_machine, "median_ms": median(got["ms"]), "p99_ms": p99(got["ms"])}


def probe_rounds(env, k, period, duration, rounds):
    """K containers per shim, all running; the probing is split into rounds
    of duration/rounds seconds, the shims' order alternating, so that a
    burst of load from outside (this is a VM) lands on one round of one
    shim, where the OCI runtime's own CPU per probe, the same work for both
    shims, shows it. Each figure is the median over the rounds."""
    ids = {s: [f"probe-{s}-{i}" for i in range(k)] for s in SHIMS}
    data = {s: {"rounds": []} for s in SHIMS}
    errs = {}
    try:
        for s in SHIMS:
            start_all(env, s, ids[s], lambda i: [])
        time.sleep(3)
        for s in SHIMS:
            data[s]["before"] = shim_mem(env, s)
        for r in range(rounds):
            for s in (SHIMS if r % 2 == 0 else tuple(reversed(SHIMS))):
                if s in errs:
                    continue
                try:
                    w = probe_window(env, s, ids[s], period, duration / rounds)
                except Failed as e:
                    errs[s] = str(e)
                    log(f"probe: {s} round {r + 1} failed: {e}")
                    continue
                data[s]["rounds"].append(w)
                log(f"probe: {s} round {r + 1}/{rounds}: {w['probes']} probes, shim {w['shim_cpu_ms']:.2f} ms, "
                    f"runtime {w['runtime_cpu_ms']:.1f} ms, machine {w['machine_cpu_ms']:.1f} ms CPU each, "
                    f"p99 {w['p99_ms']:.1f} ms")
        time.sleep(1)
        for s in SHIMS:
            data[s]["after"] = shim_mem(env, s)
    finally:
        remove_all(env, ids[SHIMS[0]] + ids[SHIMS[1]])
        for s in SHIMS:
            wait_shims_gone(env, s)
    return data, errs


def exec_series(env, n):
    """n execs into one container per shim, both shims' series at once (only
    memory is compared): shim memory after the first and after the last."""
    out, errs, procs = {}, {}, {}
    for s in SHIMS:
        try:
            env.run_detached(s, f"series-{s}", ["/bin/sleep", "36000"])
            got = lab(env, ["execs", "--id", f"series-{s}", "--count", "1"], timeout=120)
            if got["errors"]:
                raise Failed(got["errors"][0])
            time.sleep(0.5)
            pid = env.shims(s).get(f"series-{s}")
            if not pid:
                raise Failed("its shim is not found")
            out[s] = {"pid": pid, "after_first": proc_mem(pid), "first_ms": got["ms"]}
        except (Failed, OSError) as e:
            errs[s] = str(e)
    t0 = time.time()
    for s in out:
        procs[s] = subprocess.Popen([env.lab, "execs", "--dir", env.lab_dir, "--id", f"series-{s}",
                                     "--count", str(n - 1), "--first", "2"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for s, p in procs.items():
        so, se = p.communicate()
        try:
            got = json.loads(so)
        except ValueError:
            errs[s] = f"keel-lab execs: exit {p.returncode}: {se.strip()[-300:]}"
            continue
        if got["errors"]:
            errs[s] = f"{len(got['errors'])} execs failed: {got['errors'][0]}"
            continue
        time.sleep(0.5)
        out[s]["after_last"] = proc_mem(out[s]["pid"])
        out[s]["ms"] = out[s].pop("first_ms") + got["ms"]
    log(f"exec series: {n} execs per shim in {time.time() - t0:.0f} s")
    try:
        remove_all(env, [f"series-{s}" for s in SHIMS])
    except Failed as e:
        log(f"exec series: clean-up: {e}")
    return out, errs


def bench_probe(env, res, k, period, duration, series, rounds=3):
    log(f"probe: {k} containers per shim, each exec-probed every {period} s for {duration} s "
        f"({rounds} interleaved rounds)")
    data, errs = probe_rounds(env, k, period, duration, rounds)
    res.raw["probe"] = data
    ok = {s: v for s, v in data.items() if s not in errs and v["rounds"]}
    pre = f"{k} containers probed every {period:g} s"

    def add(key, label, unit, f):
        res.add(f"probe_{key}", f"{pre}: {label}", unit, {s: f(v) for s, v in ok.items()}, errs)

    def over_rounds(field):
        return lambda v: median([w[field] for w in v["rounds"]])

    add("count", "probes run", "", lambda v: sum(w["probes"] for w in v["rounds"]))
    add("shim_cpu_ms", "shim CPU per probe", "ms", over_rounds("shim_cpu_ms"))
    add("runtime_cpu_ms", "OCI runtime CPU per probe (the shims' children)", "ms", over_rounds("runtime_cpu_ms"))
    add("containerd_cpu_ms", "containerd CPU per probe", "ms", over_rounds("containerd_cpu_ms"))
    add("machine_cpu_ms", "whole-machine CPU per probe (minus idle)", "ms", over_rounds("machine_cpu_ms"))
    add("idle_machine", "idle baseline, whole machine (CPU ms per s)", "ms",
        lambda v: 1e3 * median([w["idle_machine_cpu_per_s"] for w in v["rounds"]]))
    add("latency_median_ms", "probe latency median", "ms", over_rounds("median_ms"))
    add("latency_p99_ms", "probe latency p99 (median of the rounds')", "ms", over_rounds("p99_ms"))
    add("latency_p99_all_ms", "probe latency p99 (all probes)", "ms",
        lambda v: p99([x for w in v["rounds"] for x in w["ms"]]))
    for m, lab_ in (("pss_kib", "PSS"), ("uss_kib", "USS")):
        add(f"{m}_before", f"shim {lab_} summed, before", "KiB", lambda v, m=m: v["before"][m])
        add(f"{m}_after", f"shim {lab_} summed, after", "KiB", lambda v, m=m: v["after"][m])
    if series <= 1:
        return
    log(f"exec series: {series} execs into one container per shim")
    out, errs = exec_series(env, series)
    ok = {s: v for s, v in out.items() if s not in errs and "after_last" in v}
    res.raw["exec_series"] = {s: {"ms": v.get("ms"), "after_first": v["after_first"], "after_last": v.get("after_last")}
                              for s, v in out.items()}

    def pct(f):
        return {s: 100.0 * (v["after_last"][f] - v["after_first"][f]) / v["after_first"][f]
                for s, v in ok.items() if v["after_first"][f]}

    for m, lab_ in (("rss_kib", "RSS"), ("pss_kib", "PSS"), ("anon_kib", "anon memory")):
        res.add(f"series_{m}_first", f"{series} execs: shim {lab_} after the first", "KiB",
                {s: v["after_first"][m] for s, v in ok.items()}, errs)
        res.add(f"series_{m}_last", f"{series} execs: shim {lab_} after the last", "KiB",
                {s: v["after_last"][m] for s, v in ok.items()}, errs)
        res.add(f"series_{m}_pct", f"{series} execs: shim {lab_} change", "%", pct(m), errs)
    res.add("series_fds", f"{series} execs: shim open fds, first -> last", "",
            {s: f"{v['after_first']['fds']} -> {v['after_last']['fds']}" for s, v in ok.items()}, errs)
    res.add("series_ms", f"{series} execs: exec median, first 100 -> last 100", "ms",
            {s: f"{median(v['ms'][:100]):.1f} -> {median(v['ms'][-100:]):.1f}" for s, v in ok.items()}, errs)
