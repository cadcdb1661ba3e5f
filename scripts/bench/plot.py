"""Charts of a bench.py JSON file (bench.sh --plot DIR): run by bench.sh with
the matplotlib of the virtual environment it makes.

  plot.py BENCH.json DIR  ->  DIR/memory-per-container.png, DIR/task-ls.png,
                              DIR/probe-cpu.png, DIR/probe-latency.png
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"keel": "#1b7837", "runc_v2": "#762a83"}
NAMES = {"keel": "Keel", "runc_v2": "containerd-shim-runc-v2"}


def save(fig, out, name):
    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rows(doc):
    return {r["key"]: r for r in doc["rows"]}


def title_of(doc, what):
    m = doc["meta"]
    return f"{what}\ncontainerd {m.get('versions', {}).get('containerd_version', '?')}, {m.get('started', '')}"


def memory(doc, out):
    r = rows(doc)
    ns = doc["meta"].get("scale") or []
    if not ns:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, pre, label in ((axes[0], "scale", "one container per shim"), (axes[1], "pod", "5 containers per pod")):
        for shim in ("keel", "runc_v2"):
            for metric, style in (("pss_kib", "-"), ("uss_kib", "--")):
                pts = [(n, r[f"{pre}{n}_{metric}_per_container"][shim]) for n in ns
                       if f"{pre}{n}_{metric}_per_container" in r
                       and r[f"{pre}{n}_{metric}_per_container"][shim] is not None]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] / 1024 for p in pts], style, marker="o", color=COLOURS[shim],
                            label=f"{NAMES[shim]} {metric[:3].upper()}")
        ax.set_xscale("log")
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns])
        ax.set_xlabel("idle containers on the node (N)")
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("shim memory per container (MiB)")
    axes[1].legend(fontsize=8)
    fig.suptitle(title_of(doc, "Shim memory per container against N"), fontsize=10)
    return save(fig, out, "memory-per-container.png")


def task_ls(doc, out):
    r = rows(doc)
    ns = doc["meta"].get("scale") or []
    if not ns:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for shim in ("keel", "runc_v2"):
        for key, style, what in (("task_ls_ms", "-", "ctr task ls"), ("get_ms", "--", "Tasks.Get")):
            pts = [(n, r[f"scale{n}_{key}"][shim]) for n in ns
                   if f"scale{n}_{key}" in r and r[f"scale{n}_{key}"][shim] is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=COLOURS[shim],
                        label=f"{NAMES[shim]}: {what}")
    ax.set_xscale("log")
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel("tasks (N)")
    ax.set_ylabel("latency, median (ms)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title_of(doc, "Listing and State with N tasks"), fontsize=10)
    return save(fig, out, "task-ls.png")


def probe_cpu(doc, out):
    r = rows(doc)
    parts = [("probe_shim_cpu_ms", "shim"), ("probe_runtime_cpu_ms", "OCI runtime"),
             ("probe_containerd_cpu_ms", "containerd"), ("probe_machine_cpu_ms", "whole machine")]
    if not all(k in r for k, _ in parts):
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for i, shim in enumerate(("keel", "runc_v2")):
        vals = [r[k][shim] or 0 for k, _ in parts]
        xs = [j + (i - 0.5) * width for j in range(len(parts))]
        bars = ax.bar(xs, vals, width, color=COLOURS[shim], label=NAMES[shim])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(parts)))
    ax.set_xticklabels([p[1] for p in parts])
    ax.set_ylabel("CPU per exec probe (ms)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    p = doc["meta"].get("probe", {})
    ax.set_title(title_of(doc, f"CPU per exec probe ({p.get('containers')} containers, every {p.get('period_s')} s)"),
                 fontsize=10)
    return save(fig, out, "probe-cpu.png")


def probe_latency(doc, out):
    raw = doc.get("raw", {}).get("probe", {})
    if not raw:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, shim in (("keel", "keel"), ("runc-v2", "runc_v2")):
        ms = sorted(x for w in raw.get(key, {}).get("rounds", []) for x in w["ms"])
        if ms:
            ax.plot(ms, [(i + 1) / len(ms) for i in range(len(ms))], color=COLOURS[shim], label=NAMES[shim])
    ax.set_xlabel("probe latency: Exec + Start + Wait + DeleteProcess (ms)")
    ax.set_ylabel("fraction of probes")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title_of(doc, "Exec probe latency (CDF)"), fontsize=10)
    return save(fig, out, "probe-latency.png")


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    out = sys.argv[2]
    os.makedirs(out, exist_ok=True)
    made = [p for p in (memory(doc, out), task_ls(doc, out), probe_cpu(doc, out), probe_latency(doc, out)) if p]
    for p in made:
        print(f"plot: wrote {p}", file=sys.stderr)
    return 0 if made else 1


if __name__ == "__main__":
    sys.exit(main())
