"""The PNG plots next to RESULTS.md, drawn from the same JSON results (``benchmarks.report`` calls this)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import BenchResult

AIM_ALERTS_PER_S = 25_000
AIM_P99_MS_AT_1K = 50.0


def render_plots(r: dict[str, BenchResult], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    subtitle = ""
    if r:
        m = next(iter(r.values())).machine
        subtitle = f"{m.get('nproc')} cores, {m.get('cpu')}, Python {m.get('python')}, Kafka {m.get('kafka')}"

    def save(fig: Any, name: str) -> None:
        fig.text(0.01, 0.01, subtitle, fontsize=7, color="gray")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = directory / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    names = [("baseline_bare", "bare loop"), ("baseline_naive", "naive"), ("baseline_naive_nolatency", "naive\n(0 ms svc)"),
             ("e2e_throughput_ci_failures_aiokafka", "aiokafka\nhit-heavy"), ("e2e_throughput_typical_aiokafka", "aiokafka\ntypical"),
             ("e2e_throughput_ci_failures", "faust\nhit-heavy"), ("e2e_throughput_typical", "faust\ntypical")]
    present = [(label, r[n].metrics.get("msgs_per_s_median")) for n, label in names if n in r]
    if present:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.bar([p[0] for p in present], [p[1] or 0 for p in present])
        ax.set_yscale("log")
        ax.set_ylabel("alerts/s (median, log scale)")
        ax.axhline(AIM_ALERTS_PER_S, ls="--", color="green", lw=1, label=f"aim {AIM_ALERTS_PER_S:,}/s")
        ax.legend()
        ax.set_title("Maximum sustained throughput")
        save(fig, "throughput.png")

    latency = [(n, label) for n, label in (("e2e_latency_aiokafka", "aiokafka"), ("e2e_latency", "faust")) if n in r]
    if latency:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, label in latency:
            runs = r[name].runs
            line = ax.plot([x["rate"] for x in runs], [x["record"].get("p99_ms") for x in runs], marker="o", label=f"{label} p99")
            ax.plot([x["rate"] for x in runs], [x["record"].get("p50_ms") for x in runs], marker=".", ls=":",
                    color=line[0].get_color(), label=f"{label} p50")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("publish rate (alerts/s)")
        ax.set_ylabel("publish → decision (ms, log)")
        ax.axhline(AIM_P99_MS_AT_1K, ls="--", color="green", lw=1, label="aim p99 at 1k/s")
        ax.legend(fontsize=8)
        ax.set_title("Streaming latency")
        save(fig, "latency.png")

    cells = [x for x in r["hitratio"].runs if x.get("variant") == "default"] if "hitratio" in r else []
    if cells:
        profiles = list(dict.fromkeys(x["profile"] for x in cells))
        fig, axes = plt.subplots(1, len(profiles), figsize=(4 * len(profiles), 3.6), squeeze=False)
        for ax, profile in zip(axes[0], profiles):
            rows = [x for x in cells if x["profile"] == profile]
            rates = [x["rate"] for x in rows]
            ax.plot(rates, [x["optimum"]["hit"] for x in rows], marker="o", label="optimum")
            ax.plot(rates, [x["model"]["hit"] for x in rows], marker=".", ls=":", label="model")
            ax.plot(rates, [x.get("engine", {}).get("hit") for x in rows], marker="s", label="engine")
            ax.plot(rates, [x.get("engine", {}).get("lru") for x in rows], marker="^", ls="--", label="engine, LRU tier")
            ax.set_xscale("log")
            ax.set_ylim(0, 1)
            ax.set_xlabel("modelled arrival rate (alerts/s)")
            ax.set_title(profile)
        axes[0][0].set_ylabel("hit ratio")
        axes[0][0].legend(fontsize=7, loc="lower right")
        save(fig, "hitratio.png")

    sweeps = [x for x in r["hitratio"].runs if "capacities" in x] if "hitratio" in r else []
    if sweeps:
        fig, ax = plt.subplots(figsize=(7, 4))
        for sweep in sweeps:
            line = ax.plot(sweep["capacities"], sweep["lru"], marker="o", label=f"{sweep['profile']} LRU")[0]
            ax.plot(sweep["capacities"], sweep["belady"], ls="--", color=line.get_color(), label=f"{sweep['profile']} Belady")
        ax.set_xscale("log")
        ax.set_xlabel("LRU capacity per partition (entries)")
        ax.set_ylabel("LRU-tier hit ratio")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"Hit ratio vs capacity at {sweeps[0]['rate']:g} alerts/s")
        save(fig, "hitratio_capacity.png")

    from benchmarks.report import memory_label, memory_runs

    def short(label: str) -> str:
        return label.replace("`", "").replace("ClickHouse over HTTP", "HTTP").replace("ClickHouse embedded (chdb://)", "embedded")

    mems = memory_runs(r)  # with the earlier runs they carry (--before), dashed
    if mems:
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for name, result in mems:
            points = result.runs
            ax.plot([p["alerts"] for p in points], [p["rss_mb"] for p in points], marker="o", markersize=3,
                    ls="--" if name.endswith("@before") else "-", label=short(memory_label(name, result)))
        ax.set_xlabel("alerts processed")
        ax.set_ylabel("worker RSS (MB)")
        ax.set_yscale("log")  # embedded chDB and HTTP workers differ by ~5x
        ax.set_yticks([50, 75, 100, 150, 200, 300, 400, 500], ["50", "75", "100", "150", "200", "300", "400", "500"])
        ax.minorticks_off()
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
        ax.set_title("Worker memory")
        save(fig, "memory.png")

    api = r.get("api")
    if api is not None and str(api.params.get("tool", "")).startswith("wrk"):
        rows = api.runs
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.25
        for i, q in enumerate(("p50_ms", "p99_ms", "max_ms")):
            ax.bar([j + i * width for j in range(len(rows))], [x["latency"].get(q) or 0 for x in rows], width, label=q[:-3])
        ax.set_xticks([j + width for j in range(len(rows))], [f"{x['shape']}\n{x['keys']}" for x in rows], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms, log)")
        ax.legend(fontsize=8)
        ax.set_title("POST /api/v1/alerts/process under wrk")
        save(fig, "api.png")
    return written
